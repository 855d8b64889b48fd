"""CoNLL reading (columns, IOB1 -> IOB2, errors with file:line) and tagging batches
(labels on first sub-tokens, word ids, truncation), plus pre-split tokenizer input."""

import logging

import pytest
import torch

from zerolm.data.conll import TaggingBatches, is_conll, read_conll, tag_names
from zerolm.errors import DataError
from zerolm.tokenizers import Tokenizer

CORPUS = "pkg:quickstart/corpus.txt"


@pytest.fixture(scope="module")
def wordpiece():
    from zerolm.data.text import resolve_data_path

    return Tokenizer.train("wordpiece", [resolve_data_path(CORPUS)], 400)


@pytest.fixture(scope="module")
def bpe():
    from zerolm.data.text import resolve_data_path

    return Tokenizer.train("bpe", [resolve_data_path(CORPUS)], 400)


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_reads_tab_and_space_columns_with_docstart_and_iob1_conversion(tmp_path):
    # the original CoNLL-2003 layout: word POS chunk NER, space-separated, IOB1
    p = _write(tmp_path, "eng.train", "-DOCSTART- -X- O O\n\n"
               "EU NNP I-NP I-ORG\nrejects VBZ I-VP O\nGerman JJ I-NP I-MISC\n\n"
               "Peter NNP I-NP I-PER\nBlackburn NNP I-NP I-PER\nand CC O O\nJohn NNP I-NP I-PER\n"
               "Smith NNP I-NP I-PER\nJane NNP I-NP B-PER\n\n\n")
    sents = read_conll(p, tag_column=3, scheme="iob1")
    assert [s.words for s in sents] == [["EU", "rejects", "German"],
                                        ["Peter", "Blackburn", "and", "John", "Smith", "Jane"]]
    assert sents[0].tags == ["B-ORG", "O", "B-MISC"]
    # IOB1's B- only separates two adjacent entities of one type; IOB2 begins every entity with B-
    assert sents[1].tags == ["B-PER", "I-PER", "O", "B-PER", "I-PER", "B-PER"]
    assert sents[1].where(0) == f"{p}:7"
    assert tag_names(sents) == ["O", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    # tab-separated, a lone tab between sentences (as upstream WNUT-17), no trailing blank line
    t = _write(tmp_path, "wnut.txt", "@paul\tO\nin\tO\nNew\tB-location\nYork\tI-location\n\t\nok\tO")
    sents = read_conll(t)
    assert [s.tags for s in sents] == [["O", "O", "B-location", "I-location"], ["O"]]
    assert is_conll(p) and is_conll(t)


def test_original_conll2003_dev_in_iob1_reads_as_the_shipped_iob2_file(data_root):
    orig = read_conll(data_root / "conll2003/original/eng.testa", tag_column=3, scheme="iob1")
    shipped = read_conll(data_root / "conll2003/dev.txt")
    assert len(orig) == len(shipped) == 3250
    assert [(s.words, s.tags) for s in orig] == [(s.words, s.tags) for s in shipped]


def test_malformed_tag_missing_column_and_empty_files_name_file_and_line(tmp_path):
    p = _write(tmp_path, "bad.txt", "Anna\tB-PER\nlives\tO\n\nin\tO\nRome\tB_LOC\n")
    with pytest.raises(DataError, match=r"bad\.txt:5: malformed tag 'B_LOC'"):
        read_conll(p)
    p = _write(tmp_path, "lower.txt", "Anna\tb-PER\n")
    with pytest.raises(DataError, match=r"lower\.txt:1: malformed tag 'b-PER'"):
        read_conll(p)
    p = _write(tmp_path, "cols.txt", "Anna NNP B-PER\nlives VBZ\n")
    with pytest.raises(DataError, match=r"cols\.txt:2: malformed tag 'VBZ'"):
        read_conll(p, tag_column=-1)
    with pytest.raises(DataError, match=r"cols\.txt:2: expected at least 3 columns"):
        read_conll(p, tag_column=2)
    with pytest.raises(DataError, match=r"empty\.txt: the file is empty"):
        read_conll(_write(tmp_path, "empty.txt", "\n\n"))
    with pytest.raises(DataError, match=r"docs\.txt: no sentences"):
        read_conll(_write(tmp_path, "docs.txt", "-DOCSTART- O\n\n-DOCSTART- O\n"))


def test_stray_i_tag_in_iob2_is_read_as_b_with_a_warning(tmp_path, caplog):
    p = _write(tmp_path, "stray.txt", "in\tO\nParis\tI-LOC\nand\tO\nRome\tB-LOC\nnorth\tI-LOC\n")
    with caplog.at_level(logging.WARNING, logger="zerolm.data.conll"):
        (s,) = read_conll(p)
    assert s.tags == ["O", "B-LOC", "O", "B-LOC", "I-LOC"]
    assert "1 tags I-X did not continue" in caplog.text and f"{p}:2" in caplog.text


def test_dev_tag_unseen_in_training_names_file_and_line(tmp_path, wordpiece):
    train = read_conll(_write(tmp_path, "train.txt", "Anna\tB-PER\n"))
    dev = read_conll(_write(tmp_path, "dev.txt", "the\tO\nriver\tB-LOC\n"))
    with pytest.raises(DataError, match=r"dev\.txt:2: tag 'B-LOC' does not occur in the training data"):
        TaggingBatches(dev, tag_names(train), wordpiece, max_length=16, batch_size=2, seed=0)


def test_labels_sit_on_the_first_sub_token_of_each_word(tmp_path, wordpiece):
    p = _write(tmp_path, "s.txt", "Zyxwvut\tB-PER\nQuibbles\tI-PER\nvisited\tO\nthe\tO\nriver\tO\n"
               "Brightwaterford\tB-LOC\n.\tO\n\nrain\tO\n")
    sents = read_conll(p)
    names = tag_names(sents)
    data = TaggingBatches(sents, names, wordpiece, max_length=64, batch_size=2, seed=0)
    b = data.collate([0, 1])
    ids, labels, word_ids = b["input_ids"][0], b["labels"][0], b["word_ids"][0]
    n_real = int(b["attention_mask"][0].sum())
    assert ids[0] == wordpiece.cls_id and ids[n_real - 1] == wordpiece.sep_id
    assert labels[0] == labels[n_real - 1] == -100 and word_ids[0] == word_ids[n_real - 1] == -1
    pieces_per_word = torch.bincount(word_ids[word_ids >= 0], minlength=7)
    assert pieces_per_word.min() >= 1 and pieces_per_word.max() > 1  # rare names are split
    for w, word in enumerate(sents[0].words):
        pos = (word_ids == w).nonzero().flatten().tolist()
        assert wordpiece.decode(ids[pos].tolist()).replace(" ", "") == word.lower()
        assert labels[pos[0]] == names.index(sents[0].tags[w])  # the first piece carries the tag
        assert (labels[pos[1:]] == -100).all()  # the others are ignored by the loss
    assert (b["labels"] != -100).sum() == 7 + 1  # one label per word in the batch
    assert b["word_labels"].tolist() == [[names.index(t) for t in sents[0].tags],
                                         [names.index("O")] + [-100] * 6]
    assert b["n_words"].tolist() == [7, 1]
    assert (b["labels"][1, int(b["attention_mask"][1].sum()):] == -100).all()  # padding


def test_truncation_is_counted_with_a_warning_and_keeps_every_gold_word(tmp_path, wordpiece, caplog):
    long = "".join(f"word{i}\tO\n" for i in range(30)) + "\n"
    p = _write(tmp_path, "long.txt", long + "short\tO\n\n" + long)
    sents = read_conll(p)
    with caplog.at_level(logging.WARNING, logger="zerolm.data.conll"):
        data = TaggingBatches(sents, tag_names(sents), wordpiece, max_length=12, batch_size=4, seed=0)
    assert data.truncated == 2
    assert "2 of 3 sentences were truncated to 12 tokens" in caplog.text
    b = data.collate([0, 1, 2])
    assert b["input_ids"].shape[1] == 12 and b["word_labels"].shape == (3, 30)
    assert b["n_words"].tolist() == [30, 1, 30]
    lost = 30 - int(b["word_ids"][0].max()) - 1
    assert lost > 0 and f"{2 * lost} words lost their tokens" in caplog.text


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_pretokenized_input_encodes_like_running_text(kind, wordpiece, bpe):
    tok = wordpiece if kind == "wordpiece" else bpe
    sents = [["The", "river", "runs", "past", "the", "market"], ["rain"]]
    enc = tok.encode_batch(sents, is_pretokenized=True, return_word_ids=True)
    assert enc["input_ids"] == tok.encode_batch([" ".join(s) for s in sents])["input_ids"]
    special = {None} if kind == "wordpiece" else set()
    assert set(enc["word_ids"][0]) - special == set(range(6))
    # the default (running text) is unchanged, and a string is not a list of words
    assert tok.encode_batch(["rain"])["input_ids"] == enc["input_ids"][1:]
    with pytest.raises(TypeError, match="list of words"):
        tok.encode_batch(["a sentence"], is_pretokenized=True)
