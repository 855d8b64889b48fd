"""The model config shared by every family (encoder, decoder).

One dataclass keeps configs, checkpoints and conversion simple: each field says which
family uses it. Per-layer shapes (`layers`) let a model whose heads or feed-forward
neurons were pruned, or whose linears were factorised, be described, saved and rebuilt
exactly. Only the standard library is imported here (models/ depends on torch and the
standard library alone).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

Family = Literal["bert", "gpt", "t5"]
# each family and the pretraining task that trains it (the registry in zerolm.models maps
# each to its classes; configs check a pretraining run against this without importing torch)
FAMILIES = {"bert": "mlm", "gpt": "clm", "t5": "span"}

# the linears of a block that a low-rank factorisation may replace (keys of LayerShape.ranks)
FACTORISABLE = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.fc_in", "mlp.fc_gate",
                "mlp.fc_out", "cross_attn.q_proj", "cross_attn.k_proj", "cross_attn.v_proj", "cross_attn.o_proj")


@dataclass
class LayerShape:
    """The shape of one block where it differs from the model-wide defaults (None: default)."""

    n_heads: int | None = None  # attention heads of this block (0: the block has no attention)
    head_dim: int | None = None  # size of each head (q/k/v project D -> n_heads * head_dim)
    d_ff: int | None = None  # feed-forward width (0: the block has no feed-forward)
    ranks: dict[str, int] = field(default_factory=dict)  # factorised linears: name -> rank r

    def __post_init__(self) -> None:
        for name in ("n_heads", "head_dim", "d_ff"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < (1 if name == "head_dim" else 0)):
                raise ValueError(f"model.layers: {name} must be a {'positive' if name == 'head_dim' else 'non-negative'}"
                                 f" integer, got {v!r}")
        for name, r in self.ranks.items():
            if name not in FACTORISABLE:
                raise ValueError(f"model.layers: ranks names {name!r}; factorisable linears are "
                                 f"{', '.join(FACTORISABLE)}")
            if not isinstance(r, int) or r < 1:
                raise ValueError(f"model.layers: rank of {name} must be a positive integer, got {r!r}")


@dataclass
class ModelConfig:
    family: Family = "gpt"  # "bert": post-LN encoder; "gpt": pre-LN causal decoder; "t5": encoder-decoder
    vocab_size: int = 8192  # rows of the token embedding (and of the tied LM head)
    d_model: int = 256  # hidden size: width of every residual stream vector
    n_layers: int = 4  # number of Transformer blocks (t5: of the encoder)
    n_decoder_layers: int = 0  # t5: decoder blocks; 0: as many as the encoder
    n_heads: int = 4  # attention heads per block (default of every block)
    head_dim: int = 0  # size of each head; 0: d_model // n_heads (d_model must divide evenly)
    d_ff: int = 1024  # inner width of the feed-forward network (4 * d_model in BERT/GPT-2)
    layers: list[LayerShape] = field(default_factory=list)  # per-block shapes; empty: all default
    max_seq_len: int = 512  # longest sequence: rows of the learned position table, KV cache size
    position: Literal["learned", "sinusoidal"] = "learned"  # sinusoidal: fixed, no parameters
    type_vocab_size: int = 2  # bert: segment (token-type) embeddings; 0 disables them
    activation: Literal["gelu", "gelu_tanh", "relu"] = "gelu"  # gelu_tanh is GPT-2's "gelu_new"
    gated_ffn: bool = False  # feed-forward fc_out(act(fc_gate x) * fc_in x), as T5 v1.1's gated-GELU
    rel_buckets: int = 32  # t5: relative-position buckets of the attention bias (half per direction in the encoder)
    rel_max_distance: int = 128  # t5: distances from here on share the last bucket
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
        if self.family not in FAMILIES:
            raise ValueError(f"model.family {self.family!r} is not a known family; known: "
                             f"{', '.join(FAMILIES)}")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.head_dim < 0:
            raise ValueError(f"model.head_dim must be >= 0 (0: d_model // n_heads), got {self.head_dim}")
        if not self.head_dim and self.d_model % self.n_heads:
            raise ValueError(
                f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads}), "
                "or set model.head_dim"
            )
        self.layers = [LayerShape(**s) if isinstance(s, dict) else s for s in self.layers]
        if self.layers and len(self.layers) != self.n_layers:
            raise ValueError(f"model.layers lists {len(self.layers)} shapes for model.n_layers "
                             f"{self.n_layers}: give one per layer (or none)")
        if self.position not in ("learned", "sinusoidal"):
            raise ValueError(f"model.position must be 'learned' or 'sinusoidal', got {self.position!r}")
        if self.rel_buckets < 4 or self.rel_max_distance <= self.rel_buckets // 2:
            raise ValueError(f"model.rel_buckets must be >= 4 and model.rel_max_distance > rel_buckets // 2 "
                             f"(T5: 32 and 128), got {self.rel_buckets} and {self.rel_max_distance}")
        if self.family == "t5" and self.bias:
            raise ValueError("model.bias: the t5 family has no biases (as T5's checkpoints); set model.bias: false")
        if self.n_decoder_layers < 0:
            raise ValueError(f"model.n_decoder_layers must be >= 0 (0: n_layers), got {self.n_decoder_layers}")
        if self.activation not in ("gelu", "gelu_tanh", "relu"):
            raise ValueError(f"model.activation must be gelu, gelu_tanh or relu, got {self.activation!r}")

    @property
    def decoder_layers(self) -> int:
        """t5: blocks of the decoder."""
        return self.n_decoder_layers or self.n_layers

    @property
    def default_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    def layer(self, i: int) -> LayerShape:
        """Block i's shape with every default filled in."""
        s = self.layers[i] if self.layers else LayerShape()
        return LayerShape(n_heads=self.n_heads if s.n_heads is None else s.n_heads,
                          head_dim=s.head_dim or self.default_head_dim,
                          d_ff=self.d_ff if s.d_ff is None else s.d_ff, ranks=dict(s.ranks))

    @property
    def uniform(self) -> bool:
        """Every block has the model-wide shape, heads span d_model and nothing is
        factorised: what the BERT and GPT-2 formats of other libraries can express."""
        plain = LayerShape(self.n_heads, self.d_model // self.n_heads, self.d_ff, {})
        return (self.d_model % self.n_heads == 0
                and all(self.layer(i) == plain for i in range(self.n_layers)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.layers:
            d.pop("layers")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        return cls(**d)
