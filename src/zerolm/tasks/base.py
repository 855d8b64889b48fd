"""What a task is: an objective for the one training loop, and, for fine-tuning tasks,
how inputs are read and predictions written.

The loop (zerolm.train.loop) calls `loss` on every micro-batch and `evaluate` on the
validation batches; it knows nothing else about the objective. `evaluate` returns the
task's whole report; its top-level numbers are the `val_` metrics the loop logs.

A fine-tuning task (`FinetuneTask`) adds everything fine-tuning, `zerolm.load(...)`,
`zerolm predict` and `zerolm eval` need: building the model and data from a config,
rebuilding the model from its saved metadata (task.json), turning a file or in-memory
inputs into batches, predictions into records, and a report into text and plots. The
registry in zerolm.tasks maps each name to its class.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn


class Batches(Protocol):
    """Batches the loop and prediction read: a training batch per (step, micro-batch), and
    every example once for evaluation (each batch's `index` holds its rows' positions)."""

    def batch(self, step: int, index: int) -> dict[str, torch.Tensor]: ...

    def eval_batches(self, max_batches: int = 0) -> Iterator[dict[str, torch.Tensor]]: ...


class Objective(Protocol):
    """batch -> loss, and evaluation: what the training loop needs of a task."""

    name: str
    loss_unit: str  # what the loss averages over, for the loss plot ("nats / token")

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        """Mean loss of the batch (a scalar with grad) and cheap metrics to log."""
        ...

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """The report over the validation batches; its top-level numbers are logged as val_*."""
        ...


@dataclass
class FinetuneSetup:
    """What a fine-tuning task builds from the config, a pretrained body and its tokenizer.

    `zerolm.train.finetune` applies the strategy to `model`, trains it with the one loop,
    and saves `meta` as task.json beside the best model: everything needed to rebuild the
    head and read its inputs and outputs (label names, CRF or not, columns, max length).
    """

    model: nn.Module  # body + task head, before the strategy is applied
    task: FinetuneTask
    train_data: Batches
    dev_data: Batches
    meta: dict[str, Any]  # task.json: {"task": name, ...head settings..., "labels": [...]}
    truncated: int = 0  # training inputs cut to the maximum length


class FinetuneTask(Objective, Protocol):
    """A fine-tuning task: an objective plus its model, data and I/O.

    Instances hold what the task needs to read and write (tokenizer, label names,
    columns); they keep no state between calls.
    """

    name: ClassVar[str]  # the registry key (task.name in configs, "task" in task.json)
    metric: ClassVar[str]  # the headline metric of the report (compare tables, early stopping)

    @classmethod
    def setup(cls, cfg: Any, body: nn.Module, tokenizer: Any, *, max_length: int,
              micro_per_step: int = 1) -> FinetuneSetup:
        """Read the config's train/dev data and put the task's head on `body`."""
        ...

    @classmethod
    def from_meta(cls, meta: dict[str, Any], body: nn.Module, tokenizer: Any) -> tuple[nn.Module, FinetuneTask]:
        """The model (head on `body`, weights loaded after) and task, rebuilt from task.json."""
        ...

    def predict(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
        """One prediction record per row of `batch`."""
        ...

    def read_inputs(self, path: str | Path) -> tuple[list[Any], list[dict[str, Any]]]:
        """A file's inputs (what `batches` takes) and its rows as they were (every column)."""
        ...

    def batches(self, inputs: list[Any], *, batch_size: int, max_length: int | None = None) -> Batches:
        """In-memory inputs (texts, word lists, prompts) as batches, longest first (inputs
        cut to `max_length` tokens, default the length the model was fine-tuned with)."""
        ...

    def labelled_batches(self, path: str | Path, *, batch_size: int, max_length: int | None = None,
                         seed: int = 0, micro_per_step: int = 1) -> Batches:
        """A labelled file in the training format as batches: for `evaluate`, or for training
        another model on the same task (distillation), shuffled by `seed`."""
        ...

    def describe(self, x: Any, prediction: dict[str, Any]) -> dict[str, Any]:
        """The record `predict` returns for in-memory input `x` (e.g. tagging adds words
        and entities with character offsets)."""
        ...

    @staticmethod
    def write_predictions(records: list[dict[str, Any]], path: Path) -> str | None:
        """The text of a predictions file in the task's own format (CoNLL for tagging), or
        None for the generic TSV / JSONL writer."""
        ...

    def output_columns(self, prediction: dict[str, Any]) -> dict[str, Any]:
        """The columns a prediction adds to its input row in a predictions file."""
        ...

    @staticmethod
    def format_report(report: dict[str, Any]) -> str:
        """The report as text for a terminal."""
        ...

    def write_plots(self, report: dict[str, Any], out_dir: Path, title: str) -> list[Path]:
        """The report's pictures (confusion matrix, per-type scores) as PNG files."""
        ...


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors on `device` (other entries, such as the reference texts a
    sequence-to-sequence evaluation batch carries, as they are)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def scalars(report: dict[str, Any]) -> dict[str, float]:
    """The top-level numbers of a report (what the loop logs as val_*)."""
    return {k: float(v) for k, v in report.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


class TaskDefaults:
    """What most fine-tuning tasks do for the optional parts of the protocol: a prediction
    record is returned as the task made it, files are written by the generic writer."""

    def describe(self, x: Any, prediction: dict[str, Any]) -> dict[str, Any]:
        return prediction

    @staticmethod
    def write_predictions(records: list[dict[str, Any]], path: Path) -> str | None:
        return None  # the generic TSV / JSONL writer
