"""Sequence classification: cross-entropy (optionally class-weighted), accuracy and a
full per-class report with the confusion matrix.

Inputs: a text, a (text, pair) tuple for sentence-pair models, or a row dict with the
model's text column(s). Predictions: {"label", "score", "probs": {class: p}}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from zerolm.data.labelled import ClassificationBatches, Example, LabelSet, read_examples
from zerolm.errors import ConfigError, DataError
from zerolm.eval.metrics import classification_report, format_report
from zerolm.tasks.base import FinetuneSetup, TaskDefaults, device_of, to_device


class ClassificationTask(TaskDefaults):
    name: ClassVar[str] = "classify"
    metric: ClassVar[str] = "accuracy"
    loss_unit: ClassVar[str] = "nats / example"

    def __init__(self, label_names: list[str], tokenizer=None, *, class_weights: list[float] | None = None,
                 text_column: str = "text", pair_column: str | None = None, label_column: str = "label",
                 max_length: int = 512):
        self.label_names = list(label_names)
        self.class_weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.tokenizer = tokenizer
        self.text_column, self.pair_column, self.label_column = text_column, pair_column, label_column
        self.max_length = max_length

    # ---------------------------------------------------------------- objective
    def _logits(self, model, batch):
        return model(batch["input_ids"], attention_mask=batch.get("attention_mask"),
                     token_type_ids=batch.get("token_type_ids"))

    def loss(self, model, batch):
        logits = self._logits(model, batch)
        w = None if self.class_weights is None else self.class_weights.to(logits.device)
        loss = F.cross_entropy(logits.float(), batch["labels"], weight=w)
        acc = (logits.argmax(-1) == batch["labels"]).float().mean()
        return loss, {"accuracy": acc.detach()}

    @torch.no_grad()
    def evaluate(self, model, batches) -> dict[str, Any]:
        device = device_of(model)
        y_true, y_pred, loss_sum, n = [], [], 0.0, 0
        for batch in batches:
            batch = to_device(batch, device)
            logits = self._logits(model, batch).float()
            loss_sum += F.cross_entropy(logits, batch["labels"], reduction="sum").item()
            n += len(batch["labels"])
            y_true += batch["labels"].tolist()
            y_pred += logits.argmax(-1).tolist()
        rep = classification_report(y_true, y_pred, self.label_names)
        rep.update(loss=loss_sum / max(n, 1), macro_f1=rep["macro"]["f1"], weighted_f1=rep["weighted"]["f1"])
        return rep

    @torch.no_grad()
    def predict(self, model, batch) -> list[dict[str, Any]]:
        probs = self._logits(model, to_device(batch, device_of(model))).float().softmax(-1)  # (B, C)
        out = []
        for p in probs:
            best = int(p.argmax())
            out.append({"label": self.label_names[best], "score": round(float(p[best]), 6),
                        "probs": {n: round(float(v), 6) for n, v in zip(self.label_names, p)}})
        return out

    # ------------------------------------------------------------------- build
    @classmethod
    def setup(cls, cfg, body, tokenizer, *, max_length: int, micro_per_step: int = 1) -> FinetuneSetup:
        """Read the labelled tables, fix the label set from train, add a classification head."""
        from zerolm.models.heads import SequenceClassifier

        d, tr = cfg.data, cfg.train
        cols = {"text_column": d.text_column, "pair_column": d.pair_column, "label_column": d.label_column}
        train_ex, dev_ex = read_examples(d.train, **cols), read_examples(d.dev, **cols)
        labels = LabelSet.from_examples(train_ex)
        y_train, y_dev = labels.encode(train_ex), labels.encode(dev_ex)
        if cfg.task.class_weights and len(cfg.task.class_weights) != len(labels):
            raise ConfigError(f"task.class_weights has {len(cfg.task.class_weights)} values for "
                              f"{len(labels)} labels {labels.names}")
        kw = {"max_length": max_length, "batch_size": tr.batch_size, "seed": tr.seed}
        train_data = ClassificationBatches(train_ex, y_train, tokenizer, micro_per_step=micro_per_step, **kw)
        dev_data = ClassificationBatches(dev_ex, y_dev, tokenizer, **kw)
        torch.manual_seed(tr.seed)
        model = SequenceClassifier(body, len(labels), dropout=cfg.task.head_dropout, pooling=cfg.task.pooling)
        task = cls(labels.names, tokenizer, class_weights=cfg.task.class_weights or None, max_length=max_length,
                   **cols)
        meta = {"task": cls.name, "labels": labels.names, "pooling": cfg.task.pooling, "max_length": max_length,
                **cols}
        return FinetuneSetup(model, task, train_data, dev_data, meta, truncated=train_data.truncated)

    @classmethod
    def from_meta(cls, meta: dict, body, tokenizer):
        from zerolm.models.heads import SequenceClassifier

        model = SequenceClassifier(body, len(meta["labels"]), pooling=meta.get("pooling", "first"))
        task = cls(meta["labels"], tokenizer, text_column=meta.get("text_column", "text"),
                   pair_column=meta.get("pair_column"), label_column=meta.get("label_column", "label"),
                   max_length=meta.get("max_length", body.config.max_seq_len))
        return model, task

    # --------------------------------------------------------------------- I/O
    def _example(self, x: Any, where: str) -> Example:
        if isinstance(x, str):
            text, pair = x, None
        elif isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(t, str) for t in x):
            text, pair = x
        elif isinstance(x, dict):
            if self.text_column not in x:
                raise DataError(f"{where}: no {self.text_column!r} in {sorted(x)}")
            text, pair = x[self.text_column], x.get(self.pair_column) if self.pair_column else None
            text = "" if text is None else text
        else:
            raise DataError(f"{where}: a classification input is a text, a (text, pair) tuple or a "
                            f"row dict, got {type(x).__name__}")
        if self.pair_column and pair is None:
            raise DataError(f"{where}: this model classifies sentence pairs; give (text, pair) or a row "
                            f"with {self.text_column!r} and {self.pair_column!r}")
        return Example(str(text), None if pair is None else str(pair), "", where)

    def read_inputs(self, path):
        """A table's rows (every column kept) or one text per line of a plain file."""
        from zerolm.data.text import is_table, iter_lines, iter_rows, resolve_data_path

        p = resolve_data_path(path)
        inputs, rows = [], []
        if is_table(p):
            for lineno, row in iter_rows(p, raw=True):
                for col in (self.text_column, self.pair_column):
                    if col is not None and col not in row:
                        raise DataError(f"{p}:{lineno}: no column {col!r} (columns: {', '.join(row)})")
                inputs.append(self._example(row, f"{p}:{lineno}"))
                rows.append(dict(row))
        else:
            if self.pair_column:
                raise DataError(f"{p}: this model classifies sentence pairs; give a table with columns "
                                f"{self.text_column!r} and {self.pair_column!r}")
            for lineno, line in iter_lines(p):
                if line.strip():
                    inputs.append(Example(line, None, "", f"{p}:{lineno}"))
                    rows.append({self.text_column: line})
        if not inputs:
            raise DataError(f"{p}: no inputs")
        return inputs, rows

    def batches(self, inputs, *, batch_size: int, max_length: int | None = None):
        ex = [x if isinstance(x, Example) else self._example(x, f"input {i}") for i, x in enumerate(inputs)]
        return ClassificationBatches(ex, [0] * len(ex), self.tokenizer, max_length=max_length or self.max_length,
                                     batch_size=batch_size, seed=0)

    def labelled_batches(self, path, *, batch_size: int, max_length: int | None = None, seed: int = 0,
                         micro_per_step: int = 1):
        ex = read_examples(path, text_column=self.text_column, pair_column=self.pair_column,
                           label_column=self.label_column)
        y = LabelSet(self.label_names).encode(ex)
        return ClassificationBatches(ex, y, self.tokenizer, max_length=max_length or self.max_length,
                                     batch_size=batch_size, seed=seed, micro_per_step=micro_per_step)

    def output_columns(self, prediction: dict) -> dict:
        return {"pred_label": prediction["label"],
                **{f"prob_{n}": p for n, p in prediction["probs"].items()}}

    @staticmethod
    def format_report(report: dict) -> str:
        return format_report(report)

    def write_plots(self, report: dict, out_dir: Path, title: str) -> list[Path]:
        from zerolm.eval.plots import plot_confusion_matrix

        return [plot_confusion_matrix(report["confusion_matrix"], self.label_names, out_dir / "confusion.png",
                                      title=f"{title}: accuracy {report['accuracy']:.4f}")]
