"""Hugging Face checkpoints in and out: BERT, GPT-2 and T5 families.

Import reads a local HF model directory (config.json + model.safetensors, or
pytorch_model.bin read with weights_only=True) into zerolm's BertForPreTraining / GPT /
Seq2SeqLM; export writes a directory that `transformers` loads as BertModel /
BertForMaskedLM / BertForPreTraining, GPT2LMHeadModel or T5ForConditionalGeneration with
identical outputs. Tokenizer files are carried over. Neither direction needs
`transformers` installed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from zerolm.errors import CheckpointError
from zerolm.models import ModelConfig, build_model

log = logging.getLogger(__name__)

_ACT_IN = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
           "gelu_fast": "gelu_tanh", "relu": "relu"}
_ACT_OUT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


def is_hf_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / "config.json").is_file() and not (p / "model_config.json").is_file()


# ------------------------------------------------------------------ configs


def config_from_hf(hf: dict, source: Path) -> ModelConfig:
    mt = hf.get("model_type")
    try:
        if mt == "bert":
            if hf.get("position_embedding_type", "absolute") != "absolute":
                raise CheckpointError(f"{source}: position_embedding_type "
                                      f"{hf['position_embedding_type']!r} is not supported (only absolute)")
            return ModelConfig(
                family="bert", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
                n_layers=hf["num_hidden_layers"], n_heads=hf["num_attention_heads"],
                d_ff=hf["intermediate_size"], max_seq_len=hf.get("max_position_embeddings", 512),
                type_vocab_size=hf.get("type_vocab_size", 2), activation=_act(hf.get("hidden_act", "gelu"), source),
                norm_eps=hf.get("layer_norm_eps", 1e-12), dropout=hf.get("hidden_dropout_prob", 0.1),
                attn_dropout=hf.get("attention_probs_dropout_prob", 0.1),
                init_std=hf.get("initializer_range", 0.02), pad_id=hf.get("pad_token_id") or 0,
                tie_embeddings=hf.get("tie_word_embeddings", True))
        if mt == "gpt2":
            d = hf["n_embd"]
            return ModelConfig(
                family="gpt", vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["n_layer"],
                n_heads=hf["n_head"], d_ff=hf.get("n_inner") or 4 * d, max_seq_len=hf["n_positions"],
                activation=_act(hf.get("activation_function", "gelu_new"), source),
                norm_eps=hf.get("layer_norm_epsilon", 1e-5), dropout=hf.get("resid_pdrop", 0.1),
                attn_dropout=hf.get("attn_pdrop", 0.1), init_std=hf.get("initializer_range", 0.02),
                tie_embeddings=hf.get("tie_word_embeddings", True), type_vocab_size=0, pooler=False)
        if mt in ("t5", "mt5"):  # mT5 is T5 v1.1 with a larger vocabulary
            return _t5_config(hf, source)
    except KeyError as e:
        raise CheckpointError(f"{source}: config.json lacks {e.args[0]!r}") from None
    archs = hf.get("architectures") or []
    raise CheckpointError(f"{source}: unsupported architecture model_type={mt!r} {archs}; zerolm "
                          f"converts the BERT ('bert'), GPT-2 ('gpt2') and T5 ('t5', 'mt5') families")


def _act(name: str, source: Path) -> str:
    if name not in _ACT_IN:
        raise CheckpointError(f"{source}: unsupported activation {name!r} (supported: {sorted(_ACT_IN)})")
    return _ACT_IN[name]


def _t5_config(hf: dict, source: Path) -> ModelConfig:
    # feed_forward_proj is "ACT" or "gated-ACT"; "gated-gelu" (T5 v1.1) means the tanh GELU
    proj = hf.get("feed_forward_proj", "relu")
    parts = proj.split("-")
    gated = parts[0] == "gated"
    if len(parts) > 2 or (len(parts) == 2 and not gated):
        raise CheckpointError(f"{source}: feed_forward_proj {proj!r} is neither 'ACT' nor 'gated-ACT'")
    act = "gelu_new" if proj == "gated-gelu" else parts[-1]
    pad = hf.get("pad_token_id")
    pad = 0 if pad is None else pad
    start = hf.get("decoder_start_token_id")
    if start is not None and start != pad:
        raise CheckpointError(f"{source}: decoder_start_token_id {start} differs from pad_token_id {pad}; "
                              "zerolm's T5 starts decoding from the pad token")
    # `tie_word_embeddings` has always meant "scale the decoder output by d_model**-0.5"
    # (T5 v1.0) or not (v1.1); transformers 5 keeps that meaning as `scale_decoder_outputs`
    # and writes tie_word_embeddings true for both. Whether the head shares the embedding
    # matrix is settled by the weights (load_hf).
    scaled = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True))
    return ModelConfig(
        family="t5", vocab_size=hf["vocab_size"], d_model=hf["d_model"], n_layers=hf["num_layers"],
        n_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"], n_heads=hf["num_heads"],
        head_dim=hf["d_kv"], d_ff=hf["d_ff"], max_seq_len=hf.get("n_positions") or 512,
        activation=_act(act, source), gated_ffn=gated,
        rel_buckets=hf.get("relative_attention_num_buckets", 32),
        rel_max_distance=hf.get("relative_attention_max_distance", 128),
        norm_eps=hf.get("layer_norm_epsilon", 1e-6), bias=False, dropout=hf.get("dropout_rate", 0.1),
        attn_dropout=hf.get("dropout_rate", 0.1), tie_embeddings=bool(scaled),
        init_std=0.02 * hf.get("initializer_factor", 1.0), pad_id=pad)


def _t5_ff_proj(cfg: ModelConfig) -> str:
    """HF's feed_forward_proj of a zerolm t5 config."""
    if not cfg.gated_ffn:
        return _ACT_OUT[cfg.activation]
    # "gated-gelu" is the tanh GELU in HF; the exact one is spelled by its Python name
    return {"gelu_tanh": "gated-gelu", "gelu": "gated-gelu_python", "relu": "gated-relu"}[cfg.activation]


def config_to_hf(cfg: ModelConfig, eos_id: int | None = None) -> dict:
    """HF config.json of a zerolm config (`eos_id`, from the tokenizer, ends T5's generation)."""
    if cfg.family == "t5":
        return {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
                "vocab_size": cfg.vocab_size, "d_model": cfg.d_model, "d_kv": cfg.default_head_dim,
                "d_ff": cfg.d_ff, "num_layers": cfg.n_layers, "num_decoder_layers": cfg.decoder_layers,
                "num_heads": cfg.n_heads, "relative_attention_num_buckets": cfg.rel_buckets,
                "relative_attention_max_distance": cfg.rel_max_distance, "feed_forward_proj": _t5_ff_proj(cfg),
                "layer_norm_epsilon": cfg.norm_eps, "dropout_rate": cfg.dropout,
                "initializer_factor": cfg.init_std / 0.02, "tie_word_embeddings": cfg.tie_embeddings,
                "is_encoder_decoder": True, "n_positions": cfg.max_seq_len, "pad_token_id": cfg.pad_id,
                "decoder_start_token_id": cfg.pad_id, "eos_token_id": eos_id}
    if cfg.family == "bert":
        return {"architectures": ["BertForPreTraining" if cfg.sentence_head else "BertForMaskedLM"],
                "model_type": "bert", "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
                "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
                "intermediate_size": cfg.d_ff, "max_position_embeddings": cfg.max_seq_len,
                "type_vocab_size": max(cfg.type_vocab_size, 1), "hidden_act": _ACT_OUT[cfg.activation],
                "layer_norm_eps": cfg.norm_eps, "hidden_dropout_prob": cfg.dropout,
                "attention_probs_dropout_prob": cfg.attn_dropout, "initializer_range": cfg.init_std,
                "pad_token_id": cfg.pad_id, "position_embedding_type": "absolute",
                "tie_word_embeddings": cfg.tie_embeddings}
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
            "n_embd": cfg.d_model, "n_layer": cfg.n_layers, "n_head": cfg.n_heads, "n_inner": cfg.d_ff,
            "n_positions": cfg.max_seq_len, "n_ctx": cfg.max_seq_len,
            "activation_function": _ACT_OUT[cfg.activation], "layer_norm_epsilon": cfg.norm_eps,
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.attn_dropout,
            "initializer_range": cfg.init_std, "tie_word_embeddings": cfg.tie_embeddings,
            "bos_token_id": None, "eos_token_id": None}


# ----------------------------------------------------------------- key maps


class _Tracked(dict):
    """A dict that remembers which checkpoint key each entry came from (for errors)."""

    def __init__(self, origin: dict[str, str]):
        super().__init__()
        self.origin, self.source = origin, ""

    def __setitem__(self, key, value):
        self.origin[key] = self.source
        super().__setitem__(key, value)


_BERT_LAYER = {
    "attention.self.query": "attn.q_proj", "attention.self.key": "attn.k_proj",
    "attention.self.value": "attn.v_proj", "attention.output.dense": "attn.o_proj",
    "attention.output.LayerNorm": "attn_norm", "intermediate.dense": "mlp.fc_in",
    "output.dense": "mlp.fc_out", "output.LayerNorm": "mlp_norm",
}
_BERT_TOP = {
    "embeddings.word_embeddings": "body.tok_emb", "embeddings.position_embeddings": "body.pos_emb",
    "embeddings.token_type_embeddings": "body.type_emb", "embeddings.LayerNorm": "body.emb_norm",
    "pooler.dense": "body.pooler", "cls.predictions.transform.dense": "mlm_head.dense",
    "cls.predictions.transform.LayerNorm": "mlm_head.norm", "cls.predictions.decoder": "lm_head",
    "cls.seq_relationship": "sentence_head",
}
_GPT_LAYER = {"ln_1": "attn_norm", "attn.c_proj": "attn.o_proj", "ln_2": "mlp_norm",
              "mlp.c_fc": "mlp.fc_in", "mlp.c_proj": "mlp.fc_out"}
_GPT_TOP = {"wte": "body.tok_emb", "wpe": "body.pos_emb", "ln_f": "body.final_norm"}


def _bert_from_hf(sd: dict[str, torch.Tensor], origin: dict[str, str]) -> dict[str, torch.Tensor]:
    out = _Tracked(origin)
    for key, v in sd.items():
        out.source = key
        k = key.removeprefix("bert.")
        k = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", k))  # TF-era names
        if k.endswith("position_ids") or k == "cls.predictions.decoder.bias":
            continue  # a buffer; the decoder bias is the same tensor as cls.predictions.bias
        if k == "cls.predictions.bias":
            out["lm_head.bias"] = v
            continue
        m = re.match(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$", k)
        if m and m.group(2) in _BERT_LAYER:
            out[f"body.blocks.{m.group(1)}.{_BERT_LAYER[m.group(2)]}.{m.group(3)}"] = v
            continue
        m = re.match(r"(.+)\.(weight|bias)$", k)
        if m and m.group(1) in _BERT_TOP:
            out[f"{_BERT_TOP[m.group(1)]}.{m.group(2)}"] = v
            continue
        log.warning("ignoring unknown weight %s", key)
    return out


def _bert_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    inv_layer = {v: k for k, v in _BERT_LAYER.items()}
    inv_top = {v: k for k, v in _BERT_TOP.items()}
    out = {}
    for k, v in sd.items():
        if k == "lm_head.bias":
            out["cls.predictions.bias"] = v
            continue
        m = re.match(r"body\.blocks\.(\d+)\.(.+)\.(weight|bias)$", k)
        if m:
            out[f"bert.encoder.layer.{m.group(1)}.{inv_layer[m.group(2)]}.{m.group(3)}"] = v
            continue
        m = re.match(r"(.+)\.(weight|bias)$", k)
        name = inv_top[m.group(1)]
        out[("bert." + name if not name.startswith("cls.") else name) + "." + m.group(2)] = v
    return out


def _gpt_from_hf(sd: dict[str, torch.Tensor], d: int, origin: dict[str, str]) -> dict[str, torch.Tensor]:
    out = _Tracked(origin)
    for key, v in sd.items():
        out.source = key
        k = key.removeprefix("transformer.")
        if k.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers of old checkpoints
        if k == "lm_head.weight":
            out["lm_head.weight"] = v
            continue
        m = re.match(r"h\.(\d+)\.(.+)\.(weight|bias)$", k)
        if m:
            i, name, kind = m.groups()
            if name == "attn.c_attn":  # Conv1D (D, 3D): q | k | v, stored transposed
                parts = v.split(d, dim=-1)
                for proj, t in zip(("q_proj", "k_proj", "v_proj"), parts):
                    out[f"body.blocks.{i}.attn.{proj}.{kind}"] = t.t().contiguous() if kind == "weight" else t
                continue
            if name in _GPT_LAYER:
                conv = name != "ln_1" and name != "ln_2" and kind == "weight"  # Conv1D weights are (in, out)
                out[f"body.blocks.{i}.{_GPT_LAYER[name]}.{kind}"] = v.t().contiguous() if conv else v
                continue
        m = re.match(r"(.+)\.(weight|bias)$", k)
        if m and m.group(1) in _GPT_TOP:
            out[f"{_GPT_TOP[m.group(1)]}.{m.group(2)}"] = v
            continue
        log.warning("ignoring unknown weight %s", key)
    return out


def _gpt_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    inv_layer = {v: k for k, v in _GPT_LAYER.items()}
    inv_top = {v: k for k, v in _GPT_TOP.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if k == "lm_head.weight":
            out["lm_head.weight"] = v
            continue
        m = re.match(r"body\.blocks\.(\d+)\.(.+)\.(weight|bias)$", k)
        if m:
            i, name, kind = m.groups()
            if name in ("attn.q_proj", "attn.k_proj", "attn.v_proj"):
                qkv.setdefault((i, kind), {})[name] = v
                continue
            conv = name not in ("attn_norm", "mlp_norm") and kind == "weight"
            out[f"transformer.h.{i}.{inv_layer[name]}.{kind}"] = v.t().contiguous() if conv else v
            continue
        m = re.match(r"(.+)\.(weight|bias)$", k)
        out[f"transformer.{inv_top[m.group(1)]}.{m.group(2)}"] = v
    for (i, kind), parts in qkv.items():
        ts = [parts[f"attn.{p}"] for p in ("q_proj", "k_proj", "v_proj")]
        out[f"transformer.h.{i}.attn.c_attn.{kind}"] = (
            torch.cat([t.t() for t in ts], dim=1).contiguous() if kind == "weight" else torch.cat(ts))
    return out


_T5_ATTN = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}
_T5_TOP = {
    "shared": "body.tok_emb", "encoder.final_layer_norm": "body.final_norm",
    "decoder.final_layer_norm": "body.decoder.final_norm", "lm_head": "lm_head",
    # one bias table per stack, kept by its first block and shared by all
    "encoder.block.0.layer.0.SelfAttention.relative_attention_bias": "body.rel_pos",
    "decoder.block.0.layer.0.SelfAttention.relative_attention_bias": "body.decoder.rel_pos",
}
_T5_STACK = {"encoder": "body.blocks", "decoder": "body.decoder.blocks"}


def _t5_layer(decoder: bool, gated: bool) -> dict[str, str]:
    """HF names inside one T5 block -> zerolm names inside the block. HF numbers the
    sublayers: self-attention 0, (decoder) cross-attention 1, feed-forward last."""
    m = {f"layer.0.SelfAttention.{h}": f"attn.{z}" for h, z in _T5_ATTN.items()}
    m["layer.0.layer_norm"] = "attn_norm"
    if decoder:
        m.update({f"layer.1.EncDecAttention.{h}": f"cross_attn.{z}" for h, z in _T5_ATTN.items()})
        m["layer.1.layer_norm"] = "cross_norm"
    ff = f"layer.{2 if decoder else 1}"
    if gated:  # wi_0 is the activated branch, wi_1 the linear one it multiplies
        m.update({f"{ff}.DenseReluDense.wi_0": "mlp.fc_gate", f"{ff}.DenseReluDense.wi_1": "mlp.fc_in"})
    else:
        m[f"{ff}.DenseReluDense.wi"] = "mlp.fc_in"
    m[f"{ff}.DenseReluDense.wo"] = "mlp.fc_out"
    m[f"{ff}.layer_norm"] = "mlp_norm"
    return m


def _t5_from_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig,
                origin: dict[str, str]) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """zerolm weights of an HF T5 state dict, and the config with the head's tying settled."""
    layers = {s: _t5_layer(s == "decoder", cfg.gated_ffn) for s in _T5_STACK}
    out = _Tracked(origin)
    for key, v in sd.items():
        out.source = key
        if key in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
            if "shared.weight" not in sd:  # the same tensor as `shared`, saved under its alias
                out["body.tok_emb.weight"] = v
            continue
        if key == "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight":
            continue  # old checkpoints carry it; cross-attention never uses a position bias
        m = re.match(r"(encoder|decoder)\.block\.(\d+)\.(.+)\.weight$", key)
        if m and m.group(3) in layers[m.group(1)]:
            out[f"{_T5_STACK[m.group(1)]}.{m.group(2)}.{layers[m.group(1)][m.group(3)]}.weight"] = v
            continue
        m = re.match(r"(.+)\.weight$", key)
        if m and m.group(1) in _T5_TOP:
            out[f"{_T5_TOP[m.group(1)]}.weight"] = v
            continue
        log.warning("ignoring unknown weight %s", key)
    emb, head = out.get("body.tok_emb.weight"), out.pop("lm_head.weight", None)
    encoder_only = not any(k.startswith("body.decoder.") for k in out)
    if emb is None or encoder_only:
        return dict(out), cfg  # load_hf names what is missing / leaves the decoder fresh
    if not cfg.tie_embeddings:
        # no head of its own: transformers ties it to the embeddings (without the scale)
        out["lm_head.weight"] = head if head is not None else emb.clone()
    elif head is not None and not torch.equal(head, emb):
        # a scaled output through a head of its own (transformers 5 loads that): fold the
        # scale into an untied head, which zerolm can express
        cfg = dataclasses.replace(cfg, tie_embeddings=False)
        out["lm_head.weight"] = head * cfg.d_model ** -0.5
    return dict(out), cfg


def _t5_to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    inv_stack = {v: k for k, v in _T5_STACK.items()}
    inv_layer = {s: {v: k for k, v in _t5_layer(s == "decoder", cfg.gated_ffn).items()} for s in _T5_STACK}
    inv_top = {v: k for k, v in _T5_TOP.items()}
    out = {}
    for k, v in sd.items():
        m = re.match(r"(body\.blocks|body\.decoder\.blocks)\.(\d+)\.(.+)\.weight$", k)
        if m:
            stack = inv_stack[m.group(1)]
            out[f"{stack}.block.{m.group(2)}.{inv_layer[stack][m.group(3)]}.weight"] = v
            continue
        out[f"{inv_top[k.removesuffix('.weight')]}.weight"] = v
    return out


# ---------------------------------------------------------------- load / export


def read_hf_state_dict(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """Weights of an HF directory: safetensors preferred, `.bin` only with weights_only=True."""
    st = sorted(directory.glob("*.safetensors"))
    if st:
        sd = {}
        for f in st:
            try:
                sd.update(load_file(str(f)))
            except (SafetensorError, OSError) as e:
                raise CheckpointError(f"{f}: unreadable safetensors file ({e})") from None
        return sd, st[0] if len(st) == 1 else directory
    binf = directory / "pytorch_model.bin"
    if binf.is_file():
        try:
            sd = torch.load(binf, map_location="cpu", weights_only=True)
        except Exception as e:  # the unpickler refuses anything that is not plain tensors
            raise CheckpointError(f"{binf}: cannot be read safely with weights_only=True ({e})") from None
        return sd, binf
    raise CheckpointError(f"{directory}: no weight file (expected model.safetensors or pytorch_model.bin)")


def load_hf(directory: str | os.PathLike, device: str | torch.device = "cpu"):
    """(zerolm model, tokenizer or None) from a local Hugging Face model directory."""
    from zerolm.tokenizers import Tokenizer

    directory = Path(directory)
    cfg_path = directory / "config.json"
    try:
        hf_cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: unreadable config ({e})") from None
    raw, weights_file = read_hf_state_dict(directory)
    cfg = config_from_hf(hf_cfg, cfg_path)
    origin: dict[str, str] = {}
    optional = ("mlm_head.", "lm_head.", "sentence_head.")  # heads a checkpoint may lack
    if cfg.family == "bert":
        sd = dict(_bert_from_hf(raw, origin))
        cfg = ModelConfig(**{**cfg.to_dict(), "sentence_head": "sentence_head.weight" in sd,
                             "pooler": "body.pooler.weight" in sd})
    elif cfg.family == "t5":
        sd, cfg = _t5_from_hf(raw, cfg, origin)
        if not any(k.startswith("body.decoder.") for k in sd):
            optional += ("body.decoder.",)  # an encoder-only checkpoint (T5EncoderModel)
    else:
        sd = dict(_gpt_from_hf(raw, cfg.d_model, origin))
    model = build_model(cfg)
    own = model.state_dict()
    for k, v in sd.items():
        if k not in own:
            raise CheckpointError(f"{weights_file}: weight {origin[k]!r} has no place in the model ({k!r})")
        if own[k].shape != v.shape:
            raise CheckpointError(f"{weights_file}: shape mismatch for {origin[k]!r} (zerolm {k!r}): "
                                  f"checkpoint {tuple(v.shape)}, config.json gives {tuple(own[k].shape)}")
    model.load_state_dict(sd, strict=False)
    loaded = set(sd)
    if cfg.tie_embeddings:
        loaded.add("lm_head.weight")
    fresh = sorted(k for k in own if k not in loaded)
    core = [k for k in fresh if not k.startswith(optional)]
    if core:
        raise CheckpointError(f"{weights_file}: missing weights {core[:6]}{'...' if len(core) > 6 else ''}")
    if fresh:  # the LM heads: fine-tuning drops them, pretraining from here trains them
        log.debug("%s: no pretrained weights for %s (freshly initialised)", directory, ", ".join(fresh))
    tok = None
    if (directory / "tokenizer.json").exists() or (directory / "vocab.txt").exists():
        tok = Tokenizer.load(directory)
    return model.to(device).eval(), tok


def untrained_heads(directory: str | os.PathLike) -> list[str]:
    """The pretraining heads a local HF directory has no weights for (a sentence-embedding
    checkpoint such as all-MiniLM-L6-v2 ships the encoder alone): loading it gives them
    fresh random weights, fine for fine-tuning, meaningless for masked-LM predictions."""
    directory = Path(directory)
    try:
        cfg = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    mt = cfg.get("model_type")
    if mt not in ("bert", "t5", "mt5"):
        return []  # GPT-2's LM head is the (always present) token embedding
    names: set[str] = set()
    for f in sorted(directory.glob("*.safetensors")):
        from safetensors import safe_open

        with safe_open(str(f), framework="pt") as fh:
            names |= set(fh.keys())
    if not names:
        return []
    if mt != "bert":
        return [] if any(n.startswith("decoder.") for n in names) else ["decoder (and LM head)"]
    return [] if any(n.startswith("cls.predictions.") for n in names) else ["masked-LM head"]


def export_hf(model, directory: str | os.PathLike, tokenizer=None) -> Path:
    """Write `model` as a Hugging Face directory (config.json + model.safetensors + tokenizer)."""
    from zerolm.atomic import AtomicDir

    cfg: ModelConfig = model.config
    if cfg.family != "t5" and not cfg.uniform:  # (a t5 config has no per-block shapes, nor biases)
        raise CheckpointError(
            "this model has per-layer shapes (pruned heads or feed-forward neurons, a head size "
            "other than d_model / n_heads, or factorised linears), which Hugging Face's BERT and "
            "GPT-2 configs cannot express; keep it as a zerolm model directory (or export to ONNX)")
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if not cfg.bias and cfg.family != "t5":
        # HF's BERT / GPT-2 always have biases: write zeros (the same function) so the export
        # loads without a table of "newly initialised" weights
        full = type(model)(dataclasses.replace(cfg, bias=True)).state_dict()
        for k, v in full.items():
            if k.endswith(".bias") and k not in sd:
                sd[k] = torch.zeros_like(v)
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)  # HF re-ties it from the word embeddings
    if cfg.family == "t5":
        hf_sd = _t5_to_hf(sd, cfg)
    else:
        hf_sd = _bert_to_hf(sd) if cfg.family == "bert" else _gpt_to_hf(sd)
    directory = Path(directory)
    with AtomicDir(directory) as tmp:
        save_file(hf_sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        eos = tokenizer.eos_id if tokenizer is not None else None
        (tmp / "config.json").write_text(json.dumps(config_to_hf(cfg, eos), indent=2))
        if tokenizer is not None:
            tokenizer.save(tmp)
    return directory
