"""Token corpora: text tokenized once and cached as memory-mapped arrays.

A corpus is three arrays in a cache directory keyed by the source files (path, size,
mtime) and the tokenizer: `tokens.bin` (uint16 or uint32, every token of every line
without special tokens), `lines.npy` (token offset of each line, plus the end) and
`docs.npy` (line index of each document start, plus the end; documents are separated
by blank lines in plain text, and each row of a table is its own document). Tokens are
written as they are produced and read back through `np.memmap`, so a corpus larger than
RAM still trains. The directory appears atomically: a crash mid-way leaves no cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zerolm.data.text import is_table, iter_records, resolve_data_path
from zerolm.errors import DataError
from zerolm.progress import Progress

log = logging.getLogger(__name__)

_BATCH_LINES = 4096


def default_cache_dir() -> Path:
    return Path(os.environ.get("ZEROLM_CACHE", Path.home() / ".cache" / "zerolm"))


@dataclass
class TokenCorpus:
    tokens: np.ndarray  # (N,) memmap of token ids
    lines: np.ndarray  # (L + 1,) token offset of each line start, then N
    docs: np.ndarray  # (D + 1,) line index of each document start, then L

    @property
    def n_tokens(self) -> int:
        return int(self.lines[-1] - self.lines[0])

    @property
    def n_lines(self) -> int:
        return len(self.lines) - 1

    def line(self, i: int) -> np.ndarray:
        return self.tokens[self.lines[i]:self.lines[i + 1]]

    def doc_of_line(self, i: int) -> int:
        return int(np.searchsorted(self.docs, i, side="right") - 1)

    def split_lines(self, val_fraction: float) -> tuple[TokenCorpus, TokenCorpus]:
        """Train / val by whole lines: the last `val_fraction` of the tokens, rounded to a line."""
        cut_tok = self.lines[0] + int((1 - val_fraction) * self.n_tokens)
        cut = int(np.searchsorted(self.lines, cut_tok))
        cut = min(max(cut, 1), self.n_lines - 1)
        if self.n_lines < 2:
            raise DataError("the corpus has a single line: give data.val files to validate on")
        return self._lines_view(0, cut), self._lines_view(cut, self.n_lines)

    def _lines_view(self, a: int, b: int) -> TokenCorpus:
        docs = self.docs[(self.docs >= a) & (self.docs < b)] - a
        if len(docs) == 0 or docs[0] != 0:
            docs = np.concatenate([[0], docs])
        return TokenCorpus(self.tokens, self.lines[a:b + 1], np.concatenate([docs, [b - a]]))

    def flat(self) -> np.ndarray:
        """All tokens of this corpus as one stream (a memmap slice, no copy)."""
        return self.tokens[self.lines[0]:self.lines[-1]]


def _cache_key(files: list[Path], tokenizer, keep_ends: bool, text_column: str | Sequence[str]) -> str:
    h = hashlib.sha256()
    h.update(tokenizer.backend.to_str().encode())
    cols = text_column if isinstance(text_column, str) else ",".join(text_column)
    h.update(f"{keep_ends}|{cols}|v1".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def load_corpus(files: list[str], tokenizer, *, keep_line_ends: bool, text_column: str | Sequence[str] = "text",
                cache_dir: str | os.PathLike | None = None) -> TokenCorpus:
    """Tokenize `files` once (cached) and return the memory-mapped corpus.

    `keep_line_ends` keeps "\\n" in the text (causal LMs learn line breaks); BERT-style
    tokenizers drop whitespace anyway.
    """
    paths = [resolve_data_path(f) for f in files]
    for p in paths:
        if not p.is_file():
            raise DataError(f"{p}: file not found (relative paths resolve against $ZEROLM_DATA)")
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    key = _cache_key(paths, tokenizer, keep_line_ends, text_column)
    target = root / "corpora" / key
    if not (target / "meta.json").exists():
        _build(paths, tokenizer, keep_line_ends, text_column, target)
    meta = json.loads((target / "meta.json").read_text())
    if meta["n_tokens"] == 0:
        raise DataError(f"{', '.join(map(str, paths))}: no tokens after tokenization")
    tokens = np.memmap(target / "tokens.bin", dtype=meta["dtype"], mode="r", shape=(meta["n_tokens"],))
    return TokenCorpus(tokens, np.load(target / "lines.npy"), np.load(target / "docs.npy"))


class _TokenWriter:
    """Appends tokenized lines to tokens.bin and records line / document offsets."""

    def __init__(self, out, tokenizer, dtype):
        self.out, self.tokenizer, self.dtype = out, tokenizer, dtype
        self.lines = [0]  # token offset of each line start (then the end)
        self.docs = [0]  # line index of each document start
        self.n = 0

    def new_doc(self) -> None:
        if len(self.lines) - 1 > self.docs[-1]:
            self.docs.append(len(self.lines) - 1)

    def write(self, texts: list[str], doc_per_text: bool) -> None:
        if not texts:
            return
        ids = self.tokenizer.encode_batch(texts, add_special_tokens=False)["input_ids"]
        for row in ids:
            if not row:
                continue
            if doc_per_text:
                self.new_doc()
            self.out.write(np.asarray(row, dtype=self.dtype).tobytes())
            self.n += len(row)
            self.lines.append(self.n)
        texts.clear()


def _build(paths: list[Path], tokenizer, keep_ends: bool, text_column: str | Sequence[str], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        with open(tmp / "tokens.bin", "wb") as out:
            w = _TokenWriter(out, tokenizer, dtype)
            for path in paths:
                log.info("tokenizing %s", path)
                w.new_doc()  # every file starts a document
                table = is_table(path)  # each row of a table is a document
                # the text read approaches the file size only for plain uncompressed text
                size = None if table or path.suffix == ".gz" else path.stat().st_size
                buf: list[str] = []
                with Progress(f"tokenizing {path.name}", total=size, unit="B") as progress:
                    for _, text in iter_records(path, text_column=text_column, keep_ends=keep_ends):
                        progress.update(len(text.encode("utf-8")))
                        if not text.strip():
                            # a blank line ends a document; for causal LMs its "\n" is still text
                            w.write(buf, table)
                            if keep_ends and text:
                                w.write([text], False)
                            w.new_doc()
                            continue
                        buf.append(text)
                        if len(buf) >= _BATCH_LINES:
                            w.write(buf, table)
                    w.write(buf, table)
        lines, n = w.lines, w.n
        docs = sorted(set(w.docs + [len(lines) - 1]))
        np.save(tmp / "lines.npy", np.asarray(lines, dtype=np.int64))
        np.save(tmp / "docs.npy", np.asarray(docs, dtype=np.int64))
        meta = {"files": [str(p) for p in paths], "n_tokens": n, "n_lines": len(lines) - 1,
                "n_docs": len(docs) - 1, "dtype": np.dtype(dtype).name, "keep_line_ends": keep_ends}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, target)
        except OSError:  # another process built it first
            if not (target / "meta.json").exists():
                raise
        log.info("cached %d tokens, %d lines in %s", n, len(lines) - 1, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
