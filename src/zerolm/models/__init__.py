"""Model definitions: forward passes only (torch and the standard library)."""

from zerolm.models.bert import Bert, BertForPreTraining
from zerolm.models.config import ModelConfig
from zerolm.models.gpt import GPT
from zerolm.models.layers import KVCache

__all__ = ["Bert", "BertForPreTraining", "GPT", "KVCache", "ModelConfig", "build_model"]


def build_model(cfg: ModelConfig):
    """The pretraining model of a family: GPT for "gpt", BertForPreTraining for "bert"."""
    return GPT(cfg) if cfg.family == "gpt" else BertForPreTraining(cfg)
