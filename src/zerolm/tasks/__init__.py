"""Objectives for the one training loop (batch -> loss, and evaluation), and the
registry of fine-tuning tasks: a new task is one new file plus one line here."""

from __future__ import annotations

import difflib

from zerolm.errors import ConfigError
from zerolm.tasks.base import FinetuneSetup, FinetuneTask, Objective
from zerolm.tasks.classify import ClassificationTask
from zerolm.tasks.clm import CausalLMTask
from zerolm.tasks.clm_finetune import CompletionTask
from zerolm.tasks.intent_slots import IntentSlotTask
from zerolm.tasks.mlm import MaskedLMTask
from zerolm.tasks.seq2seq import Seq2SeqTask
from zerolm.tasks.span import SpanCorruptionTask
from zerolm.tasks.tag import TaggingTask

__all__ = ["FINETUNE_TASKS", "OBJECTIVES", "CausalLMTask", "ClassificationTask", "CompletionTask", "FinetuneSetup",
           "FinetuneTask", "IntentSlotTask", "MaskedLMTask", "Objective", "Seq2SeqTask",
           "SpanCorruptionTask", "TaggingTask", "finetune_task"]

# pretraining objectives, by the name families declare (zerolm.models.FAMILIES[...].objective)
OBJECTIVES: dict[str, type[Objective]] = {CausalLMTask.name: CausalLMTask, MaskedLMTask.name: MaskedLMTask,
                                          SpanCorruptionTask.name: SpanCorruptionTask}

FINETUNE_TASKS: dict[str, type[FinetuneTask]] = {
    ClassificationTask.name: ClassificationTask,
    TaggingTask.name: TaggingTask,
    CompletionTask.name: CompletionTask,
    IntentSlotTask.name: IntentSlotTask,
    Seq2SeqTask.name: Seq2SeqTask,
}


def finetune_task(name: str) -> type[FinetuneTask]:
    """The fine-tuning task class registered under `name`."""
    if name not in FINETUNE_TASKS:
        close = difflib.get_close_matches(name, list(FINETUNE_TASKS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"task.name: unknown fine-tuning task {name!r}{hint}; choose from "
                          f"{sorted(FINETUNE_TASKS)}")
    return FINETUNE_TASKS[name]
