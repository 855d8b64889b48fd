"""Labelled classification tables: columns, BOMs and empty texts."""

import logging

import pytest

from zerolm.data.conll import read_conll
from zerolm.data.labelled import read_examples
from zerolm.errors import DataError


def test_a_bom_before_the_header_still_finds_the_text_column(tmp_path):
    p = tmp_path / "train.tsv"
    p.write_text("\ufefftext\tlabel\ngreat\tpos\nawful\tneg\n", encoding="utf-8")
    assert [(e.text, e.label) for e in read_examples(p)] == [("great", "pos"), ("awful", "neg")]


def test_empty_texts_are_counted_in_a_warning_with_the_first_line(tmp_path, caplog):
    p = tmp_path / "train.tsv"
    p.write_text("text\tlabel\ngreat\tpos\n\tneg\nfine\tpos\n  \tpos\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="zerolm.data.labelled"):
        examples = read_examples(p)
    assert len(examples) == 4  # kept: the warning says where to look
    assert f"2 of 4 examples have an empty 'text' (first at {p}:3)" in caplog.text


def test_no_warning_when_every_text_is_there(tmp_path, caplog):
    p = tmp_path / "train.csv"
    p.write_text("text,label\ngreat,pos\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="zerolm.data.labelled"):
        read_examples(p)
    assert not caplog.records


def test_a_missing_column_names_the_columns_there_are(tmp_path):
    p = tmp_path / "train.tsv"
    p.write_text("sentence\tlabel\ngreat\tpos\n", encoding="utf-8")
    with pytest.raises(DataError,
                       match=r"train\.tsv:2: no column 'text' \(columns: sentence, label\)"):
        read_examples(p)


def test_conll_with_a_bom_reads_the_first_word(tmp_path):
    p = tmp_path / "ner.txt"
    p.write_text("\ufeffParis B-LOC\nis O\n", encoding="utf-8")
    (s,) = read_conll(p)
    assert s.words == ["Paris", "is"] and s.tags == ["B-LOC", "O"]
