"""Reading text corpora: plain or gzipped UTF-8 files, with errors that name the file."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from zerolm.errors import DataError

_CHUNK = 1 << 20


def data_root() -> Path:
    """Where relative data paths in configs resolve: $ZEROLM_DATA, else ../shared/data
    beside the repository (or the working directory), else the working directory."""
    env = os.environ.get("ZEROLM_DATA")
    if env:
        return Path(env).expanduser()
    here = Path(__file__).resolve()
    for base in [Path.cwd(), *here.parents]:
        cand = base.parent / "shared" / "data"
        if cand.is_dir():
            return cand
    return Path.cwd()


def resolve_data_path(path: str | os.PathLike, root: Path | None = None) -> Path:
    """Absolute paths and paths that exist from the working directory stay as they are;
    other relative paths resolve against the data root. `pkg:` names a file shipped
    inside zerolm (for example `pkg:quickstart/corpus.txt`)."""
    s = str(path)
    if s.startswith("pkg:"):
        return Path(__file__).resolve().parent.parent / "resources" / s[4:]
    p = Path(s).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return (root or data_root()) / p


def open_text(path: str | os.PathLike):
    """Open a UTF-8 text file for reading, transparently gunzipping `*.gz`; a byte-order
    mark at the start (Excel and Notepad write one) is dropped."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found (relative data paths resolve against "
                        f"$ZEROLM_DATA = {data_root()})")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, expected a text file")
    if p.suffix == ".gz":
        return gzip.open(p, "rt", encoding="utf-8-sig", newline="")
    return open(p, encoding="utf-8-sig", newline="")


def _open_binary(p: Path):
    if not p.exists():
        raise DataError(f"{p}: file not found (relative data paths resolve against "
                        f"$ZEROLM_DATA = {data_root()})")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, expected a text file")
    return gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")


def iter_lines(path: str | os.PathLike, *, keep_ends: bool = False) -> Iterator[tuple[int, str]]:
    """Yield (line_number, line) from a UTF-8 text file (1-based). A byte-order mark at
    the start of the file is dropped. A file that is not UTF-8 or holds no non-blank text
    raises DataError naming the file and line."""
    p = Path(path)
    lineno = 0
    any_text = False
    with _open_binary(p) as fh:
        try:
            for lineno, raw in enumerate(fh, start=1):  # noqa: B007
                try:
                    # utf-8-sig on the first line: a BOM is not text (it would become part
                    # of the first column's name, or of the first token)
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{p}:{lineno}: not valid UTF-8 (byte {e.start + 1} of the line: "
                                    f"{raw[e.start:e.start + 1]!r}); convert the file to UTF-8") from None
                if not keep_ends:
                    line = line.rstrip("\r\n")
                if not any_text and line.strip():
                    any_text = True
                yield lineno, line
        except (OSError, EOFError) as e:
            raise DataError(f"{p}:{lineno + 1}: cannot read ({e})") from None
    if not any_text:
        raise DataError(f"{p}: the file is empty (no non-blank text)")


def read_text(path: str | os.PathLike) -> str:
    """The whole file as one string (used for character-level corpora)."""
    return "".join(line for _, line in iter_lines(path, keep_ends=True))


def is_table(path: str | os.PathLike) -> bool:
    name = Path(path).name
    name = name[:-3] if name.endswith(".gz") else name
    return Path(name).suffix.lower() in (".tsv", ".csv", ".jsonl")


def iter_rows(path: str | os.PathLike, *, raw: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line_number, row) of a table with a header: `.tsv` (split on tabs, no quoting),
    `.csv`, or `.jsonl` (one object per line), each optionally `.gz`. Rows with the wrong
    number of fields raise DataError naming the file and line. JSONL values are strings
    unless `raw`, which keeps them as the file has them (numbers, null, nested objects)."""
    p = Path(path)
    name = p.name[:-3] if p.name.endswith(".gz") else p.name
    suffix = Path(name).suffix.lower()
    if suffix == ".tsv":
        lines = iter_lines(p)
        _, header = next(lines)
        cols = header.split("\t")
        for lineno, line in lines:
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != len(cols):
                raise DataError(f"{p}:{lineno}: expected {len(cols)} tab-separated fields "
                                f"({', '.join(cols)}), found {len(parts)}")
            yield lineno, dict(zip(cols, parts))
    elif suffix == ".csv":
        import csv

        with open_text(p) as fh:
            reader = csv.reader(fh)
            try:
                header = next(reader, None)
                if not header:
                    raise DataError(f"{p}: the file is empty")
                for row in reader:
                    if not row:
                        continue
                    if len(row) != len(header):
                        raise DataError(f"{p}:{reader.line_num}: expected {len(header)} fields, "
                                        f"found {len(row)}")
                    yield reader.line_num, dict(zip(header, row))
            except UnicodeDecodeError:
                raise DataError(f"{p}: not valid UTF-8 (near line {reader.line_num + 1}); convert "
                                f"the file to UTF-8") from None
            except csv.Error as e:
                raise DataError(f"{p}:{reader.line_num}: malformed CSV ({e})") from None
    elif suffix == ".jsonl":
        import json

        for lineno, line in iter_lines(p):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{p}:{lineno}: expected a JSON object per line")
            yield lineno, obj if raw else {k: str(v) for k, v in obj.items()}
    else:
        raise DataError(f"{p}: unsupported table format (use .tsv, .csv or .jsonl, optionally .gz)")


def iter_records(path: str | os.PathLike, *, text_column: str | Sequence[str] = "text",
                 keep_ends: bool = False) -> Iterator[tuple[int, str]]:
    """(line_number, text) of a corpus file. Plain text gives its lines; a table
    (`.tsv`, `.csv`, `.jsonl`, optionally `.gz`) gives the `text_column` of each row (each
    of several columns in turn: both sides of a translation table), so labelled datasets
    double as pretraining text."""
    if not is_table(path):
        yield from iter_lines(path, keep_ends=keep_ends)
        return
    cols = [text_column] if isinstance(text_column, str) else list(text_column)
    end = "\n" if keep_ends else ""
    for lineno, row in iter_rows(path):
        for col in cols:
            if col not in row:
                raise DataError(f"{path}:{lineno}: no column {col!r} (columns: {', '.join(row)})")
            yield lineno, row[col] + end


def read_column_or_lines(path: str | os.PathLike, column: str, *, unescape_newlines: bool = False,
                         what: str = "inputs") -> tuple[list[str], list[dict[str, Any]]]:
    """Texts to generate from: a table's `column` (every column of each row kept, for the
    predictions file) or one per non-blank line of text (with `unescape_newlines`, a
    written \\n is a line break). Returns (texts, rows)."""
    p = resolve_data_path(path)
    texts, rows = [], []
    if is_table(p):
        for lineno, row in iter_rows(p, raw=True):
            if column not in row:
                raise DataError(f"{p}:{lineno}: no field {column!r} (fields: {', '.join(row)})")
            texts.append("" if row[column] is None else str(row[column]))
            rows.append(dict(row))
    else:
        for _, line in iter_lines(p):
            if line.strip():
                texts.append(line.replace("\\n", "\n") if unescape_newlines else line)
                rows.append({column: texts[-1]})
    if not texts:
        raise DataError(f"{p}: no {what}")
    return texts, rows
