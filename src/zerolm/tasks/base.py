"""A task is what differs between objectives: batch -> loss, and how to evaluate.

The one training loop (zerolm.train.loop) calls `loss` on every micro-batch and
`evaluate` on the validation batches; it knows nothing else about the objective.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn


class Task(Protocol):
    name: str

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean loss of the batch (a scalar with grad) and cheap metrics to log."""
        ...

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Metrics over the validation batches; names are prefixed `val_` by the loop."""
        ...


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@dataclass
class FinetuneSetup:
    """What a fine-tuning task builds from the config, a pretrained body and its tokenizer.

    `zerolm.train.finetune` applies the strategy to `model`, trains it with the one loop,
    and saves `meta` as task.json beside the best model: everything needed to rebuild the
    head and read its outputs (label names, CRF or not), for `zerolm predict`.
    """

    model: nn.Module  # body + task head, before the strategy is applied
    task: Any  # a Task whose `evaluate` also leaves the full report in `task.last_report`
    train_data: Any  # the loop's Batches protocol: batch(step, index), eval_batches()
    dev_data: Any
    meta: dict[str, Any]  # task.json: {"task": name, ...head settings..., "labels": [...]}
    truncated: int = 0  # training inputs cut to the maximum length
