"""Masked language modelling (+ next-sentence or sentence-order prediction)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from zerolm.data.masking import IGNORE_INDEX
from zerolm.tasks.base import device_of, to_device


class MaskedLMTask:
    name = "mlm"
    loss_unit = "nats / masked token"

    def _forward(self, model, batch):
        labels = batch["labels"]
        selected = labels != IGNORE_INDEX  # (B, T): predict only where tokens were chosen
        out = model(batch["input_ids"], attention_mask=batch.get("attention_mask"),
                    token_type_ids=batch.get("token_type_ids"), mlm_positions=selected)
        return out, labels[selected]

    def loss(self, model, batch):
        out, targets = self._forward(model, batch)  # mlm_logits (N, V), targets (N,)
        loss = F.cross_entropy(out.mlm_logits, targets)
        metrics = {"mlm_loss": loss.detach()}
        if "sentence_labels" in batch and out.sentence_logits is not None:
            s_loss = F.cross_entropy(out.sentence_logits, batch["sentence_labels"])
            metrics["sentence_loss"] = s_loss.detach()
            loss = loss + s_loss
        return loss, metrics

    @torch.no_grad()
    def evaluate(self, model, batches):
        device = device_of(model)
        mlm_sum, n, correct = 0.0, 0, 0
        s_sum, s_correct, s_n = 0.0, 0, 0
        for batch in batches:
            batch = to_device(batch, device)
            out, targets = self._forward(model, batch)
            logits = out.mlm_logits.float()
            mlm_sum += F.cross_entropy(logits, targets, reduction="sum").item()
            correct += int((logits.argmax(-1) == targets).sum())
            n += targets.numel()
            if "sentence_labels" in batch and out.sentence_logits is not None:
                sl = batch["sentence_labels"]
                s_sum += F.cross_entropy(out.sentence_logits.float(), sl, reduction="sum").item()
                s_correct += int((out.sentence_logits.argmax(-1) == sl).sum())
                s_n += sl.numel()
        mlm_loss = mlm_sum / max(n, 1)
        metrics = {"loss": mlm_loss + (s_sum / s_n if s_n else 0.0), "mlm_loss": mlm_loss,
                   "mlm_accuracy": correct / max(n, 1), "mlm_perplexity": math.exp(min(mlm_loss, 50.0)),
                   "masked_tokens": n}
        if s_n:
            metrics.update(sentence_loss=s_sum / s_n, sentence_accuracy=s_correct / s_n)
        return metrics
