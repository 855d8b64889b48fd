"""Causal-LM fine-tuning on prompt / completion pairs: the causal-LM objective with the
loss on completion tokens only; dev perplexity of the completions; `predict` generates a
completion for each prompt."""

from __future__ import annotations

from pathlib import Path

import torch

from zerolm.tasks.base import FinetuneSetup
from zerolm.tasks.clm import CausalLMTask

__all__ = ["CompletionTask", "format_report", "from_meta", "prediction_data", "setup"]


class CompletionTask(CausalLMTask):
    name = "clm"
    metric = "perplexity"

    def __init__(self, max_new_tokens: int = 64):
        self.max_new_tokens = max_new_tokens
        self.last_report: dict | None = None
        self.tokenizer = None  # set by setup / predict callers: generation decodes text

    def evaluate(self, model, batches):
        metrics = super().evaluate(model, batches)
        self.last_report = dict(metrics)
        return metrics

    @torch.no_grad()
    def predict(self, model, batch) -> list[dict]:
        """A greedy completion for each prompt row (right-padded rows are generated one by one)."""
        from zerolm.generate import GenerationConfig, generate_ids, input_room

        tok = self.tokenizer
        out = []
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
            prompt = ids[mask.bool()][None]  # (1, T)
            room = input_room(model) - prompt.shape[1]
            cfg = GenerationConfig(max_new_tokens=max(min(self.max_new_tokens, room), 0), greedy=True)
            new = generate_ids(model, prompt, cfg, eos_id=tok.eos_id)[0].tolist()
            if tok.eos_id is not None and tok.eos_id in new:
                new = new[: new.index(tok.eos_id)]
            out.append({"completion": tok.decode(new)})
        return out

    def write_plots(self, report: dict, out_dir: Path, title: str) -> list[Path]:
        return []  # the loss curve (loss.png) is the picture of a language-modelling run


def format_report(report: dict) -> str:
    return (f"completion loss {report['loss']:.4f}   perplexity {report['perplexity']:.3f}   "
            f"({report['tokens']:,} completion tokens)")


def _lm(body):
    from zerolm.models.gpt import GPT

    if not isinstance(body, GPT):
        raise TypeError(f"task.name 'clm' needs a GPT (decoder) model, got {type(body).__name__}; "
                        "start from a zerolm GPT or a Hugging Face GPT-2 directory")
    return body


def setup(cfg, body, tokenizer, *, max_length: int, micro_per_step: int = 1) -> FinetuneSetup:
    from zerolm.data.prompts import PromptCompletionBatches, read_prompt_completions

    d, tr = cfg.data, cfg.train
    model = _lm(body)
    cols = {"prompt_column": d.prompt_column, "completion_column": d.completion_column}
    kw = {"max_length": max_length, "batch_size": tr.batch_size, "seed": tr.seed}
    train_data = PromptCompletionBatches(read_prompt_completions(d.train, **cols), tokenizer,
                                         micro_per_step=micro_per_step, **kw)
    dev_data = PromptCompletionBatches(read_prompt_completions(d.dev, **cols), tokenizer, **kw)
    task = CompletionTask()
    task.tokenizer = tokenizer
    return FinetuneSetup(model, task, train_data, dev_data, {"task": "clm", "prompt_column": d.prompt_column},
                         truncated=train_data.truncated)


def from_meta(meta: dict, body):
    return _lm(body), CompletionTask()


def prediction_data(path, tokenizer, meta: dict, *, max_length: int, batch_size: int):
    """Prompts from a table's prompt column (JSONL / TSV / CSV) or one per line of text."""
    from zerolm.data.prompts import PromptBatches
    from zerolm.data.text import is_table, iter_lines, iter_rows, resolve_data_path
    from zerolm.errors import DataError

    p = resolve_data_path(path)
    col = meta.get("prompt_column", "prompt")
    if is_table(p):
        prompts = []
        for lineno, row in iter_rows(p):
            if col not in row:
                raise DataError(f"{p}:{lineno}: no field {col!r} (fields: {', '.join(row)})")
            prompts.append(row[col])
    else:
        prompts = [line.replace("\\n", "\n") for _, line in iter_lines(p) if line.strip()]
    if not prompts:
        raise DataError(f"{p}: no prompts")
    return PromptBatches(prompts, tokenizer, max_length=max_length, batch_size=batch_size), \
        [{col: x} for x in prompts]
