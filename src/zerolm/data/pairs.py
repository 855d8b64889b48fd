"""Source -> target text pairs for sequence-to-sequence fine-tuning (translation,
summarisation): a table (TSV / CSV / JSONL) with a source and a target column.

The encoder reads the source's tokens (with the tokenizer's end-of-text, as T5 does);
the labels are the target's tokens and its end-of-text, so the model learns where to
stop. The decoder's inputs are the labels shifted right, made by the model itself. An
over-long source or target is cut (the count is reported).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from zerolm.data.batching import BucketedBatches
from zerolm.data.masking import IGNORE_INDEX
from zerolm.data.text import iter_rows, resolve_data_path
from zerolm.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Pair:
    source: str
    target: str
    where: str  # "file:line", for error messages


def read_pairs(path: str | Path, *, source_column: str = "source", target_column: str = "target") -> list[Pair]:
    """Rows of a table with a non-empty source and target."""
    p = resolve_data_path(path)
    out = []
    for lineno, row in iter_rows(p):
        for col in (source_column, target_column):
            if col not in row:
                raise DataError(f"{p}:{lineno}: no field {col!r} (fields: {', '.join(row)}); set "
                                f"data.source_column / data.target_column")
            if not (row[col] or "").strip():
                raise DataError(f"{p}:{lineno}: empty {col!r}")
        out.append(Pair(row[source_column], row[target_column], f"{p}:{lineno}"))
    if not out:
        raise DataError(f"{p}: no examples")
    return out


def encode_sources(tokenizer, texts: list[str], max_length: int) -> tuple[list[list[int]], int]:
    """Token ids of each source (with the tokenizer's special tokens), cut to max_length
    keeping the end-of-text last; and how many were cut."""
    ids = tokenizer.encode_batch(texts)["input_ids"]
    eos = tokenizer.eos_id
    out, cut = [], 0
    for x in ids:
        if len(x) > max_length:
            cut += 1
            x = x[:max_length - 1] + [x[-1]] if eos is not None and x[-1] == eos else x[:max_length]
        out.append(x)
    return out, cut


class PairBatches(BucketedBatches):
    """Tokenized once; `input_ids` / `attention_mask` (B, S) of the sources, `labels` (B, T)
    of the targets (IGNORE_INDEX on padding). Evaluation batches also carry the raw
    target texts ("references"), which BLEU and ROUGE score against."""

    def __init__(self, pairs: list[Pair], tokenizer, *, max_length: int, max_target_length: int,
                 batch_size: int, seed: int, micro_per_step: int = 1):
        if tokenizer.eos_id is None:
            raise DataError("sequence-to-sequence data needs a tokenizer with an end-of-text token "
                            "(tokenizer.kind: unigram, as T5's)")
        self.sources, cut_s = encode_sources(tokenizer, [p.source for p in pairs], max_length)
        targets = tokenizer.encode_batch([p.target for p in pairs], add_special_tokens=False)["input_ids"]
        eos = tokenizer.eos_id
        self.targets, cut_t = [], 0
        for t in targets:
            if len(t) + 1 > max_target_length:
                cut_t += 1
                t = t[:max_target_length - 1]
            self.targets.append(t + [eos])
        self.references = [p.target for p in pairs]
        self.truncated = cut_s + cut_t
        if self.truncated:
            log.warning("%d sources and %d targets of %d pairs were truncated (max_length %d, "
                        "max_target_length %d)", cut_s, cut_t, len(pairs), max_length, max_target_length)
        self.tok = tokenizer
        super().__init__([len(s) + len(t) for s, t in zip(self.sources, self.targets)],
                         batch_size=batch_size, seed=seed, micro_per_step=micro_per_step)

    def collate(self, idx) -> dict[str, torch.Tensor]:
        b = self.tok.pad([self.sources[i] for i in idx])
        rows = [self.targets[i] for i in idx]
        labels = torch.full((len(rows), max(len(r) for r in rows)), IGNORE_INDEX, dtype=torch.long)
        for j, r in enumerate(rows):
            labels[j, :len(r)] = torch.tensor(r)
        return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "labels": labels}

    def eval_batches(self, max_batches: int = 0):
        for batch in super().eval_batches(max_batches):
            batch["references"] = [self.references[i] for i in batch["index"].tolist()]
            yield batch


class SourceBatches(BucketedBatches):
    """Sources alone, for generation."""

    def __init__(self, texts: list[str], tokenizer, *, max_length: int, batch_size: int):
        self.sources, _ = encode_sources(tokenizer, texts, max_length)
        self.tok = tokenizer
        super().__init__([len(s) for s in self.sources], batch_size=batch_size, seed=0)

    def collate(self, idx) -> dict[str, torch.Tensor]:
        return self.tok.pad([self.sources[i] for i in idx])
