"""Joint intent + slot files (ATIS / SNIPS format): reading, errors with file:line, and
batches in which intents and tags unseen in training are kept for scoring, never learnt."""

import logging

import pytest

from zerolm.data.conll import tag_names
from zerolm.data.masking import IGNORE_INDEX
from zerolm.data.slu import IntentSlotBatches, Labels, is_intent_slots, read_intent_slots
from zerolm.errors import DataError
from zerolm.tokenizers import Tokenizer

GOOD = ("# intent = book_flight\nfly\tO\nto\tO\nnew\tB-city\nharlow\tI-city\n\n"
        "# intent = play_music\n#\tO\nplay\tO\nblue\tB-song\n")  # a word '#'; no final blank line


@pytest.fixture(scope="module")
def wordpiece():
    from zerolm.data.text import resolve_data_path

    return Tokenizer.train("wordpiece", [resolve_data_path("pkg:quickstart/corpus.txt")], 400)


def _write(tmp_path, text, name="u.txt"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_reads_intents_words_and_tags(tmp_path):
    u = read_intent_slots(_write(tmp_path, GOOD))
    assert [x.intent for x in u] == ["book_flight", "play_music"]
    assert u[0].words == ["fly", "to", "new", "harlow"] and u[0].sentence.tags == ["O", "O", "B-city", "I-city"]
    assert u[1].words == ["#", "play", "blue"] and u[1].sentence.where(0).endswith("u.txt:8")
    assert is_intent_slots(tmp_path / "u.txt")
    assert not is_intent_slots(_write(tmp_path, "fly to boston\nplay a song\n", "plain.txt"))


@pytest.mark.parametrize("text, where, what", [
    ("fly\tO\n\n", ":1", "without an intent line"),
    ("# intent = a\nfly\tO\tO\n", ":2", "2 columns"),
    ("# intent = a\nfly\n", ":2", "2 columns"),
    ("# intent = a\nfly\tX-city\n", ":2", "malformed slot tag"),
    ("# intent = a\n\n# intent = b\nfly\tO\n", ":1", "intent line without words"),
    ("# intent = a\n# intent = b\nfly\tO\n", ":2", "second intent line"),
    ("# intent =  \nfly\tO\n", ":1", "empty intent"),
    ("#intent = a\nfly\tO\n", ":1", "intent lines start with '# intent = '"),
])
def test_malformed_lines_name_file_and_line(tmp_path, text, where, what):
    p = _write(tmp_path, text)
    with pytest.raises(DataError, match=what) as e:
        read_intent_slots(p)
    assert f"{p}{where}" in str(e.value)


def test_stray_inside_tag_is_read_as_a_beginning_with_a_warning(tmp_path, caplog):
    p = _write(tmp_path, "# intent = a\nfly\tO\nto\tO\nharlow\tI-city\n\n")
    with caplog.at_level(logging.WARNING):
        (u,) = read_intent_slots(p)
    assert u.sentence.tags == ["O", "O", "B-city"]
    assert f"{p}:4" in caplog.text and "I-city" in caplog.text


def test_prediction_input_needs_neither_intent_lines_nor_tags(tmp_path):
    p = _write(tmp_path, "fly\nto\nharlow\n\n# intent = x\nplay\tO\nblue\tB-song\n\n")
    u = read_intent_slots(p, labelled=False)
    assert [x.intent for x in u] == [None, "x"] and u[0].sentence.tags is None
    assert u[1].sentence.tags == ["O", "B-song"]


def test_labels_unseen_in_training_keep_ids_past_the_trained_ones(tmp_path, wordpiece, caplog):
    train = read_intent_slots(_write(tmp_path, GOOD, "train.txt"))
    dev = read_intent_slots(_write(tmp_path, "# intent = book_flight\nfly\tO\nto\tO\nwestfell\tB-city\n\n"
                                   "# intent = cancel\nfly\tO\ntoday\tB-date\nnow\tI-date\n\n", "dev.txt"))
    intents = Labels(sorted({u.intent for u in train}))
    tags = Labels(["O", "B-city", "I-city", "B-song", "I-song"])
    with caplog.at_level(logging.WARNING):
        data = IntentSlotBatches(dev, intents, tags, wordpiece, max_length=32, batch_size=4, seed=0)
    assert "cancel" in caplog.text and "B-date" in caplog.text and "I-date" in caplog.text
    assert intents.trained == ["book_flight", "play_music"] and intents.names[2:] == ["cancel"]
    assert tags.names[5:] == ["B-date", "I-date"]
    b = data.collate([0, 1])
    assert b["intent_ids"].tolist() == [0, 2]  # the unseen intent keeps its own id, to be scored
    assert b["intent_labels"].tolist() == [0, IGNORE_INDEX]  # ... but is never learnt
    assert b["word_labels"][1, :3].tolist() == [0, 5, 6]
    first = b["labels"][1][b["labels"][1] != IGNORE_INDEX]
    assert first.tolist() == [0, 0, 0]  # unseen tags are learnt as O (a dev loss only)
    assert max(b["labels"].max().item(), 0) < len(tags.trained)


def test_atis_dev_has_one_intent_training_lacks_and_no_tag(data_root):
    train, dev = read_intent_slots(data_root / "atis/train.txt"), read_intent_slots(data_root / "atis/dev.txt")
    assert (len(train), len(dev)) == (4478, 500)
    intents = Labels(sorted({u.intent for u in train}))
    assert len(intents.trained) == 21
    assert {u.intent for u in dev} - set(intents.trained) == {"atis_airfare#atis_flight_time"}
    # no training word is tagged I-return_date.day_number, but B-return_date.day_number is:
    # the tag set has B- and I- of every type, so the model can predict it (JointBERT,
    # whose tag set is the tags seen, maps it to UNK)
    seen = {t for u in train for t in u.sentence.tags}
    names = tag_names([u.sentence for u in train])
    assert {t for u in dev for t in u.sentence.tags} - seen == {"I-return_date.day_number"}
    assert {t for u in dev for t in u.sentence.tags} <= set(names) and len(names) == 2 * 79 + 1
