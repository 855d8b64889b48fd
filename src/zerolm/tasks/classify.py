"""Sequence classification: cross-entropy (optionally class-weighted), accuracy and a
full per-class report with the confusion matrix."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zerolm.eval.metrics import classification_report
from zerolm.tasks.base import to_device


class ClassificationTask:
    name = "classify"

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
