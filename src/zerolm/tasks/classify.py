"""Sequence classification: cross-entropy (optionally class-weighted), accuracy and a
full per-class report with the confusion matrix; optionally out-of-scope detection for
intent classifiers (zerolm.eval.oos).

Inputs: a text, a (text, pair) tuple for sentence-pair models, or a row dict with the
model's text column(s). Predictions: {"label", "score", "probs": {class: p}}.

With out-of-scope detection (task.oos_label, and task.oos_threshold or an oos class in
the training data) predictions also carry "in_scope" (bool), "oos_score" (higher: more
likely out of scope), "top_label" and "top_score" (the best in-scope class and its
probability, whatever the decision). An out-of-scope query's "label" is the oos label and
its "score" is 1 - top_score; an in-scope query's are top_label and top_score. The
dev report adds in-scope accuracy, oos recall / precision and the score's AUROC.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from zerolm.data.labelled import ClassificationBatches, Example, LabelSet, read_examples
from zerolm.errors import ConfigError, DataError
from zerolm.eval.metrics import classification_report, format_report
from zerolm.eval.oos import (
    NO_CLASS,
    OutOfScope,
    auroc,
    best_in_scope,
    calibrate,
    cross_calibrate,
    decide,
    format_oos_report,
    oos_metrics,
    oos_scores,
    score_histogram,
)
from zerolm.tasks.base import FinetuneSetup, TaskDefaults, device_of, to_device

log = logging.getLogger(__name__)

# a confusion matrix drawn with more classes than this is unreadable (and slow to draw:
# 150 classes take ~45 s and 6 MB); eval.json still holds it
MAX_CONFUSION_PLOT_LABELS = 60


class ClassificationTask(TaskDefaults):
    name: ClassVar[str] = "classify"
    metric: ClassVar[str] = "accuracy"
    loss_unit: ClassVar[str] = "nats / example"

    def __init__(self, label_names: list[str], tokenizer=None, *, class_weights: list[float] | None = None,
                 text_column: str = "text", pair_column: str | None = None, label_column: str = "label",
                 max_length: int = 512, oos: OutOfScope | None = None):
        self.label_names = list(label_names)
        self.oos = oos  # out-of-scope detection; None: every input is one of the classes
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
        all_logits, index = [], []
        for batch in batches:
            batch = to_device(batch, device)
            logits = self._logits(model, batch).float()
            # (out-of-scope examples of a model with no oos class are NO_CLASS: no loss)
            loss_sum += F.cross_entropy(logits, batch["labels"], reduction="sum").item()
            n += int((batch["labels"] != NO_CLASS).sum())
            y_true += batch["labels"].tolist()
            y_pred += logits.argmax(-1).tolist()
            if self.oos is not None:
                all_logits.append(logits.cpu())
                index += batch["index"].tolist() if "index" in batch else range(len(index), len(y_true))
        if self.oos is not None:
            return self._oos_report(torch.cat(all_logits), torch.tensor(y_true), np.asarray(index),
                                    loss_sum / max(n, 1))
        rep = classification_report(y_true, y_pred, self.label_names)
        rep.update(loss=loss_sum / max(n, 1), macro_f1=rep["macro"]["f1"], weighted_f1=rep["weighted"]["f1"])
        return rep

    def _oos_report(self, logits: torch.Tensor, y: torch.Tensor, index: np.ndarray, loss: float) -> dict[str, Any]:
        """The report with out-of-scope detection: the decisions (oos class or score above the
        threshold) in the confusion matrix, and the figures of zerolm.eval.oos.

        While fine-tuning with oos_threshold auto, each half of the data (even / odd rows of
        the file) is judged at the threshold calibrated on the other half, so no example is
        judged at a threshold fitted on itself; the threshold saved with the model is
        calibrated on all of it (`fitted_meta`, written into task.json by fine-tuning)."""
        oos = self.oos
        k = oos.oos_index
        is_oos = y == (NO_CLASS if k is None else k)
        best = best_in_scope(logits, k)  # (N,) the best in-scope class
        forced = logits.argmax(-1) == k if k is not None else torch.zeros_like(is_oos)
        scores = oos_scores(logits, oos.score, k)
        is_oos, forced, scores = is_oos.numpy(), forced.numpy(), scores.numpy()
        correct = (best == y).numpy()
        section: dict[str, Any] = {"label": oos.label, "class": k is not None, "score": oos.score,
                                   "calibration": oos.describe_rule()}
        if oos.rule is not None:
            threshold = calibrate(scores, correct, is_oos, forced, rule=oos.rule, target=oos.target)
            decided, fold_t = cross_calibrate(scores, correct, is_oos, forced, index % 2, rule=oos.rule,
                                              target=oos.target)
            section.update(threshold=threshold, fold_thresholds=fold_t,
                           measured=f"two-fold cross-calibration: the even and odd rows each judged at "
                                    f"the threshold calibrated on the other ({', '.join(f'{t:.6g}' for t in fold_t)}); "
                                    f"the saved threshold is calibrated on all {len(y)} rows",
                           same_set=oos_metrics(is_oos, decide(scores, forced, threshold), correct))
        else:
            threshold = oos.threshold
            decided = decide(scores, forced, threshold)
            section.update(threshold=threshold, measured="at the model's threshold" if threshold is not None
                           else "the oos class's predictions")
        metrics = oos_metrics(is_oos, decided, correct)
        section.update(metrics, auroc=auroc(scores, is_oos), histogram=score_histogram(scores, is_oos))
        # the confusion matrix over the classes, plus the oos label when it is no class
        names = self.label_names + ([oos.label] if k is None else [])
        col = k if k is not None else len(self.label_names)
        y_ext = np.where(is_oos, col, y.numpy())
        pred_ext = np.where(decided, col, best.numpy())
        rep = classification_report(y_ext.tolist(), pred_ext.tolist(), names)
        rep.update(loss=loss, macro_f1=rep["macro"]["f1"], weighted_f1=rep["weighted"]["f1"],
                   in_scope_accuracy=metrics["in_scope_accuracy"], oos_recall=metrics["oos_recall"],
                   oos_precision=metrics["oos_precision"], oos_auroc=section["auroc"], oos=section)
        if oos.rule is not None:
            rep["fitted_meta"] = {"oos": {**oos.to_meta(), "threshold": threshold, "rule": None, "target": None,
                                          "calibration": oos.describe_rule()}}
        return rep

    @torch.no_grad()
    def predict(self, model, batch) -> list[dict[str, Any]]:
        logits = self._logits(model, to_device(batch, device_of(model))).float()
        probs = logits.softmax(-1)  # (B, C)
        if self.oos is not None:
            return self._predict_oos(logits, probs)
        out = []
        for p in probs:
            best = int(p.argmax())
            out.append({"label": self.label_names[best], "score": round(float(p[best]), 6),
                        "probs": {n: round(float(v), 6) for n, v in zip(self.label_names, p)}})
        return out

    def _predict_oos(self, logits: torch.Tensor, probs: torch.Tensor) -> list[dict[str, Any]]:
        oos = self.oos
        k = oos.oos_index
        best = best_in_scope(probs, k)
        forced = (probs.argmax(-1) == k).numpy() if k is not None else np.zeros(len(probs), dtype=bool)
        scores = oos_scores(logits, oos.score, k)
        decided = decide(scores.numpy(), forced, oos.threshold)
        out = []
        for p, b, s, d in zip(probs, best.tolist(), scores.tolist(), decided.tolist()):
            top = round(float(p[b]), 6)
            out.append({"label": oos.label if d else self.label_names[b],
                        "score": round(1.0 - top, 6) if d else top,
                        "probs": {n: round(float(v), 6) for n, v in zip(self.label_names, p)},
                        "in_scope": not d, "oos_score": round(float(s), 6),
                        "top_label": self.label_names[b], "top_score": top})
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
        oos = out_of_scope(cfg.task, labels.names, dev_ex, d.train, d.dev)
        y_train, y_dev = labels.encode(train_ex), encode_labels(labels, dev_ex, oos)
        if cfg.task.class_weights and len(cfg.task.class_weights) != len(labels):
            raise ConfigError(f"task.class_weights has {len(cfg.task.class_weights)} values for "
                              f"{len(labels)} labels {labels.names}")
        kw = {"max_length": max_length, "batch_size": tr.batch_size, "seed": tr.seed}
        train_data = ClassificationBatches(train_ex, y_train, tokenizer, micro_per_step=micro_per_step, **kw)
        dev_data = ClassificationBatches(dev_ex, y_dev, tokenizer, **kw)
        torch.manual_seed(tr.seed)
        model = SequenceClassifier(body, len(labels), dropout=cfg.task.head_dropout, pooling=cfg.task.pooling)
        task = cls(labels.names, tokenizer, class_weights=cfg.task.class_weights or None, max_length=max_length,
                   oos=oos, **cols)
        meta = {"task": cls.name, "labels": labels.names, "pooling": cfg.task.pooling, "max_length": max_length,
                **cols}
        if oos is not None:  # (an auto threshold is filled in once calibrated: see _oos_report)
            meta["oos"] = oos.to_meta()
        return FinetuneSetup(model, task, train_data, dev_data, meta, truncated=train_data.truncated)

    @classmethod
    def from_meta(cls, meta: dict, body, tokenizer):
        from zerolm.models.heads import SequenceClassifier

        model = SequenceClassifier(body, len(meta["labels"]), pooling=meta.get("pooling", "first"))
        oos = None
        if meta.get("oos"):
            oos = OutOfScope.from_meta(meta["oos"], meta["labels"])
            if meta["oos"].get("rule") and oos.threshold is None:
                log.warning("this model's out-of-scope threshold was never calibrated (it was saved before its "
                            "fine-tuning run ended?): %s", "its oos class alone decides out of scope"
                            if oos.oos_index is not None else "every query is taken as in scope")
        task = cls(meta["labels"], tokenizer, text_column=meta.get("text_column", "text"),
                   pair_column=meta.get("pair_column"), label_column=meta.get("label_column", "label"),
                   max_length=meta.get("max_length", body.config.max_seq_len), oos=oos)
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
        y = encode_labels(LabelSet(self.label_names), ex, self.oos)
        return ClassificationBatches(ex, y, self.tokenizer, max_length=max_length or self.max_length,
                                     batch_size=batch_size, seed=seed, micro_per_step=micro_per_step)

    def output_columns(self, prediction: dict) -> dict:
        oos = {} if "in_scope" not in prediction else {
            "pred_in_scope": prediction["in_scope"], "pred_oos_score": prediction["oos_score"],
            "pred_top_label": prediction["top_label"]}
        return {"pred_label": prediction["label"], **oos,
                **{f"prob_{n}": p for n, p in prediction["probs"].items()}}

    @staticmethod
    def format_report(report: dict) -> str:
        text = format_report(report)
        return text if "oos" not in report else f"{text}\n\n{format_oos_report(report['oos'])}"

    def write_plots(self, report: dict, out_dir: Path, title: str) -> list[Path]:
        from zerolm.eval.plots import plot_confusion_matrix, plot_oos_scores

        out = []
        names = report.get("labels", self.label_names)  # + the oos label when the model has no oos class
        if len(names) <= MAX_CONFUSION_PLOT_LABELS:
            out.append(plot_confusion_matrix(report["confusion_matrix"], names, out_dir / "confusion.png",
                                             title=f"{title}: accuracy {report['accuracy']:.4f}"))
        else:
            log.info("no confusion.png: %d classes are too many to read in one picture (eval.json has the "
                     "matrix)", len(names))
        if "oos" in report:
            out.append(plot_oos_scores(report["oos"], out_dir / "oos_scores.png", title=title))
        return out


def out_of_scope(t, label_names: list[str], dev: list[Example], train_path: str, dev_path: str
                 ) -> OutOfScope | None:
    """The out-of-scope detection a config asks for (None: none), checked against the data:
    the oos label is a class of the training data or a threshold detects it, and the auto
    threshold's rule has the dev examples it needs."""
    if t.oos_label is None:
        return None
    in_train = t.oos_label in label_names
    if not in_train and t.oos_threshold is None:
        shown = ", ".join(label_names[:8]) + (", ..." if len(label_names) > 8 else "")
        raise ConfigError(f"task.oos_label {t.oos_label!r} is not a label of the training data {train_path} "
                          f"(labels: {shown}); train with out-of-scope examples under that label, or set "
                          f"task.oos_threshold (auto or a number) to detect them by their score alone")
    if in_train and len(label_names) < 2:
        raise ConfigError(f"{train_path}: only the out-of-scope label {t.oos_label!r}; in-scope classes are needed")
    auto = t.oos_threshold == "auto"
    rule = None if not auto else ("balanced" if t.oos_in_scope_recall is None else "in_scope_recall")
    if rule == "balanced" and not any(e.label == t.oos_label for e in dev):
        raise ConfigError(f"task.oos_threshold auto maximises in-scope accuracy + oos recall on dev, but "
                          f"{dev_path} has no {t.oos_label!r} rows: add out-of-scope examples to it, or set "
                          f"task.oos_in_scope_recall (e.g. 0.95) to calibrate on in-scope queries alone")
    return OutOfScope(t.oos_label, label_names.index(t.oos_label) if in_train else None, t.oos_score,
                      None if auto else t.oos_threshold, rule, t.oos_in_scope_recall)


def encode_labels(labels: LabelSet, examples: list[Example], oos: OutOfScope | None) -> list[int]:
    """Class indices; out-of-scope examples of a model with no oos class are NO_CLASS."""
    if oos is None or oos.oos_index is not None:
        return labels.encode(examples)
    keep = [e for e in examples if e.label != oos.label]
    ids = iter(labels.encode(keep))
    return [NO_CLASS if e.label == oos.label else next(ids) for e in examples]
