"""FAQ retrieval: embed the questions of a FAQ once, then find the entries closest to a
user's query by cosine similarity (exact search with numpy).

An index directory (written all at once by `build_index`, read by `Index.load`):
    index.json      what was built and with which model (path, pooling, dim, count, and
                    the model's embedding of a fixed probe sentence: its identity)
    vectors.npy     (N, D) float32 question embeddings, L2-normalised, so that cosine
                    similarity is a dot product; opened memory-mapped, never read whole
    records.jsonl   one FAQ entry per line, row i of vectors.npy is line i + 1
    offsets.npy     (N + 1,) int64 byte offsets of the lines of records.jsonl, so that a
                    search reads only the entries it returns

Shape letters: N entries in the index, D embedding size, Q queries, C rows per chunk.

A query is embedded by the same model, pooling and truncation the index was built with:
by default the model recorded in index.json; another model is accepted only if it embeds
the probe sentence as the recorded one did (the same weights moved elsewhere, or run by
ONNX), since vectors of two different models are not comparable.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from zerolm.errors import CheckpointError, ConfigError, DataError

log = logging.getLogger(__name__)

FORMAT = "zerolm.faq-index"
VERSION = 1
META_FILE, VECTORS_FILE, RECORDS_FILE, OFFSETS_FILE = "index.json", "vectors.npy", "records.jsonl", "offsets.npy"
# a search result carries these beside the entry's own fields, so an entry may not use them
RESERVED = ("score", "row")
PROBE = "Can I change my flight to tomorrow and how much does a checked bag cost?"
# two models are the same embedder when they embed the probe this alike (a GPU, ONNX or a
# different BLAS moves it by ~1e-6; different weights, even int8 ones, by far more)
SAME_MODEL_COSINE = 0.999
# bytes of corpus rows (and of the (Q, C) score block) one step of a search holds at once
SEARCH_CHUNK_BYTES = 32 << 20
BUILD_CHUNK = 4096  # questions embedded per call while building: memory stays bounded


# ---------------------------------------------------------------- reading a FAQ

def read_faq(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The entries of a FAQ file: `.jsonl` (one object per line with "question", "answer",
    optional "intent" and any other fields, kept) or a `.tsv` / `.csv` table with
    question and answer columns (optionally .gz). Errors name the file and line."""
    from zerolm.data.text import is_table, iter_rows, resolve_data_path

    p = resolve_data_path(path)
    if not is_table(p):
        raise DataError(f"{p}: a FAQ is a .jsonl file (one {{\"question\", \"answer\"}} object per line) "
                        "or a .tsv / .csv table with question and answer columns")
    jsonl = p.name.removesuffix(".gz").lower().endswith(".jsonl")
    out = []
    for lineno, row in iter_rows(p, raw=True):
        if not jsonl:  # a table's empty cell is a missing value, not an empty string
            row = {k: v for k, v in row.items() if k in ("question", "answer") or v != ""}
        out.append(check_entry(row, f"{p}:{lineno}"))
    if not out:
        raise DataError(f"{p}: no FAQ entries (the file has a header or blank lines only)")
    return out


def check_entry(entry: Any, where: str) -> dict[str, Any]:
    """`entry` if it is a usable FAQ entry, else a DataError naming `where` (file:line)."""
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object with \"question\" and \"answer\", got "
                        f"{type(entry).__name__}")
    for key in ("question", "answer"):
        value = entry.get(key)
        if value is None:
            have = ", ".join(map(repr, entry)) or "none"
            raise DataError(f"{where}: no {key!r} (fields: {have}); every FAQ entry needs a question "
                            "and an answer")
        if not isinstance(value, str):
            raise DataError(f"{where}: {key!r} must be text, got {type(value).__name__} {value!r:.40}")
        if not value.strip():
            raise DataError(f"{where}: {key!r} is empty; write one or remove the entry")
    intent = entry.get("intent")
    if intent is not None and not isinstance(intent, str):
        raise DataError(f"{where}: 'intent' must be text (an intent name) or absent, got {intent!r:.40}")
    clash = [k for k in RESERVED if k in entry]
    if clash:
        raise DataError(f"{where}: field {clash[0]!r} is reserved (a search result carries the entry's "
                        f"{' and '.join(RESERVED)}); rename it")
    return entry


def _entries(records: str | os.PathLike | Iterable[dict]) -> tuple[list[dict], str | None]:
    """(checked entries, source file or None) of what build_index was given."""
    if isinstance(records, (str, os.PathLike)):
        return read_faq(records), str(records)
    out = [check_entry(r, f"record {i}") for i, r in enumerate(records)]
    if not out:
        raise DataError("no FAQ entries to index")
    return out, None


# ---------------------------------------------------------------- exact search

def exact_top_k(vectors, queries: np.ndarray, k: int, *,
                chunk_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(rows, scores), each (Q, min(k, N)): the k rows of `vectors` (N, D) with the largest
    dot product with each query (Q, D), best first (ties: lower row first, except at the
    k-th place where either may win). `vectors` is read `chunk_rows` rows at a time, so a
    memory-mapped matrix is never loaded whole."""
    n, d = vectors.shape
    q = np.asarray(queries, dtype=np.float32)
    q = q[None] if q.ndim == 1 else q  # (Q, D)
    if q.shape[1] != d:
        raise ValueError(f"queries have {q.shape[1]} dimensions, the vectors {d}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    k = min(k, n)
    if chunk_rows is None:  # bound both the rows read (C, D) and the score block (Q, C)
        chunk_rows = max(SEARCH_CHUNK_BYTES // (4 * max(d, len(q))), 1)
    best_s = np.empty((len(q), 0), np.float32)  # (Q, <=k) running best scores
    best_r = np.empty((len(q), 0), np.int64)
    for start in range(0, n, chunk_rows):
        block = np.asarray(vectors[start:start + chunk_rows], dtype=np.float32)  # (C, D)
        s = np.concatenate([best_s, q @ block.T], axis=1)  # (Q, k + C)
        r = np.concatenate([best_r, np.broadcast_to(np.arange(start, start + len(block)), (len(q), len(block)))],
                           axis=1)
        if s.shape[1] > k:  # keep the k best of the old best and this chunk: O(k + C), no full sort
            keep = np.argpartition(-s, k - 1, axis=1)[:, :k]
            s, r = np.take_along_axis(s, keep, 1), np.take_along_axis(r, keep, 1)
        best_s, best_r = s, r
    order = np.lexsort((best_r, -best_s), axis=1)  # by score, descending; then by row
    return np.take_along_axis(best_r, order, 1), np.take_along_axis(best_s, order, 1)


# ---------------------------------------------------------------- the index

def _model_spec(model) -> tuple[str, str | None]:
    """(what the user named the model by, the absolute directory to load it from again)."""
    from zerolm.loading import resolve_model_path

    spec = str(model if isinstance(model, (str, os.PathLike)) else getattr(model, "source", "") or "")
    if not spec:
        return "", None
    path = resolve_model_path(spec)
    return spec, str(path.resolve()) if path.exists() else None


def _as_predictor(model, device):
    if isinstance(model, (str, os.PathLike)):
        from zerolm.loading import load

        return load(model, device=device)
    if not callable(getattr(model, "embed", None)):
        raise TypeError(f"model must be a model directory or a zerolm.load(...) predictor, got {type(model).__name__}")
    return model


def _fresh_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} is not empty; choose another --out, or pass --overwrite to replace it")


def build_index(model, records: str | os.PathLike | Iterable[dict], out_dir: str | os.PathLike, *,
                overwrite: bool = False, batch_size: int = 32, pooling: str = "mean",
                max_length: int | None = None, device: str = "cpu", progress: bool | None = False) -> Index:
    """Embed the questions of `records` (a FAQ file, see `read_faq`, or a list of entries)
    with `model` (a model directory, `python:PACKAGE`, or a `zerolm.load` predictor) and
    write the index to `out_dir`, all or nothing. `out_dir` must be new or empty unless
    `overwrite`. Returns the index, ready to search with the same model."""
    from zerolm.atomic import AtomicDir

    out = Path(out_dir)
    _fresh_out(out, overwrite)  # before loading a model and embedding
    entries, source = _entries(records)
    pred = _as_predictor(model, device)
    spec, path = _model_spec(model)
    kw = dict(pooling=pooling, normalize=True, batch_size=batch_size, max_length=max_length)
    probe = pred.embed([PROBE], **kw)[0]
    dim = int(probe.shape[0])
    cfg = getattr(getattr(pred, "model", None), "config", None)
    meta = {
        "format": FORMAT, "version": VERSION, "count": len(entries), "dim": dim,
        "model": spec, "model_path": path,
        "model_family": getattr(cfg, "family", None),
        "pooling": pooling, "normalize": True, "max_length": max_length,
        "probe": {"text": PROBE, "vector": probe.tolist()},
        "source": source, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    t0 = time.perf_counter()
    with AtomicDir(out) as tmp:
        # written in place chunk by chunk: a FAQ of millions of entries never sits in memory
        vecs = np.lib.format.open_memmap(tmp / VECTORS_FILE, mode="w+", dtype=np.float32, shape=(len(entries), dim))
        for s in range(0, len(entries), BUILD_CHUNK):
            part = entries[s:s + BUILD_CHUNK]
            vecs[s:s + len(part)] = pred.embed([e["question"] for e in part], progress=progress, **kw)
        vecs.flush()
        del vecs
        offsets = np.zeros(len(entries) + 1, dtype=np.int64)
        with open(tmp / RECORDS_FILE, "wb") as fh:
            for i, e in enumerate(entries):
                fh.write(json.dumps(e, ensure_ascii=False, default=str).encode("utf-8") + b"\n")
                offsets[i + 1] = fh.tell()
        np.save(tmp / OFFSETS_FILE, offsets)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    log.info("indexed %d FAQ entries (%d-dim, %s pooling) in %.1f s into %s", len(entries), dim, pooling,
             time.perf_counter() - t0, out)
    return Index(out, meta, model=pred, device=device)


class Index:
    """A FAQ index on disk, searched exactly. `Index.load(dir)`, then
    `index.search(["how many bags can I check"], k=5)` -> for each query its k best
    entries, best first: {"score": cosine, "row": i, "question", "answer", "intent"?, ...}."""

    def __init__(self, directory: Path, meta: dict, *, model=None, device: str = "cpu"):
        """Use `Index.load`; `model`, if given, is trusted to be the one the index was built with."""
        self.directory, self.meta = Path(directory), meta
        n, d = meta["count"], meta["dim"]
        try:
            # memory-mapped: the pages a search touches are read, the rest stay on disk
            self.vectors = np.load(self.directory / VECTORS_FILE, mmap_mode="r")  # (N, D) np.memmap
            self.offsets = np.load(self.directory / OFFSETS_FILE, mmap_mode="r")  # (N + 1,) int64
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{self.directory}: unreadable index ({e}); rebuild it with zerolm index "
                                  "build") from None
        if self.vectors.shape != (n, d) or self.vectors.dtype != np.float32 or self.offsets.shape != (n + 1,):
            raise CheckpointError(f"{self.directory}: {VECTORS_FILE} holds {self.vectors.dtype} {self.vectors.shape}, "
                                  f"{META_FILE} says float32 ({n}, {d}); the index is damaged, rebuild it "
                                  "with zerolm index build")
        self._model, self._device = model, device
        self._lock = threading.Lock()

    @classmethod
    def load(cls, directory: str | os.PathLike, model=None, device: str = "cpu") -> Index:
        """The index in `directory`. Queries are embedded by `model` (a directory or a
        predictor) if given, which must be the model the index was built with; by default
        that model is loaded from where index.json records it, on the first search."""
        d = Path(directory)
        path = d / META_FILE
        if not path.is_file():
            what = "not found" if not d.exists() else f"has no {META_FILE}"
            raise CheckpointError(f"{d}: {what}; not a FAQ index (build one with zerolm index build MODEL "
                                  f"--input faq.jsonl --out {d})")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
        except (ValueError, AttributeError) as e:
            raise CheckpointError(f"{path}: unreadable index description ({e})") from None
        if meta.get("version", 0) > VERSION:
            raise CheckpointError(f"{path}: index format version {meta['version']} is newer than this "
                                  f"zerolm reads ({VERSION}); upgrade zerolm or rebuild the index")
        index = cls(d, meta, device=device)
        if model is not None:
            name = model if isinstance(model, (str, os.PathLike)) else getattr(model, "source", "")
            index._model = index._same_model(_as_predictor(model, device), str(name or "the given model"))
        return index

    def __len__(self) -> int:
        return int(self.meta["count"])

    def __repr__(self) -> str:
        return f"Index({str(self.directory)!r}, {len(self)} entries, model {self.meta['model']!r})"

    # -- the model that embeds queries

    def _same_model(self, pred, name: str):
        """`pred` if it embeds like the model the index was built with, else ConfigError."""
        probe = np.asarray(self.meta["probe"]["vector"], dtype=np.float32)
        got = pred.embed([self.meta["probe"]["text"]], **self._embed_options())[0]
        cos = float(got @ probe / max(np.linalg.norm(got) * np.linalg.norm(probe), 1e-12)) \
            if got.shape == probe.shape else float("nan")
        if not cos >= SAME_MODEL_COSINE:  # also catches a different embedding size (nan)
            why = (f"{got.shape[0]}-dim embeddings, the index has {probe.shape[0]}" if got.shape != probe.shape
                   else f"it embeds a probe sentence differently: cosine {cos:.4f} with the recorded embedding")
            raise ConfigError(f"{self.directory} was built with {self.meta['model'] or 'another model'}; {name} "
                              f"is not that model ({why}). Search with the model it was built with (the "
                              "default), or rebuild the index with this one")
        return pred

    def _embed_options(self) -> dict:
        return dict(pooling=self.meta["pooling"], normalize=True, max_length=self.meta.get("max_length"))

    @property
    def model(self):
        """The predictor that embeds queries (loaded on first use from index.json's record)."""
        with self._lock:  # a server's threads may search at once: load it once
            if self._model is None:
                self._model = self._same_model(*self._recorded_model())
            return self._model

    def _recorded_model(self):
        from zerolm.loading import load

        spec, path = self.meta.get("model") or "", self.meta.get("model_path")
        # a package's model is found by its name wherever it is installed; a directory by the
        # absolute path it had at build time, so the index works from any working directory
        where = spec if spec.startswith("python:") else path
        if not where or not (where.startswith("python:") or Path(where).is_dir()):
            raise ConfigError(f"{self.directory}: the model it was built with ({spec or 'unrecorded'}"
                              f"{f', at {path}' if path and path != spec else ''}) is not there; pass the same "
                              "model (--model DIR, or Index.load(dir, model=...))")
        return load(where, device=self._device), spec

    # -- searching

    def embed(self, queries: str | list[str], *, batch_size: int = 32) -> np.ndarray:
        """(Q, D) embeddings of `queries`, as the index's questions were embedded."""
        texts = [queries] if isinstance(queries, str) else list(queries)
        return self.model.embed(texts, batch_size=batch_size, **self._embed_options())

    def search(self, queries: str | list[str], k: int = 5, *, chunk_rows: int | None = None) -> list[list[dict]]:
        """For each query, its `k` closest entries (fewer if the index is smaller), best
        first: {"score", "row", **entry}. A single string is a list of one query."""
        texts = [queries] if isinstance(queries, str) else list(queries)
        if not texts:
            return []
        return self.search_vectors(self.embed(texts), k, chunk_rows=chunk_rows)

    def search_vectors(self, queries: np.ndarray, k: int = 5, *, chunk_rows: int | None = None) -> list[list[dict]]:
        """`search` for query embeddings (Q, D) made elsewhere (normalised here)."""
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        q = np.asarray(queries, dtype=np.float32)
        q = q[None] if q.ndim == 1 else q  # (Q, D)
        q = q / np.clip(np.linalg.norm(q, axis=1, keepdims=True), 1e-12, None)
        rows, scores = exact_top_k(self.vectors, q, k, chunk_rows=chunk_rows)
        entries = self.entries(np.unique(rows))
        return [[{"score": float(s), "row": int(r), **entries[int(r)]} for r, s in zip(rr, ss)]
                for rr, ss in zip(rows, scores)]

    def entries(self, rows: Iterable[int]) -> dict[int, dict]:
        """row -> the FAQ entry, read from records.jsonl by offset (only these lines)."""
        out = {}
        with open(self.directory / RECORDS_FILE, "rb") as fh:
            for r in sorted(int(r) for r in rows):
                if not 0 <= r < len(self):
                    raise IndexError(f"row {r} is not in the index (0..{len(self) - 1})")
                fh.seek(int(self.offsets[r]))
                out[r] = json.loads(fh.read(int(self.offsets[r + 1] - self.offsets[r])))
        return out
