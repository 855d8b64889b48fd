"""The model config shared by both families (encoder and decoder).

One dataclass keeps configs, checkpoints and conversion simple: each field says which
family uses it. Only the standard library is imported here (models/ depends on torch
and the standard library alone).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

Family = Literal["bert", "gpt"]


@dataclass
class ModelConfig:
    family: Family = "gpt"  # "bert": post-LN bidirectional encoder; "gpt": pre-LN causal decoder
    vocab_size: int = 8192  # rows of the token embedding (and of the tied LM head)
    d_model: int = 256  # hidden size: width of every residual stream vector
    n_layers: int = 4  # number of Transformer blocks
    n_heads: int = 4  # attention heads; d_model must divide evenly (head size d_model // n_heads)
    d_ff: int = 1024  # inner width of the feed-forward network (4 * d_model in BERT/GPT-2)
    max_seq_len: int = 512  # longest sequence: rows of the learned position table, KV cache size
    position: Literal["learned", "sinusoidal"] = "learned"  # sinusoidal: fixed, no parameters
    type_vocab_size: int = 2  # bert: segment (token-type) embeddings; 0 disables them
    activation: Literal["gelu", "gelu_tanh", "relu"] = "gelu"  # gelu_tanh is GPT-2's "gelu_new"
    norm_eps: float = 1e-12  # LayerNorm epsilon (BERT 1e-12, GPT-2 1e-5)
    bias: bool = True  # biases in linear layers and LayerNorms (nanoGPT trains without)
    dropout: float = 0.1  # dropout on embeddings, residual branches and feed-forward
    attn_dropout: float = 0.1  # dropout on attention probabilities
    tie_embeddings: bool = True  # LM head shares the token embedding matrix (fewer params, better LM)
    init_std: float = 0.02  # std of the normal init of weights
    pooler: bool = True  # bert: tanh dense layer on [CLS] (used by NSP/SOP and classification)
    sentence_head: bool = False  # bert: a 2-way head on the pooled output for NSP / SOP
    pad_id: int = 0  # padding token id (used for embeddings' padding rows and batching)

    def __post_init__(self) -> None:
        if self.family not in ("bert", "gpt"):
            raise ValueError(f"model.family must be 'bert' or 'gpt', got {self.family!r}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})"
            )
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.position not in ("learned", "sinusoidal"):
            raise ValueError(f"model.position must be 'learned' or 'sinusoidal', got {self.position!r}")
        if self.activation not in ("gelu", "gelu_tanh", "relu"):
            raise ValueError(f"model.activation must be gelu, gelu_tanh or relu, got {self.activation!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        return cls(**d)
