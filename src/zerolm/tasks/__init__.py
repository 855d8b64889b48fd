"""Objectives for the one training loop: batch -> loss, and evaluation."""

from zerolm.tasks.clm import CausalLMTask
from zerolm.tasks.mlm import MaskedLMTask

__all__ = ["CausalLMTask", "MaskedLMTask"]
