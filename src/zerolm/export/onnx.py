"""Export a finished model to ONNX: an encoder with its task head (classifier logits,
tagger emissions) or alone (last hidden state), or a causal LM with KV-cache inputs and
outputs; batch and sequence axes stay dynamic. The export is checked against PyTorch at
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
    onnx.json           kind, files, inputs and outputs, the parity and int8 checks
    model_config.json   the model's config (per-layer shapes for the cache)
    task.json           a fine-tuned model's task (labels, columns, max length)
    crf.json            a CRF tagger's transition / start / end scores
    tokenizer/

Shape letters: B batch, T tokens, P past tokens, S = P + T, C classes or tags, V vocabulary.
"""

from __future__ import annotations

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
from zerolm.export.runtime import CRF_FILE, FORMAT, GRAPH_FILES, MANIFEST, OnnxCache, session
from zerolm.models import body_of, family

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


def graph_kind(model: nn.Module, meta: dict | None) -> str:
    """classify, tag, causal_lm or encoder: what the graph computes."""
    task = (meta or {}).get("task")
    if task in ("classify", "tag"):
        return task
    if family(model.config).objective == "clm" and hasattr(model, "lm_head"):
        return "causal_lm"
    if task is None:
        return "encoder"
    raise ConfigError(f"ONNX export covers classifiers, taggers, causal LMs and plain encoders, "
                      f"not task {task!r}")


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


def _run_encoder(sess, case: dict[str, np.ndarray]) -> np.ndarray:
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in case.items() if k in names})[0]


def _compare(kind: str, model, graph, config, sess) -> tuple[list[dict], list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Per-case shapes and max abs differences, and (reference, graph output, real-token
    mask) for the int8 agreement."""
    rows, pairs = [], []
    if kind == "causal_lm":
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
    next token at each real token (tag, causal_lm); for an encoder, rows whose mean-pooled
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
    with warnings.catch_warnings():
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
    return graph


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
    manifest: dict = {"format": FORMAT, "version": 1, "kind": kind, "source": str(source),
                      "files": {"fp32": GRAPH_FILES["fp32"]}, "opset": opset, "exporter": "torchscript",
                      "torch": torch.__version__, "crf": crf is not None}
    with AtomicDir(out) as tmp:
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
                f"(> {atol:g}) at batch {bad['batch']}, length {bad['length']}"
                + (f", past {bad['past']}" if "past" in bad else "")
                + "; nothing was written. The trace froze a branch that depends on the input "
                  "(a Python `if` on a tensor or on a shape) in the model's forward; make it a tensor "
                  "operation, or export at another --opset")
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            q_path = tmp / GRAPH_FILES["int8"]
            # onnxruntime's advice to pre-process the graph goes to the root logger at WARNING on
            # every call; the agreement check below is what tells whether quantization worked
            logging.disable(logging.WARNING)
            try:
                # per-channel scales: per-tensor ones cost a fine-tuned MiniLM 1.3 points on
                # SST-2 dev, per-channel 0.3
                quantize_dynamic(tmp / GRAPH_FILES["fp32"], q_path, weight_type=QuantType.QInt8,
                                 per_channel=True)
            finally:
                logging.disable(logging.NOTSET)
            q_rows, q_pairs = _compare(kind, model, graph, model.config, session(q_path))
            agree = agreement(kind, q_pairs)
            manifest["files"]["int8"] = GRAPH_FILES["int8"]
            manifest["int8"] = {"agreement": agree, "min_agreement": min_int8_agreement,
                                "max_abs_diff": max(r["max_abs_diff"] for r in q_rows),
                                "bytes": q_path.stat().st_size,
                                "fp32_bytes": (tmp / GRAPH_FILES["fp32"]).stat().st_size}
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
