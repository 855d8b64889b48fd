"""Sequence classification: cross-entropy (optionally class-weighted), accuracy and a
full per-class report with the confusion matrix."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from zerolm.eval.metrics import classification_report, format_report
from zerolm.tasks.base import FinetuneSetup, to_device

__all__ = ["ClassificationTask", "format_report", "from_meta", "prediction_data", "setup"]


class ClassificationTask:
    name = "classify"
    metric = "accuracy"  # the headline metric (compare tables, default early stopping)

    def __init__(self, label_names: list[str], class_weights: list[float] | None = None):
        self.label_names = label_names
        self.class_weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.last_report: dict | None = None

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
    def evaluate(self, model, batches):
        device = next(model.parameters()).device
        y_true, y_pred, loss_sum, n = [], [], 0.0, 0
        for batch in batches:
            batch = to_device(batch, device)
            logits = self._logits(model, batch).float()
            loss_sum += F.cross_entropy(logits, batch["labels"], reduction="sum").item()
            n += len(batch["labels"])
            y_true += batch["labels"].tolist()
            y_pred += logits.argmax(-1).tolist()
        rep = classification_report(y_true, y_pred, self.label_names)
        rep["loss"] = loss_sum / max(n, 1)
        self.last_report = rep
        return {"loss": rep["loss"], "accuracy": rep["accuracy"], "macro_f1": rep["macro"]["f1"],
                "weighted_f1": rep["weighted"]["f1"]}

    @torch.no_grad()
    def predict(self, model, batch) -> list[dict]:
        """One {"label", "probs": {name: p}} per row of `batch`."""
        probs = self._logits(model, batch).float().softmax(-1)  # (B, C)
        return [{"label": self.label_names[int(p.argmax())],
                 "probs": {n: round(float(v), 6) for n, v in zip(self.label_names, p)}} for p in probs]

    def write_plots(self, report: dict, out_dir: Path, title: str) -> list[Path]:
        from zerolm.eval.plots import plot_confusion_matrix

        return [plot_confusion_matrix(report["confusion_matrix"], self.label_names, out_dir / "confusion.png",
                                      title=f"{title}: accuracy {report['accuracy']:.4f}")]


def setup(cfg, body, tokenizer, *, max_length: int, micro_per_step: int = 1) -> FinetuneSetup:
    """Read the labelled tables, fix the label set from train, add a classification head."""
    from zerolm.data.labelled import ClassificationBatches, LabelSet, read_examples
    from zerolm.errors import ConfigError
    from zerolm.models.heads import SequenceClassifier

    d, tr = cfg.data, cfg.train
    cols = {"text_column": d.text_column, "pair_column": d.pair_column, "label_column": d.label_column}
    train_ex, dev_ex = read_examples(d.train, **cols), read_examples(d.dev, **cols)
    labels = LabelSet.from_examples(train_ex)
    y_train, y_dev = labels.encode(train_ex), labels.encode(dev_ex)
    if cfg.task.class_weights and len(cfg.task.class_weights) != len(labels):
        raise ConfigError(f"task.class_weights has {len(cfg.task.class_weights)} values for "
                          f"{len(labels)} labels {labels.names}")
    train_data = ClassificationBatches(train_ex, y_train, tokenizer, max_length=max_length,
                                       batch_size=tr.batch_size, seed=tr.seed, micro_per_step=micro_per_step)
    dev_data = ClassificationBatches(dev_ex, y_dev, tokenizer, max_length=max_length,
                                     batch_size=tr.batch_size, seed=tr.seed)
    torch.manual_seed(tr.seed)
    model = SequenceClassifier(body, len(labels), dropout=cfg.task.head_dropout, pooling=cfg.task.pooling)
    task = ClassificationTask(labels.names, cfg.task.class_weights or None)
    meta = {"task": "classify", "labels": labels.names, "pooling": cfg.task.pooling,
            "text_column": d.text_column, "pair_column": d.pair_column}
    return FinetuneSetup(model, task, train_data, dev_data, meta, truncated=train_data.truncated)


def from_meta(meta: dict, body):
    """The classifier and its task, rebuilt from task.json (weights are loaded after)."""
    from zerolm.models.heads import SequenceClassifier

    model = SequenceClassifier(body, len(meta["labels"]), pooling=meta.get("pooling", "first"))
    return model, ClassificationTask(meta["labels"])


def prediction_data(path, tokenizer, meta: dict, *, max_length: int, batch_size: int):
    """Batches of a file's texts (a table's text column, or one text per line) and the
    input records to echo beside the predictions."""
    from zerolm.data.labelled import ClassificationBatches, Example
    from zerolm.data.text import is_table, iter_lines, iter_rows, resolve_data_path
    from zerolm.errors import DataError

    p = resolve_data_path(path)
    text_col, pair_col = meta.get("text_column", "text"), meta.get("pair_column")
    examples, records = [], []
    if is_table(p):
        for lineno, row in iter_rows(p):
            for col in (text_col, pair_col):
                if col is not None and col not in row:
                    raise DataError(f"{p}:{lineno}: no column {col!r} (columns: {', '.join(row)})")
            examples.append(Example(row[text_col], row[pair_col] if pair_col else None, "", f"{p}:{lineno}"))
            records.append({k: row[k] for k in (text_col, pair_col) if k})
    else:
        if pair_col:
            raise DataError(f"{p}: this model classifies sentence pairs; give a table with columns "
                            f"{text_col!r} and {pair_col!r}")
        for lineno, line in iter_lines(p):
            if line.strip():
                examples.append(Example(line, None, "", f"{p}:{lineno}"))
                records.append({text_col: line})
    if not examples:
        raise DataError(f"{p}: no inputs")
    data = ClassificationBatches(examples, [0] * len(examples), tokenizer, max_length=max_length,
                                 batch_size=batch_size, seed=0)
    return data, records
