"""Causal-LM fine-tuning on prompt / completion pairs: the causal-LM objective with the
loss on completion tokens only; dev perplexity of the completions; `predict` generates a
greedy completion for each prompt, the prompts of a batch together.

Inputs: prompts (texts). Predictions: {"completion"}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from zerolm.data.prompts import PromptBatches, PromptCompletionBatches, read_prompt_completions
from zerolm.errors import DataError
from zerolm.tasks.base import FinetuneSetup, TaskDefaults
from zerolm.tasks.clm import CausalLMTask


class CompletionTask(TaskDefaults, CausalLMTask):
    name: ClassVar[str] = "clm"
    metric: ClassVar[str] = "perplexity"
    loss_unit: ClassVar[str] = "nats / token"

    def __init__(self, tokenizer=None, *, max_new_tokens: int = 64, prompt_column: str = "prompt",
                 completion_column: str = "completion", max_length: int = 512):
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.prompt_column, self.completion_column = prompt_column, completion_column
        self.max_length = max_length

    @torch.no_grad()
    def predict(self, model, batch) -> list[dict[str, Any]]:
        """A greedy completion for each prompt row, all rows generated together."""
        from zerolm.generate import GenerationConfig, decode_new, generate_ids

        tok = self.tokenizer
        ids, mask = batch["input_ids"], batch["attention_mask"]
        # the batch is right-padded; generation wants the padding on the left
        lengths = mask.sum(1)
        shift = (mask.shape[1] - lengths)[:, None]
        cols = (torch.arange(mask.shape[1])[None] - shift) % mask.shape[1]
        left_ids, left_mask = ids.gather(1, cols), mask.gather(1, cols)
        cfg = GenerationConfig(max_new_tokens=self.max_new_tokens, greedy=True)
        pad = tok.pad_id if tok.pad_id is not None else 0
        new = generate_ids(model, left_ids, cfg, attention_mask=left_mask, eos_id=tok.eos_id, pad_id=pad)
        return [{"completion": decode_new(tok, row.tolist(), cfg)} for row in new]

    @classmethod
    def setup(cls, cfg, body, tokenizer, *, max_length: int, micro_per_step: int = 1) -> FinetuneSetup:
        d, tr = cfg.data, cfg.train
        model = _lm(body)
        cols = {"prompt_column": d.prompt_column, "completion_column": d.completion_column}
        kw = {"max_length": max_length, "batch_size": tr.batch_size, "seed": tr.seed}
        train_data = PromptCompletionBatches(read_prompt_completions(d.train, **cols), tokenizer,
                                             micro_per_step=micro_per_step, **kw)
        dev_data = PromptCompletionBatches(read_prompt_completions(d.dev, **cols), tokenizer, **kw)
        task = cls(tokenizer, max_length=max_length, **cols)
        meta = {"task": cls.name, "max_length": max_length, **cols}
        return FinetuneSetup(model, task, train_data, dev_data, meta, truncated=train_data.truncated)

    @classmethod
    def from_meta(cls, meta: dict, body, tokenizer):
        return _lm(body), cls(tokenizer, prompt_column=meta.get("prompt_column", "prompt"),
                              completion_column=meta.get("completion_column", "completion"),
                              max_length=meta.get("max_length", body.config.max_seq_len))

    def read_inputs(self, path):
        """Prompts from a table's prompt column (JSONL / TSV / CSV; every column kept) or one
        per line of text (write \\n for a line break)."""
        from zerolm.data.text import read_column_or_lines

        return read_column_or_lines(path, self.prompt_column, unescape_newlines=True, what="prompts")

    def batches(self, inputs, *, batch_size: int, max_length: int | None = None):
        bad = [i for i, x in enumerate(inputs) if not isinstance(x, str)]
        if bad:
            raise DataError(f"input {bad[0]}: a completion input is a prompt text, got "
                            f"{type(inputs[bad[0]]).__name__}")
        return PromptBatches(list(inputs), self.tokenizer, max_length=max_length or self.max_length,
                             batch_size=batch_size)

    def labelled_batches(self, path, *, batch_size: int, max_length: int | None = None, seed: int = 0,
                         micro_per_step: int = 1):
        ex = read_prompt_completions(path, prompt_column=self.prompt_column,
                                     completion_column=self.completion_column)
        return PromptCompletionBatches(ex, self.tokenizer, max_length=max_length or self.max_length,
                                       batch_size=batch_size, seed=seed, micro_per_step=micro_per_step)

    def output_columns(self, prediction: dict) -> dict:
        return {"pred_completion": prediction["completion"]}

    @staticmethod
    def format_report(report: dict) -> str:
        return (f"completion loss {report['loss']:.4f}   perplexity {report['perplexity']:.3f}   "
                f"({report['tokens']:,} completion tokens)")

    def write_plots(self, report: dict, out_dir: Path, title: str) -> list[Path]:
        return []  # the loss curve (loss.png) is the picture of a language-modelling run


def _lm(model):
    from zerolm.models import family

    if family(model.config).objective != "clm":
        raise DataError(f"task.name 'clm' needs a causal LM (a GPT with its LM head), got "
                        f"{type(model).__name__}; start from a zerolm GPT or a Hugging Face GPT-2 directory")
    return model
