"""Prompt / completion pairs for causal-LM fine-tuning (instruction-style data).

Each example is the prompt's tokens followed by the completion's tokens and the
end-of-text token (when the tokenizer has one). The model learns to produce the
completion: the loss is taken only where the next token belongs to the completion, never
on the prompt or on padding. An over-long example loses the start of its prompt (the
completion and the end of the prompt are what the model must condition on).
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
class PromptExample:
    prompt: str
    completion: str
    where: str  # "file:line", for error messages


def read_prompt_completions(path: str | Path, *, prompt_column: str = "prompt",
                            completion_column: str = "completion") -> list[PromptExample]:
    """Rows of a JSONL (or TSV / CSV) table with a prompt and a non-empty completion."""
    p = resolve_data_path(path)
    out = []
    for lineno, row in iter_rows(p):
        for col in (prompt_column, completion_column):
            if col not in row:
                raise DataError(f"{p}:{lineno}: no field {col!r} (fields: {', '.join(row)})")
        if not row[completion_column]:
            raise DataError(f"{p}:{lineno}: empty {completion_column!r}: nothing to learn")
        out.append(PromptExample(row[prompt_column], row[completion_column], f"{p}:{lineno}"))
    if not out:
        raise DataError(f"{p}: no examples")
    return out


class PromptCompletionBatches(BucketedBatches):
    """Tokenized once; `input_ids` (B, T) with `labels` (B, T) already shifted by one (the
    next token), IGNORE_INDEX where that next token is in the prompt or padding."""

    def __init__(self, examples: list[PromptExample], tokenizer, *, max_length: int, batch_size: int,
                 seed: int, micro_per_step: int = 1):
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        prompts = tokenizer.encode_batch([e.prompt for e in examples], add_special_tokens=False)["input_ids"]
        comps = tokenizer.encode_batch([e.completion for e in examples], add_special_tokens=False)["input_ids"]
        eos = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
        self.seqs: list[list[int]] = []
        self.prompt_lens: list[int] = []
        self.truncated = 0
        for e, p, c in zip(examples, prompts, comps):
            c = c + eos
            seq = p + c
            if len(seq) > max_length + 1:  # inputs are seq[:-1]: max_length + 1 tokens fit
                self.truncated += 1
                keep_prompt = max(max_length + 1 - len(c), 1)  # at least one token to condition on
                p = p[len(p) - keep_prompt:] if p else p
                seq = (p + c)[: max_length + 1]
            if len(seq) < 2:
                raise DataError(f"{e.where}: prompt and completion give fewer than 2 tokens")
            self.seqs.append(seq)
            self.prompt_lens.append(len(p))
        if self.truncated:
            log.warning("%d of %d examples were truncated to %d tokens", self.truncated, len(examples),
                        max_length)
        self.tok = tokenizer
        super().__init__([len(s) - 1 for s in self.seqs], batch_size=batch_size, seed=seed,
                         micro_per_step=micro_per_step)

    def collate(self, idx) -> dict[str, torch.Tensor]:
        rows = [self.seqs[i] for i in idx]
        b = self.tok.pad([r[:-1] for r in rows])
        labels = torch.full_like(b["input_ids"], IGNORE_INDEX)
        for j, i in enumerate(idx):
            targets = self.seqs[i][1:]
            start = max(self.prompt_lens[i] - 1, 0)  # position whose next token is the completion's first
            labels[j, start:len(targets)] = torch.tensor(targets[start:])
        b["labels"] = labels
        return b


class PromptBatches(BucketedBatches):
    """Prompts alone, for generation: the last `max_length` tokens of each are kept."""

    def __init__(self, prompts: list[str], tokenizer, *, max_length: int, batch_size: int):
        ids = tokenizer.encode_batch(prompts, add_special_tokens=False)["input_ids"]
        start = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.bos_id
        self.ids = [(x or ([start] if start is not None else []))[-max_length:] for x in ids]
        if any(not x for x in self.ids):
            raise DataError("an empty prompt needs a tokenizer with an end-of-text token")
        self.tok = tokenizer
        super().__init__([len(x) for x in self.ids], batch_size=batch_size, seed=0)

    def collate(self, idx) -> dict[str, torch.Tensor]:
        return self.tok.pad([self.ids[i] for i in idx])
