"""The interface every family's body answers, so heads, tasks, embeddings and
transforms (prompt / prefix tuning, distillation, pruning) never ask which family a
model is.

A body maps token ids (or their embeddings) to contextual hidden states. LM heads
(`BertForPreTraining`, `CausalLM`) and task heads (`zerolm.models.heads`) wrap a body
under the attribute name `body`.

Shape letters: B batch, T tokens, S keys (prefix + past + T), D d_model, H heads,
Dh head size, P prefix positions, L layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from zerolm.models.config import ModelConfig
from zerolm.models.layers import KVCache

# per-layer prefix keys and values: one (keys, values) pair of (B or 1, H_l, P, Dh_l) per block
Prefix = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class BodyOutput:
    last_hidden_state: torch.Tensor  # (B, T, D): what heads read
    # with output_hidden_states: L + 1 tensors (B, T, D): the embedding output, then each
    # block's output (the last one after the final norm, where the family has one)
    hidden_states: tuple[torch.Tensor, ...] | None = None
    # with output_attentions: L tensors (B, H_l, T, S) of attention probabilities
    attentions: tuple[torch.Tensor, ...] | None = None


class Body(nn.Module):
    """Base class of the encoder and decoder bodies. Subclasses define `forward` with the
    signature below, and `pool`.

        forward(input_ids=None, *, inputs_embeds=None, attention_mask=None,
                token_type_ids=None, position_ids=None, cache=None, prefix=None,
                output_hidden_states=False, output_attentions=False) -> BodyOutput

    - `input_ids` (B, T) or `inputs_embeds` (B, T, D) (the token embeddings, before
      positions are added: what `embed` returns), exactly one of them;
    - `attention_mask` (B, S') 1 = real token, 0 = padding, over past + current tokens;
    - `token_type_ids` (B, T) segments (ignored by a body without type embeddings);
    - `position_ids` (B or 1, T), default past .. past + T - 1;
    - `cache` a KVCache (decoders) advanced by T;
    - `prefix` per-layer keys and values that every query also attends to;
    - the two flags return every layer's hidden states and attention probabilities (the
      latter through an explicit, slower attention path, only when asked).
    """

    config: ModelConfig
    causal: bool = False  # True: a token sees only itself and the tokens before it

    tok_emb: nn.Embedding
    blocks: nn.ModuleList

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, T, D): what `inputs_embeds` stands in for."""
        return self.tok_emb(input_ids)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The family's sentence vector (B, D) from final hidden states (B, T, D)."""
        raise NotImplementedError

    def layer_shapes(self) -> list[tuple[int, int]]:
        """(heads, head size) of every block, as the config states them."""
        return [(self.config.layer(i).n_heads, self.config.layer(i).head_dim)
                for i in range(self.config.n_layers)]

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for `batch` rows of up to `max_len` positions."""
        p = self.tok_emb.weight
        return KVCache(self.layer_shapes(), batch, max_len or self.config.max_seq_len,
                       device=p.device, dtype=p.dtype)

    # ------------------------------------------------------------ shared helpers
    def _inputs(self, input_ids, inputs_embeds) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        return self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, D)


def last_real_index(attention_mask: torch.Tensor | None, B: int, T: int, device) -> torch.Tensor:
    """(B,) index of each row's last real token, for left or right padding alike."""
    if attention_mask is None:
        return torch.full((B,), T - 1, device=device, dtype=torch.long)
    m = attention_mask[:, -T:].long()
    return T - 1 - m.flip(1).argmax(1)


def reserved_positions(model: nn.Module) -> int:
    """Input positions that modules of `model` take from max_seq_len. A module declares
    them as an int attribute `reserved_positions` (a soft prompt takes its length)."""
    return sum(int(getattr(m, "reserved_positions", 0)) for m in model.modules())


def input_room(model: nn.Module) -> int:
    """Positions left for tokens: max_seq_len less the reserved positions."""
    return model.config.max_seq_len - reserved_positions(model)
