"""Run an exported ONNX directory (`zerolm export onnx`) with onnxruntime, in the shape
zerolm's PyTorch models have, so `zerolm.load`, `Predictor`, the tasks and generation use
it unchanged:

- a classifier / tagger: `model(input_ids, attention_mask=, token_type_ids=)` -> logits
  (B, C) / emissions (B, T, C) as torch tensors; a tagger with a CRF has `.crf`, whose
  `decode` is Viterbi in numpy over the transition scores saved beside the graph;
- a causal LM: `model(input_ids, attention_mask=, position_ids=, cache=)` -> logits
  (B, T, V), with `new_cache` / `cache.reorder` as `zerolm.generate` uses them; the past
  keys and values go into the graph and its present ones come back into the cache;
- a plain encoder: a `Body` whose forward returns the last hidden state (what
  `Predictor.embed` reads);
- an encoder-decoder LM (T5): three graphs, run as `zerolm.generate.generate_seq2seq`
  runs a PyTorch `Seq2SeqLM` (`encode`, `new_cache`, `model(decoder_input_ids=, ...)`):
  the encoder once per source, the cross-attention keys and values of every decoder
  layer once per source (on the first decoder call, as the PyTorch decoder computes
  them), then the decoder one step at a time over its own past keys and values.

Shape letters: B batch, T tokens, S past + T (causal LM) or source tokens (seq2seq),
P past target tokens, C classes or tags, H heads, Dh head size, D d_model, V vocabulary.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from zerolm.errors import CheckpointError, ConfigError
from zerolm.models import ModelConfig
from zerolm.models.body import Body, BodyOutput
from zerolm.models.t5 import Seq2SeqCache

MANIFEST = "onnx.json"  # names the graphs, their inputs and outputs, the parity check
FORMAT = "zerolm-onnx"
CRF_FILE = "crf.json"  # a tagger's CRF scores (forbidden moves already at -10000)
GRAPH_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
# an encoder-decoder's graphs: encoder (ids -> states), memory (states -> every decoder
# layer's cross-attention keys / values), decoder (one step over its past keys / values)
SEQ2SEQ_PARTS = ("encoder", "memory", "decoder")
SEQ2SEQ_FILES = {precision: {part: f"{part}.onnx" if precision == "fp32" else f"{part}.{precision}.onnx"
                             for part in SEQ2SEQ_PARTS} for precision in ("fp32", "int8")}


def is_onnx_dir(path: str | os.PathLike) -> bool:
    """True for a directory `zerolm export onnx` wrote, or one of its .onnx files."""
    p = Path(path)
    if p.is_file() and p.suffix == ".onnx":
        p = p.parent
    return (p / MANIFEST).is_file()


def read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ONNX manifest ({e})") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a zerolm ONNX directory (format {manifest.get('format')!r})")
    return manifest


def session(path: Path, threads: int | None = None):
    """An onnxruntime CPU session on `path`, with `threads` intra-op threads (default: as
    many as torch uses, so OMP_NUM_THREADS / torch.set_num_threads govern both backends)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError(f"{path}: running an ONNX model needs onnxruntime "
                          "(pip install 'zerolm[onnx]')") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # onnxruntime's warnings about unused initializers are noise here
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _np(x: torch.Tensor | np.ndarray | None) -> np.ndarray | None:
    if x is None or isinstance(x, np.ndarray):
        return x
    return x.detach().cpu().numpy()


class OnnxModel(nn.Module):
    """An onnxruntime session with the attributes zerolm's callers read of a model:
    `config`, `parameters()` (for the device), `eval()`."""

    def __init__(self, sess, config: ModelConfig, manifest: dict, path: Path):
        super().__init__()
        self.session, self.config, self.manifest, self.path = sess, config, manifest, path
        self.input_names = [i.name for i in sess.get_inputs()]
        # callers find a model's device as next(model.parameters()).device: onnxruntime runs
        # on the CPU, and this empty parameter says so
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path})"

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        # the exporter drops inputs a graph never reads (token_type_ids of a GPT body)
        return self.session.run(None, {k: v for k, v in feed.items() if k in self.input_names})

    def _check_length(self, t: int) -> None:
        if t > self.config.max_seq_len:
            raise ValueError(f"sequence of {t} tokens exceeds model.max_seq_len {self.config.max_seq_len}")

    def _encoder_feed(self, input_ids, attention_mask, token_type_ids) -> dict[str, np.ndarray]:
        ids = _np(input_ids).astype(np.int64)  # (B, T)
        self._check_length(ids.shape[1])
        mask = np.ones_like(ids) if attention_mask is None else _np(attention_mask).astype(np.int64)
        types = np.zeros_like(ids) if token_type_ids is None else _np(token_type_ids).astype(np.int64)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


class OnnxTaskModel(OnnxModel):
    """A classifier (-> logits (B, C)) or tagger (-> emissions (B, T, C), `.crf` when it has one)."""

    def __init__(self, sess, config, manifest, path, crf: ViterbiCRF | None = None):
        super().__init__(sess, config, manifest, path)
        self.crf = crf

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        return torch.from_numpy(self.run(self._encoder_feed(input_ids, attention_mask, token_type_ids))[0])


class OnnxEncoder(Body, OnnxModel):
    """A plain encoder's graph as a body: ids -> last hidden state (B, T, D)."""

    def forward(self, input_ids=None, *, attention_mask=None, token_type_ids=None, **unsupported) -> BodyOutput:
        asked = sorted(k for k, v in unsupported.items() if v not in (None, False))
        if asked or input_ids is None:
            raise ValueError(f"an ONNX encoder takes input_ids, attention_mask and token_type_ids only "
                             f"(got {asked or 'no input_ids'}); load the PyTorch model for more")
        h = self.run(self._encoder_feed(input_ids, attention_mask, token_type_ids))[0]
        return BodyOutput(torch.from_numpy(h))


class OnnxCache:
    """The past keys and values (B, H, S, Dh) of every layer as numpy arrays: what the
    graph takes in and gives back, with KVCache's `length` and `reorder`."""

    def __init__(self, shapes: list[tuple[int, int]], batch: int, max_len: int):
        self.k = [np.zeros((batch, h, 0, dh), dtype=np.float32) for h, dh in shapes]
        self.v = [np.zeros((batch, h, 0, dh), dtype=np.float32) for h, dh in shapes]
        self.max_len = max_len
        self.length = 0

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows, in this order (rows that finished leave the batch)."""
        idx = _np(rows).astype(np.int64)
        self.k = [k[idx] for k in self.k]
        self.v = [v[idx] for v in self.v]


class OnnxCausalLM(OnnxModel):
    """A causal LM's graph: (ids, mask over past + current, positions, past keys/values)
    -> (logits, present keys/values)."""

    # Predictor.generate tells a causal LM from a GPT classifier by its `lm_head`; here the
    # head is inside the graph and this attribute only marks the model as an LM
    lm_head = None

    def new_cache(self, batch: int, max_len: int | None = None) -> OnnxCache:
        shapes = [(self.config.layer(i).n_heads, self.config.layer(i).head_dim)
                  for i in range(self.config.n_layers)]
        return OnnxCache(shapes, batch, max_len or self.config.max_seq_len)

    def forward(self, input_ids, *, attention_mask=None, position_ids=None, cache: OnnxCache | None = None,
                token_type_ids=None) -> torch.Tensor:
        """Logits (B, T, V); a given `cache` is read and advanced by T, as KVCache is."""
        ids = _np(input_ids).astype(np.int64)  # (B, T)
        B, T = ids.shape
        past = cache.length if cache is not None else 0
        self._check_length(past + T)
        if cache is not None and past + T > cache.max_len:
            raise ValueError(f"KV cache is full: {past + T} positions > max_len {cache.max_len}")
        mask = (np.ones((B, past + T), dtype=np.int64) if attention_mask is None
                else _np(attention_mask).astype(np.int64))  # (B, S)
        pos = (np.arange(past, past + T, dtype=np.int64)[None].repeat(B, 0) if position_ids is None
               else np.broadcast_to(_np(position_ids).astype(np.int64), (B, T)).copy())
        if cache is None:
            cache_now = self.new_cache(B)
        else:
            cache_now = cache
        feed = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
        for i in range(self.config.n_layers):
            feed[f"past.{i}.key"], feed[f"past.{i}.value"] = cache_now.k[i], cache_now.v[i]
        logits, *present = self.run(feed)
        if cache is not None:
            cache.k, cache.v = present[0::2], present[1::2]  # (B, H, past + T, Dh) per layer
            cache.length += T
        return torch.from_numpy(logits)


class OnnxSeq2SeqCache(Seq2SeqCache):
    """Seq2SeqCache over numpy arrays: the decoder's own past keys and values (`self_kv`,
    an OnnxCache grown by each step) and the source's cross-attention keys and values with
    its mask (`memory`, `memory_mask` int64 (B, S)), set on the first decoder call."""

    def __init__(self, shapes: list[tuple[int, int]], batch: int, max_len: int):
        super().__init__(OnnxCache(shapes, batch, max_len))

    def reorder_memory(self, rows: torch.Tensor) -> None:
        super().reorder_memory(_np(rows).astype(np.int64))


class OnnxSeq2SeqLM(OnnxModel):
    """An encoder-decoder LM (T5) as three graphs, with the interface `generate_seq2seq`
    and the seq2seq task use on a PyTorch `Seq2SeqLM`: `start_id`, `encode(ids, mask)`,
    `new_cache(batch, max_len)` and `model(decoder_input_ids=, encoder_states=,
    attention_mask=, cache=)` -> logits (B, T, V). The LM head (with T5's rescaling of a
    head tied to the embeddings) is inside the decoder graph."""

    # Predictor.is_seq2seq tells an encoder-decoder LM from a T5 classifier by its
    # `lm_head`; here the head is inside the decoder graph and this attribute only marks it
    lm_head = None

    def __init__(self, sessions: dict, config: ModelConfig, manifest: dict, path: Path):
        super().__init__(sessions["encoder"], config, manifest, path)
        self.sessions = sessions
        self.names = {part: {i.name for i in s.get_inputs()} for part, s in sessions.items()}
        # (H, Dh) of each decoder layer's self-attention cache, as the graph takes its past
        past = {i.name: i.shape for i in sessions["decoder"].get_inputs() if i.name.startswith("past.")}
        self._shapes = [(past[f"past.{i}.key"][1], past[f"past.{i}.key"][3]) for i in range(len(past) // 2)]

    @property
    def start_id(self) -> int:
        return self.config.pad_id  # the decoder starts from the pad token, as T5's does

    def _run(self, part: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.sessions[part].run(None, {k: v for k, v in feed.items() if k in self.names[part]})

    def layer_shapes(self) -> list[tuple[int, int]]:
        """(H, Dh) of each decoder layer's self-attention cache (T5Decoder.layer_shapes)."""
        return list(self._shapes)

    def new_cache(self, batch: int, max_len: int | None = None) -> OnnxSeq2SeqCache:
        return OnnxSeq2SeqCache(self.layer_shapes(), batch, max_len or self.config.max_seq_len)

    def encode(self, input_ids, attention_mask=None, **unsupported) -> torch.Tensor:
        """Encoder states (B, S, D) of the sources (B, S)."""
        asked = sorted(k for k, v in unsupported.items() if v is not None)
        if asked:
            raise ValueError(f"an ONNX encoder-decoder encodes input_ids and attention_mask only (got {asked}); "
                             "load the PyTorch model for more")
        ids = _np(input_ids).astype(np.int64)  # (B, S)
        mask = np.ones_like(ids) if attention_mask is None else _np(attention_mask).astype(np.int64)
        return torch.from_numpy(self._run("encoder", {"input_ids": ids, "attention_mask": mask})[0])

    def memory(self, encoder_states) -> list[tuple[np.ndarray, np.ndarray]]:
        """Cross-attention keys and values (B, H, S, Dh) of every decoder layer."""
        out = self._run("memory", {"encoder_states": _np(encoder_states).astype(np.float32)})
        return list(zip(out[0::2], out[1::2]))

    def forward(self, input_ids=None, *, attention_mask=None, decoder_input_ids=None,
                decoder_attention_mask=None, labels=None, encoder_states=None,
                cache: OnnxSeq2SeqCache | None = None) -> torch.Tensor:
        """Logits (B, T, V) of the next target token after each of `decoder_input_ids`
        (B, T), over the sources `input_ids` (B, S) or their `encoder_states` (B, S, D)
        (neither once `cache` holds the source's keys and values); a given `cache` is read
        and advanced by T, as Seq2SeqCache is."""
        if labels is not None or decoder_input_ids is None:
            raise ValueError("an ONNX encoder-decoder takes decoder_input_ids and returns logits (no labels, "
                             "no loss); load the PyTorch model to train")
        dec = _np(decoder_input_ids).astype(np.int64)  # (B, T)
        B, T = dec.shape
        if decoder_attention_mask is not None and not bool((_np(decoder_attention_mask) != 0).all()):
            raise ValueError("an ONNX encoder-decoder takes unpadded targets (decoder_attention_mask all 1s); "
                             "a row that ends leaves the batch instead")
        if cache is not None and cache.memory is not None:
            memory, memory_mask = cache.memory, cache.memory_mask
        else:
            if encoder_states is None:
                if input_ids is None:
                    raise ValueError("the decoder needs input_ids or encoder_states on its first call")
                encoder_states = self.encode(input_ids, attention_mask)
            memory = self.memory(encoder_states)
            S = memory[0][0].shape[2]
            memory_mask = (np.ones((B, S), dtype=np.int64) if attention_mask is None
                           else _np(attention_mask).astype(np.int64))
            if cache is not None:
                cache.memory, cache.memory_mask = memory, memory_mask
        past = cache.self_kv if cache is not None else self.new_cache(B).self_kv
        if cache is not None and past.length + T > past.max_len:
            raise ValueError(f"KV cache is full: {past.length + T} positions > max_len {past.max_len}")
        feed = {"decoder_input_ids": dec, "encoder_attention_mask": memory_mask}
        for i, (k, v) in enumerate(memory):
            feed[f"cross.{i}.key"], feed[f"cross.{i}.value"] = k, v
        for i in range(len(past.k)):
            feed[f"past.{i}.key"], feed[f"past.{i}.value"] = past.k[i], past.v[i]
        logits, *present = self._run("decoder", feed)
        if cache is not None:
            past.k, past.v = present[0::2], present[1::2]  # (B, H, P + T, Dh) per layer
            past.length += T
        return torch.from_numpy(logits)


class ViterbiCRF(nn.Module):
    """A linear-chain CRF's decoding (Viterbi) and loss (forward algorithm) in numpy, over
    the scores `zerolm.models.crf.CRF` decodes with (forbidden moves at -10000). Takes and
    returns what the tagging task passes to a CRF: emissions (B, T, C), mask (B, T)."""

    def __init__(self, transitions, start, end):
        super().__init__()
        self.transitions = np.asarray(transitions, dtype=np.float32)  # (C, C) [from, to]
        self.start = np.asarray(start, dtype=np.float32)  # (C,)
        self.end = np.asarray(end, dtype=np.float32)  # (C,)
        self.num_tags = len(self.start)

    @classmethod
    def load(cls, path: Path) -> ViterbiCRF:
        try:
            s = json.loads(path.read_text(encoding="utf-8"))
            return cls(s["transitions"], s["start"], s["end"])
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: unreadable CRF scores ({e})") from None

    def decode(self, emissions, mask) -> list[list[int]]:
        """The highest-scoring tag sequence of each row, as many tags as the row has positions."""
        em, mask = _np(emissions).astype(np.float32), _np(mask).astype(bool)
        best = self.start + em[:, 0]  # (B, C)
        back = []  # per step t >= 1: (B, C) the best previous tag for each current tag
        for t in range(1, em.shape[1]):
            cand = best[:, :, None] + self.transitions  # (B, C_from, C_to)
            back.append(cand.argmax(1))  # first maximum on ties, as torch.argmax
            best = np.where(mask[:, t, None], cand.max(1) + em[:, t], best)
        last = (best + self.end).argmax(1)
        out = []
        for b, n in enumerate(mask.sum(1)):
            path = [int(last[b])]
            for t in range(n - 2, -1, -1):  # back[t] links position t + 1 to position t
                path.append(int(back[t][b, path[-1]]))
            out.append(path[::-1])
        return out

    def nll(self, emissions, tags, mask) -> torch.Tensor:
        """Negative log-likelihood (B,) of `tags` (B, T) given `emissions` (B, T, C)."""
        em, mask = _np(emissions).astype(np.float32), _np(mask).astype(bool)
        tags = np.where(mask, _np(tags), 0)
        alpha = self.start + em[:, 0]  # (B, C)
        for t in range(1, em.shape[1]):
            nxt = _logsumexp(alpha[:, :, None] + self.transitions, axis=1) + em[:, t]
            alpha = np.where(mask[:, t, None], nxt, alpha)
        log_z = _logsumexp(alpha + self.end, axis=1)  # (B,)
        rows = np.arange(len(em))
        at = np.take_along_axis(em, tags[:, :, None], 2)[:, :, 0]  # (B, T)
        score = self.start[tags[:, 0]] + at[:, 0]
        if tags.shape[1] > 1:
            score = score + ((self.transitions[tags[:, :-1], tags[:, 1:]] + at[:, 1:]) * mask[:, 1:]).sum(1)
        score = score + self.end[tags[rows, mask.sum(1) - 1]]
        return torch.from_numpy((log_z - score).astype(np.float32))


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def load_onnx(path: str | os.PathLike, device: str | torch.device = "cpu", *, threads: int | None = None):
    """(model, tokenizer or None, task or None, task.json or {}) of an exported directory;
    `path` may also name one of its graphs (e.g. DIR/model.int8.onnx; default model.onnx;
    for an encoder-decoder any of its graphs, e.g. DIR/decoder.int8.onnx, picks the three of
    that precision; default the fp32 ones)."""
    from zerolm.models import build_model
    from zerolm.tasks import CompletionTask, finetune_task
    from zerolm.tokenizers import Tokenizer

    path = Path(path)
    directory = path.parent if path.is_file() else path
    if torch.device(device).type != "cpu":
        raise ConfigError(f"{path}: an ONNX model runs on onnxruntime's CPU provider; load it with "
                          f"device='cpu' (got {device}), or load the PyTorch model for {device}")
    manifest = read_manifest(directory)
    kind = manifest["kind"]
    if kind == "seq2seq_lm":
        # the three graphs of one precision: the one `path` names a graph of, else fp32
        sets = manifest["files"]
        precision = next((p for p, parts in sets.items() if path.name in parts.values()),
                         None) if path.is_file() else "fp32"
        if precision is None:
            raise CheckpointError(f"{path}: not one of the graphs of {directory} "
                                  f"({', '.join(f for parts in sets.values() for f in parts.values())})")
        graphs = {part: directory / f for part, f in sets[precision].items()}
        graph = graphs["decoder"]
    else:
        graph = path if path.is_file() else directory / manifest["files"]["fp32"]
        graphs = {"model": graph}
    for g in graphs.values():
        if not g.is_file():
            raise CheckpointError(f"{g}: ONNX graph not found")
    try:
        config = ModelConfig.from_dict(json.loads((directory / "model_config.json").read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{directory / 'model_config.json'}: {e}") from None
    tok = Tokenizer.load(directory / "tokenizer") if (directory / "tokenizer").exists() else None
    meta_path = directory / "task.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    if kind == "seq2seq_lm":
        model = OnnxSeq2SeqLM({part: session(g, threads) for part, g in graphs.items()}, config, manifest, graph)
    elif kind == "causal_lm":
        model = OnnxCausalLM(session(graph, threads), config, manifest, graph)
    elif kind == "encoder":
        model = OnnxEncoder(session(graph, threads), config, manifest, graph)
    else:
        crf = ViterbiCRF.load(directory / CRF_FILE) if manifest.get("crf") else None
        model = OnnxTaskModel(session(graph, threads), config, manifest, graph, crf)
    task = None
    if meta:
        # the task (labels, columns, max length) as PyTorch loading rebuilds it; the module
        # it builds beside, on the meta device, holds no memory and is dropped
        with torch.device("meta"):
            _, task = finetune_task(meta["task"]).from_meta(meta, build_model(config), tok)
    elif kind == "causal_lm":
        task = CompletionTask(tok, max_length=config.max_seq_len)
    return model.eval(), tok, task, meta
