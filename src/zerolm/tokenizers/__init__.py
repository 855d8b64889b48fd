"""Train, load and save tokenizers (WordPiece, byte-level BPE, char, T5-style unigram) under one
interface."""

from zerolm.tokenizers.tokenizer import Tokenizer

__all__ = ["Tokenizer"]
