"""Knowledge distillation: losses and helpers that work on finished models from the outside
(their logits, hidden states and attention maps, as `zerolm.models.BodyOutput` returns them).
"""

from zerolm.distill.losses import (
    LayerMap,
    attention_kl,
    attention_mse,
    chunked_lm_kl,
    hidden_mse,
    layer_map,
    minilm_relation_loss,
    relation_kl,
    soft_target_loss,
    split_values,
    value_relation_kl,
)

__all__ = [
    "LayerMap",
    "attention_kl",
    "attention_mse",
    "chunked_lm_kl",
    "hidden_mse",
    "layer_map",
    "minilm_relation_loss",
    "relation_kl",
    "soft_target_loss",
    "split_values",
    "value_relation_kl",
]
