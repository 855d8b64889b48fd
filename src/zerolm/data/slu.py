"""Joint intent detection and slot filling data (spoken language understanding): the
files ATIS and SNIPS come in (Goo et al., 2018; JointBERT), and their batches.

    # intent = atis_flight
    i	O
    want	O
    to	O
    fly	O
    from	O
    boston	B-fromloc.city_name
    <blank line>

Each utterance is a line `# intent = NAME`, then one `word<TAB>tag` line per word (slot
tags in IOB2, read as the tagging task reads CoNLL files: a stray `I-X` becomes `B-X`
with a warning), then a blank line. Only lines that start with `# intent = ` are intent
lines, so a word `#` stays a word. Files to predict on may leave out the intent lines
and the tag column.

The intents and slot tags are fixed by the training data (`Labels`). A dev or test
label that training never had (ATIS dev has the intent `atis_airfare#atis_flight_time`
and the tag `I-return_date.day_number`) is not refused: it gets an id past the trained
ones, which no prediction can take, so it is scored as an error and listed in the report.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from zerolm.data.conll import TAG_PATTERN, Sentence, TaggingBatches, repair_iob2
from zerolm.data.masking import IGNORE_INDEX
from zerolm.data.text import iter_lines, resolve_data_path
from zerolm.errors import DataError

log = logging.getLogger(__name__)

INTENT_PREFIX = "# intent = "


@dataclass
class Utterance:
    intent: str | None  # None where the file gives none (prediction input)
    sentence: Sentence  # the words, their slot tags (None without a tag column), file and lines

    @property
    def words(self) -> list[str]:
        return self.sentence.words


def read_intent_slots(path: str | Path, *, labelled: bool = True, scheme: str = "iob2") -> list[Utterance]:
    """The utterances of a joint intent + slot file.

    `labelled` (training and evaluation files): every utterance needs its intent line and
    every word its tag. Otherwise both are optional (kept where given). A malformed line
    raises DataError naming the file and line.
    """
    p = resolve_data_path(path)
    out: list[Utterance] = []
    intent: tuple[str, int] | None = None  # (name, line) of the pending utterance
    words: list[str] = []
    tags: list[str | None] = []
    lines: list[int] = []

    def close() -> None:
        nonlocal intent
        if words:
            if labelled and intent is None:
                raise DataError(f"{p}:{lines[0]}: utterance without an intent line: expected "
                                f"'{INTENT_PREFIX}NAME' before its first word")
            kept = list(tags) if all(t is not None for t in tags) else None
            out.append(Utterance(intent[0] if intent else None, Sentence(list(words), kept, str(p), list(lines))))
        elif intent is not None:
            raise DataError(f"{p}:{intent[1]}: intent line without words after it")
        intent = None
        words.clear()
        tags.clear()
        lines.clear()

    for lineno, line in iter_lines(p):
        if not line.strip():
            close()
            continue
        if line.startswith(INTENT_PREFIX):
            if words:  # no blank line before it: the previous utterance ends here
                close()
            elif intent is not None:
                raise DataError(f"{p}:{lineno}: a second intent line for the utterance of line {intent[1]}")
            name = line[len(INTENT_PREFIX):].strip()
            if not name:
                raise DataError(f"{p}:{lineno}: empty intent name")
            intent = (name, lineno)
            continue
        cols = line.split("\t") if "\t" in line else line.split()
        if len(cols) > 2 or (labelled and len(cols) != 2):
            raise DataError(f"{p}:{lineno}: expected 'word<TAB>slot-tag' (2 columns), found {len(cols)}: "
                            f"{line!r}" + (f"; intent lines start with {INTENT_PREFIX!r}"
                                           if line.lstrip().startswith("#") else ""))
        word = cols[0].strip()
        if not word:
            raise DataError(f"{p}:{lineno}: empty word")
        tag = cols[1].strip() if len(cols) == 2 else None
        if tag is not None and not TAG_PATTERN.fullmatch(tag):
            raise DataError(f"{p}:{lineno}: malformed slot tag {tag!r}: expected O, B-TYPE or I-TYPE")
        words.append(word)
        tags.append(tag)
        lines.append(lineno)
    close()
    if not out:
        raise DataError(f"{p}: no utterances (expected '{INTENT_PREFIX}NAME', then one word<TAB>tag "
                        "per line, then a blank line)")
    repair_iob2([u.sentence for u in out], p, scheme)
    return out


def is_intent_slots(path: str | Path) -> bool:
    """Whether a file is in the joint format (an intent line or a tab among its first
    lines) rather than one utterance per line."""
    seen = 0
    for _, line in iter_lines(path):
        if line.startswith(INTENT_PREFIX) or "\t" in line:
            return True
        seen += bool(line.strip())
        if seen == 50:
            break
    return False


class Labels:
    """Label name <-> id, the ids 0..known-1 fixed by the training data.

    `id` gives a name training never had the next id past the known ones (in the order
    such names are met), so data with a label unseen in training can be batched and
    scored: no prediction takes those ids. The known part never changes.
    """

    def __init__(self, known: list[str]):
        self.names = list(known)
        self.known = len(self.names)
        self._index = {n: i for i, n in enumerate(self.names)}

    def id(self, name: str) -> int:
        if name not in self._index:
            self._index[name] = len(self.names)
            self.names.append(name)
        return self._index[name]

    @property
    def trained(self) -> list[str]:
        return self.names[:self.known]


class IntentSlotBatches(TaggingBatches):
    """Utterances tokenized once, in length-bucketed batches: the tagging batch of their
    words (TaggingBatches: input_ids, attention_mask, token_type_ids, labels, word_ids,
    word_labels, n_words), plus

    - intent_labels (B,): the intent id to learn; IGNORE_INDEX for an intent unseen in
      training (no loss) or none given
    - intent_ids (B,): the gold intent id to score, unseen ones included (ids from the
      number of trained intents up); -1 where none is given

    Slot tags unseen in training keep their own ids in `word_labels` (see TaggingBatches).
    """

    def __init__(self, utterances: list[Utterance], intents: Labels, tags: Labels, tokenizer, *,
                 max_length: int, batch_size: int, seed: int, micro_per_step: int = 1):
        sentences = [u.sentence for u in utterances]
        tag_ids = [[tags.id(t) for t in s.tags] if s.tags is not None else [IGNORE_INDEX] * len(s.words)
                   for s in sentences]
        self.intent_ids = [intents.id(u.intent) if u.intent is not None else -1 for u in utterances]
        new_intents = Counter(intents.names[i] for i in self.intent_ids if i >= intents.known)
        new_tags = Counter(tags.names[i] for row in tag_ids for i in row if i >= tags.known)
        if new_intents or new_tags:
            found = []
            if new_intents:
                found.append(f"intents {dict(new_intents)} ({sum(new_intents.values())} utterances)")
            if new_tags:
                found.append(f"slot tags {dict(new_tags)} ({sum(new_tags.values())} words)")
            log.warning("%s: labels unseen in training, scored as errors: %s",
                        sentences[0].source, "; ".join(found))
        self.known_intents = intents.known
        super().__init__(sentences, tags.trained, tokenizer, max_length=max_length, batch_size=batch_size,
                         seed=seed, micro_per_step=micro_per_step, tag_ids=tag_ids)

    def collate(self, idx) -> dict[str, torch.Tensor]:
        b = super().collate(idx)
        ids = torch.tensor([self.intent_ids[i] for i in idx], dtype=torch.long)
        b["intent_ids"] = ids
        b["intent_labels"] = ids.masked_fill((ids < 0) | (ids >= self.known_intents), IGNORE_INDEX)
        return b
