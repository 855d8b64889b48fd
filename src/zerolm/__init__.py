"""zerolm: develop, pretrain and fine-tune Transformer language models from scratch."""

__version__ = "0.1.0"
