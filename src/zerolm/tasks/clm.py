"""Causal language modelling: predict token t+1 from tokens <= t."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from zerolm.data.masking import IGNORE_INDEX
from zerolm.tasks.base import to_device
from zerolm.tasks.losses import linear_cross_entropy


class CausalLMTask:
    name = "clm"

    def loss(self, model, batch):
        # through the (possibly DDP-wrapped) model, then the chunked head + loss
        hidden = model(batch["input_ids"], attention_mask=batch.get("attention_mask"),
                       return_hidden=True)  # (B, T, D)
        head = getattr(model, "module", model).lm_head.weight  # (V, D)
        loss = linear_cross_entropy(hidden.flatten(0, 1), head, batch["labels"].flatten(), IGNORE_INDEX)
        return loss, {}

    @torch.no_grad()
    def evaluate(self, model, batches):
        device = next(model.parameters()).device
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
