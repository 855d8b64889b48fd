"""CoNLL column files for token classification (NER), and their batches.

A file holds one word per line with its columns (split on tabs when the line has one,
else on runs of spaces, as in the original CoNLL-2003 files), a blank line between
sentences, and optionally `-DOCSTART-` lines (document boundaries, skipped). The word
and tag columns are configurable (`data.token_column`, `data.tag_column`).

Tags are read as IOB2 (`B-X` starts every entity). Files in IOB1, where `B-X` appears
only between two adjacent entities of one type, are converted: an `I-X` that does not
continue an X entity becomes `B-X`. An IOB2 file with such a stray `I-X` is repaired the
same way, with a warning: conlleval and seqeval read it as the start of an entity too,
so the scores do not change, and the CRF never has to learn a gold path its
constraints forbid.

The model sees sub-word tokens; a word's tag is learnt and predicted at its first
sub-token only (the other pieces get the ignore label -100), and every batch keeps each
token's word index so that predictions map back to words.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from zerolm.data.batching import BucketedBatches
from zerolm.data.masking import IGNORE_INDEX
from zerolm.data.text import iter_lines, resolve_data_path
from zerolm.errors import DataError

log = logging.getLogger(__name__)

DOCSTART = "-DOCSTART-"
TAG_PATTERN = re.compile(r"O|[BI]-\S+")  # O, B-TYPE, I-TYPE; a type has no spaces


@dataclass
class Sentence:
    words: list[str]
    tags: list[str] | None  # None when the file has no tags (prediction input)
    source: str  # the file, for error messages
    lines: list[int]  # the line of each word

    def where(self, i: int) -> str:
        """"file:line" of word i."""
        return f"{self.source}:{self.lines[i]}"


def _columns(line: str) -> list[str]:
    return line.split("\t") if "\t" in line else line.split()


def read_conll(path: str | Path, *, token_column: int = 0, tag_column: int | None = -1,
               scheme: str = "iob2") -> list[Sentence]:
    """Sentences of a CoNLL column file; `tag_column=None` reads words only.

    A malformed tag, a missing column or a file without sentences raises DataError
    naming the file and line; `scheme="iob1"` converts the tags to IOB2.
    """
    if scheme not in ("iob2", "iob1"):
        raise ValueError(f"unknown tagging scheme {scheme!r}: use 'iob2' or 'iob1'")
    p = resolve_data_path(path)
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    lines: list[int] = []

    def close() -> None:
        if words:
            sentences.append(Sentence(list(words), list(tags) if tag_column is not None else None,
                                      str(p), list(lines)))
            words.clear()
            tags.clear()
            lines.clear()

    need = max(_needed(token_column), _needed(tag_column))
    for lineno, line in iter_lines(p):
        if not line.strip():  # WNUT-17 separates sentences with a lone tab
            close()
            continue
        cols = _columns(line)
        if cols[0] == DOCSTART:
            close()
            continue
        if len(cols) < need:
            raise DataError(f"{p}:{lineno}: expected at least {need} columns (word in column "
                            f"{token_column}, tag in column {tag_column}), found {len(cols)}: {line!r}; "
                            "set data.token_column / data.tag_column")
        word = cols[token_column].strip()
        if not word:
            raise DataError(f"{p}:{lineno}: empty word in column {token_column}")
        if tag_column is not None:
            tag = cols[tag_column].strip()
            if not TAG_PATTERN.fullmatch(tag):
                raise DataError(f"{p}:{lineno}: malformed tag {tag!r}: expected O, B-TYPE or I-TYPE "
                                f"(tags are read from column {tag_column}; set data.tag_column if they "
                                f"are elsewhere)")
            tags.append(tag)
        words.append(word)
        lines.append(lineno)
    close()
    if not sentences:
        raise DataError(f"{p}: no sentences (expected one word per line, a blank line between sentences)")
    if tag_column is not None:
        repair_iob2(sentences, p, scheme)
    return sentences


def repair_iob2(sentences: list[Sentence], path: str | Path, scheme: str = "iob2") -> None:
    """Read the tags of `sentences` as IOB2, in place (`to_iob2`): an IOB1 file is
    converted silently, a stray I-X in an IOB2 file becomes B-X with a warning that counts
    them and names the first file:line."""
    repaired = [(s.where(i), t) for s in sentences if s.tags is not None for i, t in to_iob2(s.tags)]
    if repaired and scheme == "iob2":
        log.warning("%s: %d tags I-X did not continue an entity of type X (first at %s: %s); "
                    "read as B-X, as conlleval does (set data.scheme: iob1 if the file is IOB1)",
                    path, len(repaired), repaired[0][0], repaired[0][1])


def is_conll(path: str | Path) -> bool:
    """Whether a file is in CoNLL columns (one word per line) rather than one sentence per
    line: a .conll name, a tab or a -DOCSTART- line, or first lines that all end in a tag."""
    p = Path(path)
    if p.suffix == ".conll":
        return True
    lines = []
    for _, line in iter_lines(p):
        if line.strip():
            lines.append(line)
        if len(lines) == 50:
            break
    if not lines:
        return False
    if any("\t" in ln for ln in lines) or lines[0].split()[0] == DOCSTART:
        return True
    return all(len(f := ln.split()) >= 2 and TAG_PATTERN.fullmatch(f[-1]) for ln in lines)


def _needed(column: int | None) -> int:
    """How many columns a line needs for `column` (negative counts from the end)."""
    if column is None:
        return 0
    return column + 1 if column >= 0 else -column


def to_iob2(tags: list[str]) -> list[tuple[int, str]]:
    """Turn every `I-X` that does not continue an entity of type X into `B-X`, in place
    (IOB1 -> IOB2; IOB2 stays as it is). Returns (position, old tag) of each change."""
    changed = []
    prev = "O"
    for i, tag in enumerate(tags):
        if tag.startswith("I-") and prev[2:] != tag[2:]:  # after O, or after another type
            changed.append((i, tag))
            tags[i] = "B-" + tag[2:]
        prev = tags[i]
    return changed


def tag_names(sentences: list[Sentence]) -> list[str]:
    """The label set fixed by the training data: O, then B- and I- of each entity type
    (sorted), so every type can be both begun and continued."""
    types = sorted({t[2:] for s in sentences for t in s.tags or [] if t != "O"})
    return ["O"] + [f"{bi}-{t}" for t in types for bi in "BI"]


class TaggingBatches(BucketedBatches):
    """Sentences tokenized once (words kept apart), in length-bucketed batches of

    - input_ids, attention_mask, token_type_ids (B, T)
    - labels (B, T): each word's tag id at its first sub-token; IGNORE_INDEX on the
      other pieces, on special tokens and on padding
    - word_ids (B, T): the index of the word each token belongs to; -1 on special
      tokens and padding
    - word_labels (B, W): the tag ids of all the sentence's words, including words the
      truncation cut off (the evaluation counts them as missed); IGNORE_INDEX as padding
    - n_words (B,): words per sentence

    `truncated` counts sentences cut to `max_length` tokens (a warning says how many
    and how many words were lost); `unseen` counts words no token stands for.

    A tag the training data does not have is an error naming the file and line, unless
    the caller gives `tag_ids` itself: there, ids from len(label_names) up stand for tags
    unseen in training, kept in `word_labels` for scoring (no prediction can match them)
    and learnt as O in `labels` (they only ever occur in dev / test data).
    """

    def __init__(self, sentences: list[Sentence], label_names: list[str], tokenizer, *, max_length: int,
                 batch_size: int, seed: int, micro_per_step: int = 1, tag_ids: list[list[int]] | None = None):
        index = {n: i for i, n in enumerate(label_names)}
        self.sentences = sentences
        self.n_labels = len(label_names)
        self.outside = index.get("O", 0)
        self.tags: list[list[int]] = [] if tag_ids is None else tag_ids
        for s in sentences if tag_ids is None else ():
            if s.tags is None:
                self.tags.append([IGNORE_INDEX] * len(s.words))
                continue
            for i, tag in enumerate(s.tags):
                if tag not in index:
                    raise DataError(f"{s.where(i)}: tag {tag!r} does not occur in the training data "
                                    f"(known tags: {', '.join(label_names)})")
            self.tags.append([index[t] for t in s.tags])
        words = [s.words for s in sentences]
        enc = tokenizer.encode_batch(words, max_length=max_length, return_word_ids=True,
                                     is_pretokenized=True)
        full = tokenizer.encode_batch(words, return_word_ids=True, is_pretokenized=True)
        self.ids, self.types = enc["input_ids"], enc["token_type_ids"]
        self.word_ids = [[-1 if w is None else w for w in row] for row in enc["word_ids"]]
        self.truncated = sum(len(a) < len(b) for a, b in zip(self.ids, full["input_ids"]))
        seen_full = [len({w for w in row if w is not None}) for row in full["word_ids"]]
        seen = [len({w for w in row if w >= 0}) for row in self.word_ids]
        if self.truncated:
            log.warning("%d of %d sentences were truncated to %d tokens; %d words lost their tokens "
                        "and are tagged O", self.truncated, len(sentences), max_length,
                        sum(seen_full) - sum(seen))
        self.unseen = sum(len(s.words) for s in sentences) - sum(seen_full)
        if self.unseen:
            log.info("%d words give no token (e.g. zero-width characters); they are tagged O",
                     self.unseen)
        self.tok = tokenizer
        super().__init__([len(x) for x in self.ids], batch_size=batch_size, seed=seed,
                         micro_per_step=micro_per_step)

    def collate(self, idx) -> dict[str, torch.Tensor]:
        b = self.tok.pad([self.ids[i] for i in idx], token_type_ids=[self.types[i] for i in idx])
        T = b["input_ids"].shape[1]
        word_ids = torch.full((len(idx), T), -1, dtype=torch.long)
        labels = torch.full((len(idx), T), IGNORE_INDEX, dtype=torch.long)
        n_words = [len(self.tags[i]) for i in idx]
        word_labels = torch.full((len(idx), max(n_words)), IGNORE_INDEX, dtype=torch.long)
        for r, i in enumerate(idx):
            wids, tags = self.word_ids[i], self.tags[i]
            word_ids[r, :len(wids)] = torch.tensor(wids, dtype=torch.long)
            word_labels[r, :len(tags)] = torch.tensor(tags, dtype=torch.long)
            prev = -1
            for t, w in enumerate(wids):
                if w >= 0 and w != prev:  # the first sub-token of word w
                    labels[r, t] = tags[w] if tags[w] < self.n_labels else self.outside
                prev = w
        b.update(labels=labels, word_ids=word_ids, word_labels=word_labels,
                 n_words=torch.tensor(n_words, dtype=torch.long))
        return b
