"""zerolm: develop, pretrain and fine-tune Transformer language models from scratch.

    import zerolm
    clf = zerolm.load("runs/sst2_minilm")          # a fine-tuned run, a model dir, an HF dir
    clf.predict(["a gripping film", "dull"])        # [{"label": "1", "score": 0.97, ...}, ...]
"""

__version__ = "0.1.0"


def load(path, device="cpu"):
    """Load a model for use (see zerolm.loading.load): `.predict`, `.embed`, `.generate`,
    `.evaluate`, `.model`, `.tokenizer`, `.task`."""
    from zerolm.loading import load as _load

    return _load(path, device)
