"""Model definitions: forward passes only (torch and the standard library).

Every family has a body (`zerolm.models.body.Body`: ids -> hidden states) and a
pretraining model that wraps it under `.body`. The registry below is the one place a
family is named; a new family is a new file plus one line here.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from zerolm.models.bert import Bert, BertForPreTraining
from zerolm.models.body import Body, BodyOutput
from zerolm.models.config import FAMILIES as _FAMILY_NAMES
from zerolm.models.config import LayerShape, ModelConfig
from zerolm.models.gpt import GPT, CausalLM
from zerolm.models.layers import KVCache
from zerolm.models.t5 import T5, Seq2SeqLM

__all__ = ["Bert", "BertForPreTraining", "Body", "BodyOutput", "CausalLM", "FAMILIES", "GPT", "KVCache",
           "LayerShape", "ModelConfig", "Seq2SeqLM", "T5", "body_of", "build_body", "build_model"]


@dataclass(frozen=True)
class FamilySpec:
    body: type[Body]  # ids -> hidden states
    pretraining: type[nn.Module]  # the body with its self-supervised head(s), `.body`
    objective: str  # the pretraining task that trains it (zerolm.tasks)
    # model.layers describes every block's shape, so transforms that change shapes (head
    # and FFN pruning, low-rank) can record them; t5's decoder blocks have no entry there
    layer_shapes: bool = True
    encoder_decoder: bool = False  # a decoder stack beside the encoder (model.n_decoder_layers)


FAMILIES: dict[str, FamilySpec] = {
    "bert": FamilySpec(Bert, BertForPreTraining, "mlm"),
    "gpt": FamilySpec(GPT, CausalLM, "clm"),
    "t5": FamilySpec(T5, Seq2SeqLM, "span", layer_shapes=False, encoder_decoder=True),
}
assert {k: v.objective for k, v in FAMILIES.items()} == _FAMILY_NAMES, \
    "models/config.py FAMILIES must list the registry's families and their objectives"


def family(cfg: ModelConfig) -> FamilySpec:
    if cfg.family not in FAMILIES:
        raise ValueError(f"unknown model family {cfg.family!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[cfg.family]


def build_model(cfg: ModelConfig) -> nn.Module:
    """The pretraining model of the config's family (the body with its LM head(s))."""
    return family(cfg).pretraining(cfg)


def build_body(cfg: ModelConfig) -> Body:
    """The bare body of the config's family."""
    return family(cfg).body(cfg)


def body_of(model: nn.Module) -> Body:
    """The body of a model: the model itself, or what it wraps as `.body` (an LM or a
    task head, possibly around another wrapper such as DDP's `.module`)."""
    seen = model
    for _ in range(4):
        if isinstance(seen, Body):
            return seen
        seen = getattr(seen, "body", None) or getattr(seen, "module", None)
        if seen is None:
            break
    raise TypeError(f"{type(model).__name__} has no Transformer body (a zerolm Bert or GPT, "
                    "directly or as `.body`)")
