"""Labelled text for classification: TSV / CSV / JSONL with configurable columns.

The label set comes from the training file and is saved with the model; a dev/test
label never seen in training is an error naming the file and line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from zerolm.data.batching import BucketedBatches
from zerolm.data.text import iter_rows, resolve_data_path
from zerolm.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Example:
    text: str
    pair: str | None
    label: str
    where: str  # "file:line", for error messages


def read_examples(path: str | Path, *, text_column: str = "text", pair_column: str | None = None,
                  label_column: str = "label") -> list[Example]:
    """The labelled examples of a table. A missing column or an empty label is an error
    naming the file and line; empty texts are kept (the model then sees only special
    tokens for them) with a warning giving their count and the first file:line."""
    p = resolve_data_path(path)
    out = []
    empty: list[str] = []
    for lineno, row in iter_rows(p):
        for col in (text_column, label_column, pair_column):
            if col is not None and col not in row:
                raise DataError(f"{p}:{lineno}: no column {col!r} (columns: {', '.join(row)})")
        label = row[label_column].strip()
        if not label:
            raise DataError(f"{p}:{lineno}: empty label")
        pair = row[pair_column] if pair_column else None
        if not row[text_column].strip() or (pair is not None and not pair.strip()):
            empty.append(f"{p}:{lineno}")
        out.append(Example(row[text_column], pair, label, f"{p}:{lineno}"))
    if not out:
        raise DataError(f"{p}: no examples (the file has only a header)")
    if empty:
        cols = repr(text_column) + (f" or {pair_column!r}" if pair_column else "")
        log.warning("%s: %d of %d examples have an empty %s (first at %s); the model learns "
                    "their label from no text: fix or drop those rows", p, len(empty), len(out),
                    cols, empty[0])
    return out


class LabelSet:
    """Label name <-> index, in sorted order, fixed by the training data."""

    def __init__(self, names: list[str]):
        self.names = list(names)
        self.index = {n: i for i, n in enumerate(self.names)}

    @classmethod
    def from_examples(cls, examples: list[Example]) -> LabelSet:
        return cls(sorted({e.label for e in examples}))

    def encode(self, examples: list[Example]) -> list[int]:
        ids = []
        for e in examples:
            if e.label not in self.index:
                raise DataError(f"{e.where}: label {e.label!r} does not occur in the training data "
                                f"(known labels: {', '.join(self.names)})")
            ids.append(self.index[e.label])
        return ids

    def __len__(self) -> int:
        return len(self.names)


class ClassificationBatches(BucketedBatches):
    """Sentence (pair) classification examples, tokenized once, in length-bucketed batches."""

    def __init__(self, examples: list[Example], labels: list[int], tokenizer, *, max_length: int,
                 batch_size: int, seed: int, micro_per_step: int = 1):
        texts = [e.text for e in examples]
        pairs = [e.pair for e in examples] if examples and examples[0].pair is not None else None
        enc = tokenizer.encode_batch(texts, pairs, max_length=max_length)
        full = tokenizer.encode_batch(texts, pairs)["input_ids"]
        self.truncated = sum(len(a) < len(b) for a, b in zip(enc["input_ids"], full))
        if self.truncated:
            log.warning("%d of %d inputs were truncated to %d tokens", self.truncated, len(texts), max_length)
        self.ids, self.types = enc["input_ids"], enc["token_type_ids"]
        self.labels = labels
        self.tok = tokenizer
        super().__init__([len(x) for x in self.ids], batch_size=batch_size, seed=seed,
                         micro_per_step=micro_per_step)

    def collate(self, idx) -> dict[str, torch.Tensor]:
        b = self.tok.pad([self.ids[i] for i in idx], token_type_ids=[self.types[i] for i in idx])
        b["labels"] = torch.tensor([self.labels[i] for i in idx], dtype=torch.long)
        return b
