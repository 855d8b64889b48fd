"""Batches for self-supervised training: causal-LM windows, masked-LM examples, and plain
sentences (general distillation).

Every training batch is a pure function of (seed, step, index), where `index` numbers
the micro-batches of one optimizer step across gradient accumulation and processes.
That makes resuming exact (the data position is the step) and makes N processes with
accumulation k see the same batches as one process with accumulation N*k.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from zerolm.data.batching import BucketedBatches
from zerolm.data.corpus import TokenCorpus
from zerolm.data.masking import IGNORE_INDEX, mask_tokens


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in key])


class CausalLMBatches:
    """Random windows of `block_size + 1` tokens from a token stream (as nanoGPT)."""

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int):
        if len(tokens) <= block_size + 1:
            raise ValueError(f"corpus of {len(tokens)} tokens is shorter than a block of {block_size} + 1")
        self.tokens, self.block_size, self.batch_size, self.seed = tokens, block_size, batch_size, seed

    def batch(self, step: int, index: int) -> dict[str, torch.Tensor]:
        starts = _rng(self.seed, step, index).integers(0, len(self.tokens) - self.block_size,
                                                       size=self.batch_size)
        w = np.stack([np.asarray(self.tokens[s:s + self.block_size + 1], dtype=np.int64) for s in starts])
        w = torch.from_numpy(w)  # (B, T + 1)
        return {"input_ids": w[:, :-1], "labels": w[:, 1:]}

    def eval_batches(self, max_batches: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """The whole stream in non-overlapping windows (the last partial window dropped)."""
        T = self.block_size
        n_win = (len(self.tokens) - 1) // T
        for b, first in enumerate(range(0, n_win, self.batch_size)):
            if max_batches and b >= max_batches:
                return
            rows = range(first, min(first + self.batch_size, n_win))
            w = np.stack([np.asarray(self.tokens[r * T:r * T + T + 1], dtype=np.int64) for r in rows])
            w = torch.from_numpy(w)
            yield {"input_ids": w[:, :-1], "labels": w[:, 1:]}


class MaskedLMBatches:
    """BERT pretraining examples: [CLS] A [SEP] (B [SEP]) built from consecutive lines,
    masked; with `sentence_objective` "nsp" B is the true continuation or a random span
    (label 0 = is next, 1 = random), with "sop" the two spans are in order or swapped
    (label 0 = in order, 1 = swapped)."""

    def __init__(self, corpus: TokenCorpus, tokenizer, task, block_size: int, batch_size: int,
                 seed: int, whole_word: bool = False):
        self.c, self.task = corpus, task
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.cls, self.sep, self.pad, self.mask = (tokenizer.cls_id, tokenizer.sep_id,
                                                   tokenizer.pad_id, tokenizer.mask_id)
        if None in (self.cls, self.sep, self.pad, self.mask):
            raise ValueError("masked-LM pretraining needs a tokenizer with [CLS], [SEP], [PAD] and [MASK]")
        self.vocab_size = tokenizer.vocab_size
        self.special = torch.tensor(sorted(set(tokenizer.special_ids) | {self.pad}), dtype=torch.long)
        self.continuation = None
        if whole_word:
            # WordPiece marks word-internal pieces with "##"
            cont = [tokenizer.id_to_token(i) or "" for i in range(self.vocab_size)]
            self.continuation = torch.tensor([t.startswith("##") for t in cont])

    # -- examples
    def _span(self, line: int, target: int) -> tuple[list[int], int]:
        """Tokens of consecutive lines from `line` (any document) up to ~target tokens."""
        out: list[int] = []
        i = line
        while i < self.c.n_lines and len(out) < target:
            out.extend(self.c.line(i).tolist())
            i += 1
        return out, i

    def _example(self, rng: np.random.Generator, line: int) -> tuple[list[int], list[int], int]:
        pair = self.task.sentence_objective != "none"
        target = self.block_size - (3 if pair else 2)
        if rng.random() < self.task.short_seq_prob:
            target = int(rng.integers(2, target + 1))
        if not pair:
            ids, _ = self._span(line, target)
            ids = ids[:target]
            return [self.cls, *ids, self.sep], [0] * (len(ids) + 2), -1
        d = self.c.doc_of_line(line)
        doc_end = int(self.c.docs[d + 1])
        chunk_lines = []
        n = 0
        i = line
        while i < doc_end and n < target:
            chunk_lines.append(self.c.line(i).tolist())
            n += len(chunk_lines[-1])
            i += 1
        if len(chunk_lines) >= 2:
            cut = int(rng.integers(1, len(chunk_lines)))
            a = sum(chunk_lines[:cut], [])
            b = sum(chunk_lines[cut:], [])
        else:
            toks = chunk_lines[0]
            cut = int(rng.integers(1, len(toks))) if len(toks) > 1 else 1
            a, b = toks[:cut], toks[cut:]
        label = 0
        if self.task.sentence_objective == "nsp":
            if rng.random() < 0.5 or not b:
                label = 1
                other = int(rng.integers(0, self.c.n_lines))
                if self.c.n_lines > 1 and self.c.doc_of_line(other) == d and len(self.c.docs) > 2:
                    other = int(self.c.docs[(d + 1) % (len(self.c.docs) - 1)])
                b, _ = self._span(other, max(target - len(a), 1))
        elif rng.random() < 0.5:
            label = 1
            a, b = b, a
        while len(a) + len(b) > target:  # truncate the longer side, as BERT does
            (a if len(a) >= len(b) else b).pop()
        ids = [self.cls, *a, self.sep, *b, self.sep]
        types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        return ids, types, label

    def _collate(self, examples, gen: torch.Generator) -> dict[str, torch.Tensor]:
        T = max(len(e[0]) for e in examples)
        ids = torch.full((len(examples), T), self.pad, dtype=torch.long)
        types = torch.zeros((len(examples), T), dtype=torch.long)
        for r, (x, t, _) in enumerate(examples):
            ids[r, :len(x)] = torch.tensor(x)
            types[r, :len(t)] = torch.tensor(t)
        attn = (torch.arange(T)[None] < torch.tensor([len(e[0]) for e in examples])[:, None]).long()
        word_starts = None
        if self.continuation is not None:
            word_starts = ~self.continuation[ids]
        corrupted, labels = mask_tokens(
            ids, mask_id=self.mask, vocab_size=self.vocab_size, special_ids=self.special,
            generator=gen, probability=self.task.mlm_probability,
            mask_replace=self.task.mask_replace, random_replace=self.task.random_replace,
            word_starts=word_starts)
        batch = {"input_ids": corrupted, "attention_mask": attn, "token_type_ids": types, "labels": labels}
        if self.task.sentence_objective != "none":
            batch["sentence_labels"] = torch.tensor([e[2] for e in examples])
        return batch

    def batch(self, step: int, index: int) -> dict[str, torch.Tensor]:
        rng = _rng(self.seed, step, index)
        lines = rng.integers(0, self.c.n_lines, size=self.batch_size)
        examples = [self._example(rng, int(i)) for i in lines]
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        return self._collate(examples, gen)

    def eval_batches(self, max_batches: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Consecutive spans of the corpus, masked with a fixed seed: the same every time."""
        line, b = 0, 0
        while line < self.c.n_lines and (not max_batches or b < max_batches):
            rng = _rng(self.seed, 0x5EED, b)
            examples = []
            while line < self.c.n_lines and len(examples) < self.batch_size:
                examples.append(self._example(rng, line))
                _, line = self._span(line, self.block_size - 2)
            gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
            yield self._collate(examples, gen)
            b += 1


__all__ = ["CausalLMBatches", "MaskedLMBatches", "IGNORE_INDEX"]


class SentenceBatches(BucketedBatches):
    """Unlabelled lines as encoder inputs, `[CLS] line [SEP]` truncated to `block_size`
    tokens and padded per batch (batches group similar lengths): the text of general
    distillation, which feeds teacher and student the same unmasked input."""

    def __init__(self, corpus: TokenCorpus, tokenizer, block_size: int, batch_size: int, seed: int,
                 micro_per_step: int = 1):
        self.cls, self.sep, self.pad = tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id
        if None in (self.cls, self.sep, self.pad):
            raise ValueError("encoder inputs need a tokenizer with [CLS], [SEP] and [PAD]")
        self.c, self.block_size = corpus, block_size
        lengths = np.diff(corpus.lines)
        self.rows = np.flatnonzero(lengths > 0)  # lines with tokens; blank lines end documents
        if not len(self.rows):
            raise ValueError("no non-empty lines to batch")
        super().__init__(np.minimum(lengths[self.rows], block_size - 2) + 2, batch_size=batch_size,
                         seed=seed, micro_per_step=micro_per_step)

    def collate(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        T = int(self.lengths[indices].max())
        ids = torch.full((len(indices), T), self.pad, dtype=torch.long)
        for r, i in enumerate(indices):
            line = np.asarray(self.c.line(int(self.rows[i]))[: self.block_size - 2], dtype=np.int64)
            ids[r, : len(line) + 2] = torch.cat([torch.tensor([self.cls]), torch.from_numpy(line),
                                                 torch.tensor([self.sep])])
        attn = (torch.arange(T)[None] < torch.as_tensor(self.lengths[indices])[:, None]).long()
        return {"input_ids": ids, "attention_mask": attn, "token_type_ids": torch.zeros_like(ids)}
