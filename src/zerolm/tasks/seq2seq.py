"""Sequence-to-sequence fine-tuning (translation, summarisation) of an encoder-decoder:
the loss on the target tokens only (optionally label-smoothed); the dev report adds the
targets the model generates (greedy or beam search, as task.num_beams says) scored by
BLEU (sacrebleu's definition) and ROUGE-1/2/L against the raw reference texts.

Inputs: source texts. Predictions: {"target"}.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, ClassVar

import torch

from zerolm.data.pairs import PairBatches, SourceBatches, read_pairs
from zerolm.errors import DataError
from zerolm.tasks.base import FinetuneSetup, TaskDefaults, device_of, to_device
from zerolm.tasks.span import TargetLossTask

log = logging.getLogger(__name__)

GENERATION_KEYS = ("num_beams", "length_penalty", "no_repeat_ngram_size", "max_new_tokens")


class Seq2SeqTask(TaskDefaults, TargetLossTask):
    name: ClassVar[str] = "seq2seq"
    metric: ClassVar[str] = "bleu"
    loss_unit: ClassVar[str] = "nats / target token"

    def __init__(self, tokenizer=None, *, source_column: str = "source", target_column: str = "target",
                 max_length: int = 128, max_target_length: int = 128, num_beams: int = 1,
                 length_penalty: float = 1.0, no_repeat_ngram_size: int = 0, max_new_tokens: int = 0,
                 label_smoothing: float = 0.0, eval_generate: int = -1):
        self.tokenizer = tokenizer
        self.source_column, self.target_column = source_column, target_column
        self.max_length, self.max_target_length = max_length, max_target_length
        self.num_beams, self.length_penalty = num_beams, length_penalty
        self.no_repeat_ngram_size = no_repeat_ngram_size
        self.max_new_tokens = max_new_tokens or max_target_length
        self.label_smoothing = label_smoothing
        self.eval_generate = eval_generate

    def generation_config(self, **overrides):
        from zerolm.generate import GenerationConfig

        return GenerationConfig(**{"max_new_tokens": self.max_new_tokens, "greedy": True,
                                   "num_beams": self.num_beams, "length_penalty": self.length_penalty,
                                   "no_repeat_ngram_size": self.no_repeat_ngram_size, **overrides})

    @torch.no_grad()
    def generate(self, model, batch, **overrides) -> list[str]:
        """The target text generated for each source row of `batch`."""
        from zerolm.generate import decode_new, generate_seq2seq

        tok = self.tokenizer
        cfg = self.generation_config(**overrides)
        new = generate_seq2seq(model, batch["input_ids"], cfg, attention_mask=batch["attention_mask"],
                               eos_id=tok.eos_id, pad_id=tok.pad_id or 0)
        return [decode_new(tok, row.tolist(), cfg) for row in new]

    @torch.no_grad()
    def evaluate(self, model, batches) -> dict[str, Any]:
        """Target loss and perplexity over every batch; BLEU and ROUGE of the targets
        generated for the first `eval_generate` examples of the file (all with -1)."""
        from zerolm.eval.overlap import corpus_bleu, rouge

        device = device_of(model)
        total, count, right = 0.0, 0, 0
        hyps, refs = [], []
        for batch in batches:
            batch = to_device(batch, device)
            t, n, r = self.target_loss(model, batch)
            total, count, right = total + t, count + n, right + r
            if "references" not in batch or self.eval_generate == 0:
                continue
            # the first eval_generate examples of the file (batches come longest first)
            pick = (torch.arange(len(batch["input_ids"])) if self.eval_generate < 0 or "index" not in batch
                    else (batch["index"].cpu() < self.eval_generate).nonzero().squeeze(1))
            if len(pick):
                part = {k: batch[k][pick.to(batch[k].device)] for k in ("input_ids", "attention_mask")}
                hyps += self.generate(model, part)
                refs += [batch["references"][i] for i in pick.tolist()]
        loss = total / max(count, 1)
        report: dict[str, Any] = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
                                  "token_accuracy": right / max(count, 1), "tokens": count}
        if hyps:
            bleu = corpus_bleu(hyps, refs)
            report.update(bleu=bleu["bleu"], **{k: v for k, v in rouge(hyps, refs).items()},
                          generated=len(hyps), bleu_detail=bleu,
                          decoding={"num_beams": self.num_beams, "length_penalty": self.length_penalty,
                                    "no_repeat_ngram_size": self.no_repeat_ngram_size,
                                    "max_new_tokens": self.max_new_tokens},
                          samples=[{"reference": r, "generated": h} for h, r in zip(hyps[:5], refs[:5])])
        return report

    def predict(self, model, batch) -> list[dict[str, Any]]:
        return [{"target": t} for t in self.generate(model, batch)]

    @classmethod
    def _settings(cls, cfg) -> dict[str, Any]:
        d, t = cfg.data, cfg.task
        return {"source_column": d.source_column, "target_column": d.target_column,
                "max_target_length": d.max_target_length, "num_beams": t.num_beams,
                "length_penalty": t.length_penalty, "no_repeat_ngram_size": t.no_repeat_ngram_size,
                "max_new_tokens": t.max_new_tokens,
                "label_smoothing": t.label_smoothing}  # how it trained: a distillation's hard loss uses it too

    @classmethod
    def setup(cls, cfg, body, tokenizer, *, max_length: int, micro_per_step: int = 1) -> FinetuneSetup:
        d, tr = cfg.data, cfg.train
        model = _seq2seq(body)
        settings = cls._settings(cfg)
        cols = {"source_column": d.source_column, "target_column": d.target_column}
        kw = {"max_length": max_length, "max_target_length": d.max_target_length, "batch_size": tr.batch_size,
              "seed": tr.seed}
        train_data = PairBatches(read_pairs(d.train, **cols), tokenizer, micro_per_step=micro_per_step, **kw)
        dev_data = PairBatches(read_pairs(d.dev, **cols), tokenizer, **kw)
        task = cls(tokenizer, max_length=max_length, eval_generate=cfg.task.eval_generate, **settings)
        meta = {"task": cls.name, "max_length": max_length, **settings}
        return FinetuneSetup(model, task, train_data, dev_data, meta,
                             truncated=train_data.truncated)

    @classmethod
    def from_meta(cls, meta: dict, body, tokenizer):
        keys = ("source_column", "target_column", "max_target_length", "max_length", "label_smoothing",
                *GENERATION_KEYS)
        return _seq2seq(body), cls(tokenizer, **{k: meta[k] for k in keys if k in meta})

    def read_inputs(self, path):
        """Sources from a table's source column (every column kept) or one per line of text."""
        from zerolm.data.text import read_column_or_lines

        return read_column_or_lines(path, self.source_column, what="sources")

    def batches(self, inputs, *, batch_size: int, max_length: int | None = None):
        bad = [i for i, x in enumerate(inputs) if not isinstance(x, str)]
        if bad:
            raise DataError(f"input {bad[0]}: a seq2seq input is a source text, got {type(inputs[bad[0]]).__name__}")
        return SourceBatches(list(inputs), self.tokenizer, max_length=max_length or self.max_length,
                             batch_size=batch_size)

    def labelled_batches(self, path, *, batch_size: int, max_length: int | None = None, seed: int = 0,
                         micro_per_step: int = 1):
        pairs = read_pairs(path, source_column=self.source_column, target_column=self.target_column)
        return PairBatches(pairs, self.tokenizer, max_length=max_length or self.max_length,
                           max_target_length=self.max_target_length, batch_size=batch_size, seed=seed,
                           micro_per_step=micro_per_step)

    def output_columns(self, prediction: dict) -> dict:
        return {f"pred_{self.target_column}": prediction["target"]}

    @staticmethod
    def format_report(report: dict) -> str:
        line = (f"target loss {report['loss']:.4f}   perplexity {report['perplexity']:.3f}   "
                f"({report['tokens']:,} target tokens)")
        if "bleu" in report:
            d = report.get("decoding", {})
            how = f"beam {d['num_beams']}" if d.get("num_beams", 1) > 1 else "greedy"
            line += (f"\nBLEU {report['bleu']:.2f}   ROUGE-1 {report['rouge1']:.2f}   ROUGE-2 {report['rouge2']:.2f}"
                     f"   ROUGE-L {report['rougeL']:.2f}   ({report['generated']:,} targets generated, {how})")
        return line

    def write_plots(self, report: dict, out_dir: Path, title: str) -> list[Path]:
        return []  # the loss curve (loss.png) and the BLEU curve are the loop's plots


def _seq2seq(model):
    from zerolm.models import family

    if family(model.config).objective != "span" or not hasattr(model, "lm_head"):
        raise DataError(f"task.name 'seq2seq' needs an encoder-decoder (a zerolm T5 with its LM head), got "
                        f"{type(model).__name__} ({model.config.family}); use model.family: t5 or a "
                        "Hugging Face T5 directory")
    return model
