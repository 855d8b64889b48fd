"""Export a finished model to ONNX: an encoder with its task head (classifier logits,
tagger emissions) or alone (last hidden state), a causal LM with KV-cache inputs and
outputs, or an encoder-decoder LM (T5, pretrained or a fine-tuned seq2seq model) as three
graphs; batch and sequence axes stay dynamic. The export is checked against PyTorch at
several (batch, length) shapes, batch 1 and length 1 among them, and fails, leaving no
directory behind, when the outputs differ by more than `atol`. `int8=True` adds an
onnxruntime dynamically quantized copy, checked for agreeing predictions.

Exporter: the TorchScript one (`dynamo=False`). torch 2.13 defaults to the dynamo
exporter, which runs `torch.export`; that refuses our bodies, which skip the attention
mask when nothing is padded (`bool(attention_mask.all())` is a data-dependent branch:
GuardOnDataDependentSymNode), and would need model code written for it. Tracing records
the branch its inputs take, so we trace with padded inputs (the graph always applies the
mask, which is exact without padding too) and keep sizes symbolic (traced `x.shape`), then
let the parity check below prove the graph right at other shapes.

The directory (see `zerolm.export.runtime`, which runs it):
    model.onnx          the graph (fp32)
    model.int8.onnx     with int8=True: weights int8, activations quantized on the fly
    (an encoder-decoder, kind seq2seq_lm, has three graphs in their place, each also
    .int8.onnx with int8=True:
    encoder.onnx        (input_ids, attention_mask) -> encoder_states (B, S, D)
    memory.onnx         encoder_states -> cross.{i}.key / value (B, H, S, Dh) of every
                        decoder layer: computed once per source, not once per step
    decoder.onnx        (decoder_input_ids (B, T), encoder_attention_mask (B, S), cross.*,
                        past.{i}.key / value (B, H, P, Dh)) -> (logits (B, T, V),
                        present.{i}.key / value (B, H, P + T, Dh)); T5's relative position
                        bias depends on P, which the trace keeps symbolic (checked at
                        several P, one past rel_max_distance))
    onnx.json           kind, files, inputs and outputs, the parity and int8 checks
    model_config.json   the model's config (per-layer shapes for the cache)
    task.json           a fine-tuned model's task (labels, columns, max length)
    crf.json            a CRF tagger's transition / start / end scores
    tokenizer/

Shape letters: B batch, T tokens, P past tokens, S = P + T (an encoder-decoder's: source
tokens), C classes or tags, V vocabulary, D d_model, H heads, Dh head size.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from zerolm.atomic import AtomicDir
from zerolm.errors import ConfigError, ZeroLMError
from zerolm.export.runtime import (
    CRF_FILE,
    FORMAT,
    GRAPH_FILES,
    MANIFEST,
    SEQ2SEQ_FILES,
    OnnxCache,
    OnnxSeq2SeqLM,
    session,
)
from zerolm.models import body_of, family
from zerolm.models.t5 import Seq2SeqCache

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17  # LayerNormalization is a single op from 17 on; onnxruntime >= 1.14 runs it
MIN_OPSET = 14  # the first opset torch exports scaled_dot_product_attention to
ATOL = 1e-4  # largest absolute difference from PyTorch the parity check accepts
MIN_INT8_AGREEMENT = 0.9  # share of predictions the int8 copy must keep


class ExportError(ZeroLMError):
    """The exported graph does not reproduce the PyTorch model (nothing was written)."""


# ------------------------------------------------------------------ graphs to trace
class _TaskGraph(nn.Module):
    """(input_ids, attention_mask, token_type_ids) -> logits (B, C) or emissions (B, T, C)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


class _EncoderGraph(nn.Module):
    """(input_ids, attention_mask, token_type_ids) -> last hidden state (B, T, D)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.body = body_of(model)

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.body(input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids).last_hidden_state


class _PastCache:
    """KVCache's interface over explicit past tensors: `append` concatenates, so the new
    keys and values are graph outputs (a KVCache writes in place into preallocated buffers,
    which a trace cannot hand back). `length` is the traced size of the past: symbolic."""

    def __init__(self, past: list[tuple[torch.Tensor, torch.Tensor]]):
        self.past = past
        self.present: list[tuple[torch.Tensor, torch.Tensor]] = list(past)
        self.length = past[0][0].shape[2] if past else 0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pk, pv = self.past[layer]
        self.present[layer] = (torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2))  # (B, H, P + T, Dh)
        return self.present[layer]


class _CausalLMGraph(nn.Module):
    """(input_ids (B, T), attention_mask (B, P + T), position_ids (B, T), past key / value
    of every layer (B, H, P, Dh)) -> (logits (B, T, V), present key / value (B, H, P + T, Dh))."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.n_layers = model.config.n_layers

    def forward(self, input_ids, attention_mask, position_ids, *past):
        cache = _PastCache([(past[2 * i], past[2 * i + 1]) for i in range(self.n_layers)])
        logits = self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache)
        return (logits, *[t for kv in cache.present for t in kv])


class _Seq2SeqEncoderGraph(nn.Module):
    """(input_ids (B, S), attention_mask (B, S)) -> encoder states (B, S, D)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model.encode(input_ids, attention_mask)


class _MemoryGraph(nn.Module):
    """encoder states (B, S, D) -> cross-attention key, value (B, H, S, Dh) of every decoder
    layer: what the PyTorch decoder computes on its first call and keeps in its cache."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.decoder = model.body.decoder

    def forward(self, encoder_states):
        return tuple(t for kv in self.decoder.memory(encoder_states) for t in kv)


class _DecoderGraph(nn.Module):
    """(decoder_input_ids (B, T), encoder_attention_mask (B, S), cross key / value of every
    layer (B, H, S, Dh), past key / value of every layer (B, H, P, Dh)) -> (logits (B, T, V),
    present key / value (B, H, P + T, Dh)). The model's own forward runs, over a
    Seq2SeqCache whose source keys and values are the inputs and whose self-attention
    cache is a _PastCache, so the head (and T5's rescaling of a tied one) is the model's."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.n_layers = len(model.body.layer_shapes())

    def forward(self, decoder_input_ids, encoder_attention_mask, *kv):
        n = self.n_layers
        cross = [(kv[2 * i], kv[2 * i + 1]) for i in range(n)]
        past = _PastCache([(kv[2 * (n + i)], kv[2 * (n + i) + 1]) for i in range(n)])
        # the mask is applied always: exact without padding too (PyTorch then skips it)
        cache = Seq2SeqCache(past, memory=cross, memory_mask=encoder_attention_mask[:, None, None, :].bool())
        logits = self.model(decoder_input_ids=decoder_input_ids, cache=cache)
        return (logits, *[t for kv in past.present for t in kv])


def graph_kind(model: nn.Module, meta: dict | None) -> str:
    """classify, tag, causal_lm, seq2seq_lm or encoder: what the graph(s) compute."""
    task = (meta or {}).get("task")
    if task in ("classify", "tag"):
        return task
    if family(model.config).objective == "clm" and hasattr(model, "lm_head"):
        return "causal_lm"
    if family(model.config).objective == "span" and hasattr(model, "lm_head") and task in (None, "seq2seq"):
        return "seq2seq_lm"
    if task is None:
        return "encoder"
    raise ConfigError(f"ONNX export covers classifiers, taggers, causal LMs, encoder-decoder LMs (T5, "
                      f"seq2seq) and plain encoders, not task {task!r}")


def _past_names(n_layers: int, which: str) -> list[str]:
    return [f"{which}.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]


# ------------------------------------------------------------------ check inputs
def _padded(rng: np.random.Generator, B: int, T: int, left: bool) -> np.ndarray:
    """A mask (B, T) whose rows after the first have random lengths (padding on one side)."""
    mask = np.ones((B, T), dtype=np.int64)
    for b in range(1, B):
        n = int(rng.integers(1, T + 1))
        if left:
            mask[b, : T - n] = 0
        else:
            mask[b, n:] = 0
    return mask


def encoder_cases(config, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Inputs at (batch, length) (1, 1), (1, 7), (3, 12) and (8, 33) (lengths capped at
    max_seq_len), padded on the right, a second segment where the model has one."""
    rng = np.random.default_rng(seed)
    L = config.max_seq_len
    cases = []
    for B, T in [(1, 1), (1, min(7, L)), (3, min(12, L)), (8, min(33, L))]:
        ids = rng.integers(0, config.vocab_size, (B, T), dtype=np.int64)
        mask = _padded(rng, B, T, left=False)
        types = np.zeros((B, T), dtype=np.int64)
        if config.type_vocab_size > 1 and T > 2:
            types[1:, T // 2:] = 1
        cases.append({"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": types})
    return cases


def lm_cases(config, seed: int = 0) -> list[tuple[int, dict[str, np.ndarray]]]:
    """(past length P, inputs of P + T tokens) at (B, T, P) (1, 1, 0), (1, 7, 0), (3, 5, 0),
    (1, 1, 5), (3, 1, 6), (2, 3, 4): the full forward, and decoding after a cached prefix;
    rows after the first are left-padded, as generation pads prompts."""
    rng = np.random.default_rng(seed)
    L = config.max_seq_len
    cases = []
    for B, T, P in [(1, 1, 0), (1, 7, 0), (3, 5, 0), (1, 1, 5), (3, 1, 6), (2, 3, 4)]:
        T, P = min(T, L), min(P, max(L - T, 0))
        ids = rng.integers(0, config.vocab_size, (B, P + T), dtype=np.int64)
        mask = _padded(rng, B, P + T, left=True)
        cases.append((P, {"input_ids": ids, "attention_mask": mask,
                          "position_ids": np.clip(mask.cumsum(1) - 1, 0, None)}))
    return cases


def seq2seq_cases(config, seed: int = 0) -> list[tuple[int, dict[str, np.ndarray]]]:
    """(past length P, inputs with P + T target tokens) at (B, S, T, P) (1, 1, 1, 0),
    (1, 7, 5, 0), (3, 12, 1, 5), (2, 9, 3, 4), (1, 1, 1, 9) and (4, 6, 1, rel_max_distance
    + 3): the full forward, and decoding after a cached target prefix, the last past
    beyond the relative position bias's farthest bucket (the bias depends on P); sources
    right-padded, as batched sources are."""
    rng = np.random.default_rng(seed)
    L = config.max_seq_len
    cases = []
    for B, S, T, P in [(1, 1, 1, 0), (1, 7, 5, 0), (3, 12, 1, 5), (2, 9, 3, 4), (1, 1, 1, 9),
                       (4, 6, 1, config.rel_max_distance + 3)]:
        S, T = min(S, L), min(T, L)
        P = min(P, max(L - T, 0))
        mask = _padded(rng, B, S, left=False)
        ids = rng.integers(0, config.vocab_size, (B, S), dtype=np.int64) * mask
        dec = rng.integers(0, config.vocab_size, (B, P + T), dtype=np.int64)
        dec[:, 0] = config.pad_id  # the start token
        cases.append((P, {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec}))
    return cases


# ------------------------------------------------------------------ reference and graph outputs
def _torch_encoder(graph: nn.Module, case: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return graph(*(torch.from_numpy(case[k]) for k in ("input_ids", "attention_mask",
                                                           "token_type_ids"))).float().numpy()


def _torch_lm(model: nn.Module, case: dict[str, np.ndarray]) -> np.ndarray:
    """Logits (B, P + T, V) of the whole sequence in one uncached forward."""
    with torch.no_grad():
        return model(torch.from_numpy(case["input_ids"]), attention_mask=torch.from_numpy(case["attention_mask"]),
                     position_ids=torch.from_numpy(case["position_ids"])).float().numpy()


def onnx_lm(sess, config, P: int, case: dict[str, np.ndarray]) -> np.ndarray:
    """Logits (B, P + T, V) through the graph: the first P tokens, then the rest with the
    keys and values of the first P coming back in as the past."""
    ids, mask, pos = case["input_ids"], case["attention_mask"], case["position_ids"]
    B = ids.shape[0]
    cache = OnnxCache([(config.layer(i).n_heads, config.layer(i).head_dim) for i in range(config.n_layers)],
                      B, config.max_seq_len)
    out = []
    for lo, hi in ([(0, P)] if P else []) + [(P, ids.shape[1])]:
        feed = {"input_ids": ids[:, lo:hi], "attention_mask": mask[:, :hi], "position_ids": pos[:, lo:hi]}
        for i in range(config.n_layers):
            feed[f"past.{i}.key"], feed[f"past.{i}.value"] = cache.k[i], cache.v[i]
        logits, *present = sess.run(None, feed)
        cache.k, cache.v = present[0::2], present[1::2]
        out.append(logits)
    return np.concatenate(out, axis=1)


def _torch_seq2seq(model: nn.Module, case: dict[str, np.ndarray]) -> np.ndarray:
    """Logits (B, P + T, V) of every target position in one uncached forward."""
    with torch.no_grad():
        return model(torch.from_numpy(case["input_ids"]), attention_mask=torch.from_numpy(case["attention_mask"]),
                     decoder_input_ids=torch.from_numpy(case["decoder_input_ids"])).float().numpy()


def onnx_seq2seq(runner: OnnxSeq2SeqLM, P: int, case: dict[str, np.ndarray]) -> np.ndarray:
    """Logits (B, P + T, V) through the graphs, as generation runs them: encoder, then the
    first P target tokens, then the rest with the keys and values of the first P as the
    past (without a past: one uncached call)."""
    ids, mask, dec = case["input_ids"], case["attention_mask"], case["decoder_input_ids"]
    if not P:
        return runner(ids, attention_mask=mask, decoder_input_ids=dec).numpy()
    cache = runner.new_cache(len(ids), dec.shape[1])
    enc = runner.encode(ids, mask)
    first = runner(decoder_input_ids=dec[:, :P], encoder_states=enc, attention_mask=mask, cache=cache)
    rest = runner(decoder_input_ids=dec[:, P:], cache=cache)
    return torch.cat([first, rest], 1).numpy()


def _run_encoder(sess, case: dict[str, np.ndarray]) -> np.ndarray:
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in case.items() if k in names})[0]


def _compare(kind: str, model, graph, config, sess) -> tuple[list[dict], list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Per-case shapes and max abs differences, and (reference, graph output, real-token
    mask) for the int8 agreement. `sess` runs the graph: an onnxruntime session, or for
    seq2seq_lm the runtime's OnnxSeq2SeqLM over the three sessions."""
    rows, pairs = [], []
    if kind == "seq2seq_lm":
        for P, case in seq2seq_cases(config):
            ref, got = _torch_seq2seq(model, case), onnx_seq2seq(sess, P, case)
            B, S = case["input_ids"].shape
            rows.append({"batch": B, "source": S, "length": case["decoder_input_ids"].shape[1] - P, "past": P,
                         "max_abs_diff": float(np.abs(ref - got).max())})
            pairs.append((ref, got, np.ones(ref.shape[:2], bool)))
    elif kind == "causal_lm":
        for P, case in lm_cases(config):
            ref, got = _torch_lm(model, case), onnx_lm(sess, config, P, case)
            B, S = case["input_ids"].shape
            rows.append({"batch": B, "length": S - P, "past": P, "max_abs_diff": float(np.abs(ref - got).max())})
            pairs.append((ref, got, case["attention_mask"].astype(bool)))
    else:
        for case in encoder_cases(config):
            ref, got = _torch_encoder(graph, case), _run_encoder(sess, case)
            B, T = case["input_ids"].shape
            rows.append({"batch": B, "length": T, "max_abs_diff": float(np.abs(ref - got).max())})
            pairs.append((ref, got, np.ones(B, bool) if kind == "classify" else case["attention_mask"].astype(bool)))
    return rows, pairs


def agreement(kind: str, pairs) -> float:
    """Share of predictions a graph keeps: the class of each row (classify), the tag or
    next token at each real token (tag, causal_lm, seq2seq_lm); for an encoder, rows whose mean-pooled
    sentence vector keeps a cosine similarity >= 0.95 (int8 MiniLM: about 0.99)."""
    same, total = 0, 0
    for ref, got, keep in pairs:
        if kind == "encoder":
            m = keep[:, :, None].astype(np.float32)  # (B, T, 1)
            a, b = (ref * m).sum(1), (got * m).sum(1)  # (B, D), unnormalised means
            cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
            hit, keep = cos >= 0.95, np.ones(len(cos), bool)
        else:
            hit = ref.argmax(-1) == got.argmax(-1)
        same, total = same + int(hit[keep].sum()), total + int(keep.sum())
    return same / max(total, 1)


# ------------------------------------------------------------------ export
def _export_graph(kind: str, model: nn.Module, path: Path, opset: int) -> nn.Module:
    """Trace `model` into `path`; returns the traced wrapper (the PyTorch reference)."""
    cfg = model.config
    L = cfg.max_seq_len
    # padded trace inputs: the bodies apply the attention mask only when something is
    # padded, and the trace keeps the branch it sees (see the module docstring)
    B, T = 2, min(8, L)
    if kind == "causal_lm":
        graph: nn.Module = _CausalLMGraph(model)
        P = min(3, L - T) if L > T else 0
        if P == 0:
            T, P = max(L - 1, 1), min(1, L - 1)
        mask = torch.ones(B, P + T, dtype=torch.long)
        mask[1, 0] = 0
        dtype = next(model.parameters()).dtype
        past = []
        for i in range(cfg.n_layers):
            shape = (B, cfg.layer(i).n_heads, P, cfg.layer(i).head_dim)
            past += [torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)]
        args = (torch.randint(0, cfg.vocab_size, (B, T)), mask, (mask.cumsum(1) - 1).clamp(min=0)[:, P:], *past)
        inputs = ["input_ids", "attention_mask", "position_ids", *_past_names(cfg.n_layers, "past")]
        outputs = ["logits", *_past_names(cfg.n_layers, "present")]
        axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total_sequence"},
                "position_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}
        axes |= {n: {0: "batch", 2: "past_sequence"} for n in inputs[3:]}
        axes |= {n: {0: "batch", 2: "total_sequence"} for n in outputs[1:]}
    else:
        graph = _TaskGraph(model) if kind in ("classify", "tag") else _EncoderGraph(model)
        mask = torch.ones(B, T, dtype=torch.long)
        mask[1, T - 1] = 0
        args = (torch.randint(0, cfg.vocab_size, (B, T)), mask, torch.zeros(B, T, dtype=torch.long))
        inputs = ["input_ids", "attention_mask", "token_type_ids"]
        outputs = ["logits" if kind == "classify" else "emissions" if kind == "tag" else "last_hidden_state"]
        axes = {n: {0: "batch", 1: "sequence"} for n in inputs}
        axes[outputs[0]] = {0: "batch"} if kind == "classify" else {0: "batch", 1: "sequence"}
    _trace(kind, graph, args, path, inputs, outputs, axes, opset)
    return graph


class _RMSNorm(nn.Module):
    """nn.RMSNorm written out, x / sqrt(mean(x^2) + eps) * weight, for the trace: the
    TorchScript exporter has no converter for aten::rms_norm (ONNX has RMSNormalization
    only from opset 23). Shares the norm's weight."""

    def __init__(self, norm: nn.RMSNorm):
        super().__init__()
        self.weight = norm.weight
        self.dims = tuple(range(-len(norm.normalized_shape), 0))
        self.eps = norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps  # nn.RMSNorm's default
        y = x * torch.rsqrt(x.pow(2).mean(self.dims, keepdim=True) + eps)
        return y * self.weight if self.weight is not None else y


@contextlib.contextmanager
def _exportable(module: nn.Module):
    """Within: `module`'s RMSNorms swapped for _RMSNorm (same weights); put back after,
    so the parity check compares the graph with the model as it is."""
    swaps = [(parent, name, child) for parent in module.modules() for name, child in parent.named_children()
             if isinstance(child, nn.RMSNorm)]
    try:
        for parent, name, child in swaps:
            setattr(parent, name, _RMSNorm(child))
        yield module
    finally:
        for parent, name, child in swaps:
            setattr(parent, name, child)


def _trace(kind: str, graph: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
           axes: dict, opset: int) -> None:
    with warnings.catch_warnings(), _exportable(graph):
        # "converting a tensor to a Python boolean...": the branches the trace freezes
        # (the mask and length checks); the parity check stands behind them
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(graph.eval(), args, str(path), dynamo=False, input_names=inputs,
                              output_names=outputs, dynamic_axes=axes, opset_version=opset,
                              do_constant_folding=True)
        except Exception as e:  # the tracer and the op converters raise many kinds
            raise ExportError(f"the {kind} model could not be converted to ONNX opset {opset} "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); nothing "
                              f"was written (opset {DEFAULT_OPSET} is the one tested)") from e


def _export_seq2seq(model: nn.Module, directory: Path, files: dict[str, str], opset: int) -> None:
    """Trace an encoder-decoder LM's encoder, memory and decoder graphs into `directory`."""
    cfg = model.config
    L = cfg.max_seq_len
    shapes = model.body.layer_shapes()  # (H, Dh) of each decoder layer's attention
    n = len(shapes)
    dtype = next(model.parameters()).dtype
    # padded sources (the encoder applies its mask only when something is padded, and the
    # trace keeps the branch it sees); a past and T > 1 in the decoder, so neither the
    # past length nor the causal rule is traced as a constant
    B, S, T, P = 2, min(8, L), 2, 3
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, S - 1] = 0
    src = {0: "batch", 1: "source"}
    _trace("seq2seq_lm encoder", _Seq2SeqEncoderGraph(model), (torch.randint(0, cfg.vocab_size, (B, S)), mask),
           directory / files["encoder"], ["input_ids", "attention_mask"], ["encoder_states"],
           {"input_ids": src, "attention_mask": src, "encoder_states": src}, opset)
    cross = _past_names(n, "cross")
    kv_src = {0: "batch", 2: "source"}
    _trace("seq2seq_lm memory", _MemoryGraph(model), (torch.randn(B, S, cfg.d_model, dtype=dtype),),
           directory / files["memory"], ["encoder_states"], cross,
           {"encoder_states": src} | {c: kv_src for c in cross}, opset)
    kv = [torch.randn(B, H, S, Dh, dtype=dtype) for H, Dh in shapes for _ in "kv"]
    kv += [torch.randn(B, H, P, Dh, dtype=dtype) for H, Dh in shapes for _ in "kv"]
    args = (torch.randint(0, cfg.vocab_size, (B, T)), mask, *kv)
    inputs = ["decoder_input_ids", "encoder_attention_mask", *cross, *_past_names(n, "past")]
    outputs = ["logits", *_past_names(n, "present")]
    axes = {"decoder_input_ids": {0: "batch", 1: "sequence"}, "encoder_attention_mask": src,
            "logits": {0: "batch", 1: "sequence"}}
    axes |= {c: kv_src for c in cross}
    axes |= {name: {0: "batch", 2: "past_sequence"} for name in _past_names(n, "past")}
    axes |= {name: {0: "batch", 2: "total_sequence"} for name in outputs[1:]}
    _trace("seq2seq_lm decoder", _DecoderGraph(model), args, directory / files["decoder"], inputs, outputs,
           axes, opset)


def _seq2seq_runner(directory: Path, files: dict[str, str], config, manifest: dict) -> OnnxSeq2SeqLM:
    sessions = {part: session(directory / f) for part, f in files.items()}
    return OnnxSeq2SeqLM(sessions, config, manifest, directory / files["decoder"])


def _io(sess) -> dict[str, list[dict]]:
    def describe(items):
        return [{"name": x.name, "type": x.type, "shape": list(x.shape)} for x in items]

    return {"inputs": describe(sess.get_inputs()), "outputs": describe(sess.get_outputs())}


def export_onnx(model: nn.Module, out: str | os.PathLike, *, tokenizer=None, meta: dict | None = None,
                int8: bool = False, opset: int = DEFAULT_OPSET, overwrite: bool = False, atol: float = ATOL,
                min_int8_agreement: float = MIN_INT8_AGREEMENT, source: str = "") -> dict:
    """Write `model` (a loaded Predictor's `.model`, with its `.tokenizer` and `.meta`) as
    an ONNX directory at `out`, all or nothing; returns the manifest (onnx.json). Raises
    ExportError when the graph differs from PyTorch by more than `atol` at any checked
    shape, or the int8 copy keeps fewer than `min_int8_agreement` of the predictions."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ConfigError("ONNX export needs onnx and onnxruntime (pip install 'zerolm[onnx]')") from None
    if opset < MIN_OPSET:
        raise ConfigError(f"--opset {opset}: attention (scaled_dot_product_attention) exports from opset "
                          f"{MIN_OPSET} on; use {MIN_OPSET} or more (default {DEFAULT_OPSET})")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} is not empty; choose another --out, or pass --overwrite to replace it")
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise ConfigError(f"{source or 'the model'}: ONNX export takes float32 weights; load the model "
                          "in float32")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ConfigError(f"{source or 'the model'}: export from the CPU (load with device='cpu')")
    kind = graph_kind(model, meta)
    model.eval()
    crf = getattr(model, "crf", None) if kind == "tag" else None
    seq2seq = kind == "seq2seq_lm"
    files = SEQ2SEQ_FILES if seq2seq else GRAPH_FILES
    manifest: dict = {"format": FORMAT, "version": 1, "kind": kind, "source": str(source),
                      "files": {"fp32": files["fp32"]}, "opset": opset, "exporter": "torchscript",
                      "torch": torch.__version__, "crf": crf is not None}
    with AtomicDir(out) as tmp:
        if seq2seq:
            graph = model
            _export_seq2seq(model, tmp, files["fp32"], opset)
            sess = _seq2seq_runner(tmp, files["fp32"], model.config, manifest)
            manifest["graphs"] = {part: _io(s) for part, s in sess.sessions.items()}
        else:
            graph = _export_graph(kind, model, tmp / GRAPH_FILES["fp32"], opset)
            sess = session(tmp / GRAPH_FILES["fp32"])
            manifest |= _io(sess)
        rows, pairs = _compare(kind, model, graph, model.config, sess)
        worst = max(r["max_abs_diff"] for r in rows)
        manifest["parity"] = {"atol": atol, "max_abs_diff": worst, "cases": rows}
        if not worst <= atol:  # also catches NaN
            bad = next(r for r in rows if not r["max_abs_diff"] <= atol)
            raise ExportError(
                f"{source or 'model'}: the ONNX graph differs from PyTorch by {bad['max_abs_diff']:.3g} "
                f"(> {atol:g}) at batch {bad['batch']}, "
                + (f"source {bad['source']}, " if "source" in bad else "")
                + f"length {bad['length']}"
                + (f", past {bad['past']}" if "past" in bad else "")
                + "; nothing was written. The trace froze a branch that depends on the input "
                  "(a Python `if` on a tensor or on a shape) in the model's forward; make it a tensor "
                  "operation, or export at another --opset")
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # each graph of the model (one, or an encoder-decoder's three) beside its fp32 one
            pairs_to_quantize = ([(files["fp32"][p], files["int8"][p]) for p in files["fp32"]] if seq2seq
                                 else [(files["fp32"], files["int8"])])
            # onnxruntime's advice to pre-process the graph goes to the root logger at WARNING on
            # every call; the agreement check below is what tells whether quantization worked
            logging.disable(logging.WARNING)
            try:
                for fp32_file, int8_file in pairs_to_quantize:
                    # per-channel scales: per-tensor ones cost a fine-tuned MiniLM 1.3 points on
                    # SST-2 dev, per-channel 0.3
                    quantize_dynamic(tmp / fp32_file, tmp / int8_file, weight_type=QuantType.QInt8,
                                     per_channel=True)
            finally:
                logging.disable(logging.NOTSET)
            q_sess = (_seq2seq_runner(tmp, files["int8"], model.config, manifest) if seq2seq
                      else session(tmp / files["int8"]))
            q_rows, q_pairs = _compare(kind, model, graph, model.config, q_sess)
            agree = agreement(kind, q_pairs)
            manifest["files"]["int8"] = files["int8"]
            manifest["int8"] = {"agreement": agree, "min_agreement": min_int8_agreement,
                                "max_abs_diff": max(r["max_abs_diff"] for r in q_rows),
                                "bytes": sum((tmp / f).stat().st_size for _, f in pairs_to_quantize),
                                "fp32_bytes": sum((tmp / f).stat().st_size for f, _ in pairs_to_quantize)}
            if agree < min_int8_agreement:
                raise ExportError(f"{source or 'model'}: the int8 graph keeps only {agree:.1%} of the "
                                  f"predictions on the check inputs (< {min_int8_agreement:.0%}); nothing was "
                                  "written. Export without --int8, or compress the PyTorch model with "
                                  "zerolm compress and export that")
        (tmp / "model_config.json").write_text(json.dumps(model.config.to_dict(), indent=2))
        if meta:
            (tmp / "task.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if crf is not None:
            # the scores CRF.decode itself searches (forbidden BIO moves at -10000), so the
            # runtime's Viterbi needs no label rules
            trans, start, end = (t.detach().cpu().tolist() for t in crf._scores())
            (tmp / CRF_FILE).write_text(json.dumps({"transitions": trans, "start": start, "end": end}))
        if tokenizer is not None:
            tokenizer.save(tmp / "tokenizer")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    log.debug("exported %s to %s (largest difference from PyTorch %.2g)", kind, out, worst)
    return manifest
