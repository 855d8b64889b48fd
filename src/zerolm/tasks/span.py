"""T5's span corruption: the encoder reads a text whose random spans were each replaced
by a sentinel token, the decoder writes each sentinel followed by the span it stands for
(the batches come from zerolm.data.spans). The loss is the cross-entropy of the target
tokens; evaluation reports it with its perplexity and the accuracy of the next token."""

from __future__ import annotations

import math
from typing import Any

import torch

from zerolm.data.masking import IGNORE_INDEX
from zerolm.tasks.base import device_of, to_device


class TargetLossTask:
    """The loss of an encoder-decoder on its labels: shared by span corruption and
    sequence-to-sequence fine-tuning."""

    name = "span"
    loss_unit = "nats / target token"
    label_smoothing = 0.0

    def loss(self, model, batch):
        # the head and the loss run inside the (possibly DDP-wrapped) model's forward
        loss = model(batch["input_ids"], attention_mask=batch.get("attention_mask"), labels=batch["labels"],
                     label_smoothing=self.label_smoothing)
        return loss, {}

    @torch.no_grad()
    def target_loss(self, model, batch) -> tuple[float, int, int]:
        """(summed cross-entropy, target tokens, tokens predicted right) of one batch."""
        labels = batch["labels"]
        logits = model(batch["input_ids"], attention_mask=batch.get("attention_mask"), labels=None,
                       decoder_input_ids=_shift(model, labels)).float()  # (B, T, V)
        keep = labels != IGNORE_INDEX
        total = torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum").item()
        right = int((logits.argmax(-1)[keep] == labels[keep]).sum())
        return total, int(keep.sum()), right

    @torch.no_grad()
    def evaluate(self, model, batches) -> dict[str, Any]:
        device = device_of(model)
        total, count, right = 0.0, 0, 0
        for batch in batches:
            t, n, r = self.target_loss(model, to_device(batch, device))
            total, count, right = total + t, count + n, right + r
        loss = total / max(count, 1)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": right / max(count, 1),
                "tokens": count}


def _shift(model, labels: torch.Tensor) -> torch.Tensor:
    from zerolm.models.t5 import shift_right

    inner = getattr(model, "module", model)  # DDP
    return shift_right(labels, inner.start_id)


SpanCorruptionTask = TargetLossTask
