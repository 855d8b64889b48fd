"""Train, load and save tokenizers (WordPiece, byte-level BPE, char) under one interface."""

from zerolm.tokenizers.tokenizer import Tokenizer

__all__ = ["Tokenizer"]
