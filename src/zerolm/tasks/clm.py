"""Causal language modelling: predict token t+1 from tokens <= t."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from zerolm.data.masking import IGNORE_INDEX
from zerolm.tasks.base import device_of, to_device


class CausalLMTask:
    name = "clm"
    loss_unit = "nats / token"

    def loss(self, model, batch):
        # the head and the loss run inside the (possibly DDP-wrapped) model's forward
        loss = model(batch["input_ids"], attention_mask=batch.get("attention_mask"), labels=batch["labels"])
        return loss, {}

    @torch.no_grad()
    def evaluate(self, model, batches) -> dict[str, Any]:
        device = device_of(model)
        total, count = 0.0, 0
        for batch in batches:
            batch = to_device(batch, device)
            logits = model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
            labels = batch["labels"].flatten()
            total += F.cross_entropy(logits.flatten(0, 1).float(), labels, ignore_index=IGNORE_INDEX,
                                     reduction="sum").item()
            count += int((labels != IGNORE_INDEX).sum())
        loss = total / max(count, 1)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}
