"""A task is what differs between objectives: batch -> loss, and how to evaluate.

The one training loop (zerolm.train.loop) calls `loss` on every micro-batch and
`evaluate` on the validation batches; it knows nothing else about the objective.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

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
