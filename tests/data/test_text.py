"""Corpus reading: errors name the file; tables give their text column."""

import gzip

import pytest

from zerolm.data.text import iter_records, read_text, resolve_data_path
from zerolm.errors import DataError


def test_empty_corpus_fails_naming_the_file(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("\n  \n")
    with pytest.raises(DataError, match=r"empty\.txt.*empty"):
        read_text(p)


def test_non_utf8_corpus_fails_naming_file_and_line(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("fine line\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt:2: not valid UTF-8"):
        read_text(p)


def test_missing_file_says_where_paths_resolve(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_text(tmp_path / "nope.txt")


def test_gzip_and_tsv_text_column(tmp_path):
    p = tmp_path / "t.tsv.gz"
    with gzip.open(p, "wt", encoding="utf-8") as fh:
        fh.write("text\tlabel\nhello world\tpositive\nbad movie\tnegative\n")
    assert [t for _, t in iter_records(p)] == ["hello world", "bad movie"]


def test_tsv_with_wrong_field_count_names_the_line(tmp_path):
    p = tmp_path / "t.tsv"
    p.write_text("text\tlabel\nok\tpositive\nbroken line\n")
    with pytest.raises(DataError, match=r"t\.tsv:3: expected 2"):
        list(iter_records(p))


def test_package_paths_resolve():
    p = resolve_data_path("pkg:quickstart/corpus.txt")
    assert p.is_file()


BOM = "\ufeff"


@pytest.mark.parametrize("name,content", [
    ("t.tsv", "text\tlabel\ngood film\tpos\n"),
    ("t.csv", "text,label\ngood film,pos\n"),
    ("t.jsonl", '{"text": "good film", "label": "pos"}\n'),
])
def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path, name, content):
    # Excel's "CSV UTF-8" and Notepad start the file with a BOM
    p = tmp_path / name
    p.write_text(BOM + content, encoding="utf-8")
    assert [t for _, t in iter_records(p)] == ["good film"]
    gz = tmp_path / (name + ".gz")
    with gzip.open(gz, "wt", encoding="utf-8") as fh:
        fh.write(BOM + content)
    assert [t for _, t in iter_records(gz)] == ["good film"]


def test_a_byte_order_mark_is_not_text(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text(BOM + "first line\nsecond\n", encoding="utf-8")
    assert read_text(p) == "first line\nsecond\n"
    q = tmp_path / "mid.txt"
    q.write_text("a\n" + BOM + "b\n", encoding="utf-8")  # only a leading BOM is a mark
    assert read_text(q) == "a\n" + BOM + "b\n"


def test_csv_that_is_not_utf8_names_the_file(tmp_path):
    p = tmp_path / "latin1.csv"
    p.write_bytes("text,label\ncaf\xe9,pos\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.csv: not valid UTF-8"):
        list(iter_records(p))
