"""zerolm.tokenizers.Tokenizer: training each kind, files on disk, encoding rules, padding,
errors on bad input, and id parity with Hugging Face BertTokenizerFast."""

from __future__ import annotations

import argparse
import gzip
import json

import pytest
import torch

from zerolm.errors import DataError
from zerolm.tokenizers import Tokenizer

TEXT = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.
The quick brown fox jumps over the lazy dog; the dog sleeps!
A river runs through the old town, past the market and the library.
Naïve café owners serve crème brûlée -- and 42 other desserts?
Bakers rise early: the bread is warm by six o'clock & sold by $3.
  Indented   line   with    spaces.
"""

SENTENCES = [
    "First Citizen: before we proceed any further, hear me speak.",
    "The quick brown fox jumps over the lazy dog.",
    "NAÏVE CAFÉ Owners SERVE Crème Brûlée!",
    "Zyxwvut quibbles flabbergasted the unknown words.",
    "don't stop-believing (ok?) [really] {braces} <angle>",
    "3.14159 is pi; e=2.71828 and 1,000,000 is a million",
    "  leading and   repeated   spaces  ",
    "tabs\there and\nnewlines there",
    "émigré résumé naïveté coöperate",
    "Ångström Øresund straße façade",
    "中文字符 mixed with English",
    "emoji 😀 and symbols © ® ™ §",
    "hyphen-ated em—dash en–dash … ellipsis",
    "ALLCAPS lowercase MiXeD",
    "a",
    "",
    "!!!???...",
    "the the the the the the the the the the the the",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "Speak, speak. All: the river runs past the market.",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(TEXT * 5, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def wordpiece(corpus):
    return Tokenizer.train("wordpiece", [corpus], 300, min_frequency=1)


# ------------------------------------------------------------------ training / files
@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "char"])
def test_save_then_load_gives_identical_ids(kind, corpus, tmp_path):
    tok = Tokenizer.train(kind, [corpus], 300, min_frequency=1)
    tok.save(tmp_path / "tok")
    again = Tokenizer.load(tmp_path / "tok")
    assert again.kind == tok.kind == kind
    assert again.vocab_size == tok.vocab_size == len(again)
    assert again.special_ids == tok.special_ids and again.pad_id == tok.pad_id
    assert again.lowercase == tok.lowercase
    lines = TEXT.splitlines(keepends=True)
    assert again.encode_batch(lines)["input_ids"] == tok.encode_batch(lines)["input_ids"]
    assert (tmp_path / "tok" / "vocab.txt").exists() == (kind == "wordpiece")
    conf = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert conf["zerolm_kind"] == kind and "tokenizer_class" in conf
    assert not list((tmp_path / "tok").glob(".*"))  # no temporary files left behind


def test_training_reads_gzipped_files(corpus, tmp_path):
    gz = tmp_path / "corpus.txt.gz"
    gz.write_bytes(gzip.compress(corpus.read_bytes()))
    # bpe: WordPiece training is not deterministic (huggingface/tokenizers#1794)
    plain = Tokenizer.train("bpe", [corpus], 300, min_frequency=1)
    zipped = Tokenizer.train("bpe", [gz], 300, min_frequency=1)
    assert zipped.backend.get_vocab() == plain.backend.get_vocab()


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "char"])
def test_empty_and_non_utf8_files_raise_data_error_naming_the_file(kind, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.txt"):
        Tokenizer.train(kind, [empty], 100)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\n\xff\xfe\xfa\n")
    with pytest.raises(DataError, match=r"bad\.txt:2.*UTF-8"):
        Tokenizer.train(kind, [bad], 100)


def test_unknown_kind_and_no_files_are_errors(corpus):
    with pytest.raises(ValueError, match="unknown tokenizer kind 'sentencepiece'"):
        Tokenizer.train("sentencepiece", [corpus], 100)
    with pytest.raises(DataError, match="no training files"):
        Tokenizer.train("bpe", [], 100)


def test_loading_a_directory_without_a_tokenizer_names_it(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path)):
        Tokenizer.load(tmp_path)
    with pytest.raises(DataError, match="missing"):
        Tokenizer.load(tmp_path / "missing")


# ------------------------------------------------------------------ char
def test_char_vocab_is_sorted_characters_then_specials(tmp_path):
    path = tmp_path / "shakespeare.txt"
    path.write_text(TEXT, encoding="utf-8")
    tok = Tokenizer.train("char", [path], 0)
    chars = sorted(set(TEXT))  # nanoGPT's char vocabulary
    assert "\n" in chars and " " in chars
    assert [tok.token_to_id(c) for c in chars] == list(range(len(chars)))
    assert tok.vocab_size == len(chars) + 2
    assert tok.unk_id == len(chars) and tok.eos_id == len(chars) + 1
    assert tok.encode("Speak") == [chars.index(c) for c in "Speak"]


def test_char_round_trips_newlines_and_runs_of_spaces(corpus, tmp_path):
    Tokenizer.train("char", [corpus], 0).save(tmp_path / "char")
    tok = Tokenizer.load(tmp_path / "char")
    text = "All:\n\n  Speak,   speak.\n \nthe end \n"
    ids = tok.encode(text)
    assert len(ids) == len(text) and tok.unk_id not in ids
    assert tok.decode(ids) == text
    assert tok.decode_batch([ids, tok.encode("  ")]) == [text, "  "]


# ------------------------------------------------------------------ bpe
def test_bpe_round_trips_any_text_and_adds_no_special_tokens(corpus):
    tok = Tokenizer.train("bpe", [corpus], 300, min_frequency=1)
    text = "Crème brûlée,\n  twice!\t😀 中文 never-seen-before"
    ids = tok.encode(text)
    assert tok.decode(ids) == text  # byte level: no unknown tokens
    assert tok.eos_id is not None and tok.eos_id not in ids
    assert tok.bos_id == tok.eos_id == tok.pad_id == tok.token_to_id("<|endoftext|>")
    assert tok.cls_id is None and tok.mask_id is None
    assert tok.special_ids == frozenset({tok.eos_id})


# ------------------------------------------------------------------ wordpiece
def test_wordpiece_specials_and_pair_encoding(wordpiece):
    tok = wordpiece
    assert [tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id] == [0, 1, 2, 3, 4]
    assert tok.special_ids == frozenset(range(5)) and tok.lowercase
    a, b = tok.encode("the river runs"), tok.encode("past the market")
    enc = tok.encode_batch(["the river runs"], ["past the market"])
    ids, types = enc["input_ids"][0], enc["token_type_ids"][0]
    assert ids == a + b[1:]  # [CLS] A [SEP] B [SEP]
    assert ids[0] == tok.cls_id and ids[len(a) - 1] == tok.sep_id and ids[-1] == tok.sep_id
    assert types == [0] * len(a) + [1] * (len(b) - 1)
    assert tok.encode("the river runs", "past the market") == ids


def test_truncation_keeps_special_tokens(wordpiece):
    tok = wordpiece
    long = "the quick brown fox jumps over the lazy dog " * 10
    cut = tok.encode(long, max_length=12)
    assert len(cut) == 12 and cut[0] == tok.cls_id and cut[-1] == tok.sep_id
    assert cut[:-1] == tok.encode(long)[:11]
    assert len(tok.encode(long, add_special_tokens=False, max_length=12)) == 12
    # pairs: longest first, so the short second sentence survives whole
    short = "the dog"
    ids = tok.encode_batch([long], [short], max_length=16)["input_ids"][0]
    assert len(ids) == 16 and ids.count(tok.sep_id) == 2 and ids[-1] == tok.sep_id
    assert ids[-len(tok.encode(short)) + 1:] == tok.encode(short)[1:]
    assert tok.encode("the dog", max_length=50) == tok.encode("the dog")  # no padding
    # truncation is per call: the next call without max_length is whole again
    assert len(tok.encode(long)) > 12
    with pytest.raises(ValueError, match="max_length=2"):
        tok.encode(long, max_length=2)


def test_word_ids_map_tokens_to_words(wordpiece):
    enc = wordpiece.encode_batch(["the flabbergasted dog"], return_word_ids=True)
    word_ids = enc["word_ids"][0]
    assert word_ids[0] is None and word_ids[-1] is None
    assert word_ids[1] == 0 and word_ids[-2] == 2 and set(word_ids[1:-1]) == {0, 1, 2}


def test_pad_right_pads_with_a_mask(wordpiece):
    tok = wordpiece
    texts = ["the dog", "the quick brown fox jumps", "a"]
    enc = tok.encode_batch(texts)
    batch = tok.pad(enc["input_ids"], token_type_ids=enc["token_type_ids"])
    lens = [len(r) for r in enc["input_ids"]]
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, max(lens))
    assert batch["input_ids"].dtype == torch.long
    for i, n in enumerate(lens):
        assert batch["input_ids"][i, :n].tolist() == enc["input_ids"][i]
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (max(lens) - n)
        assert (batch["input_ids"][i, n:] == tok.pad_id).all()
        assert (batch["token_type_ids"][i, n:] == 0).all()
    assert tok.pad(enc["input_ids"], pad_to_multiple_of=8)["input_ids"].shape[1] % 8 == 0
    assert tok.pad(enc["input_ids"], max_length=20)["input_ids"].shape == (3, 20)
    with pytest.raises(ValueError, match="truncate"):
        tok.pad(enc["input_ids"], max_length=2)
    called = tok(texts)
    assert torch.equal(called["input_ids"], batch["input_ids"])
    assert torch.equal(called["attention_mask"], batch["attention_mask"])
    assert tok.decode(called["input_ids"][0]) == "the dog"


def test_bpe_pads_with_eos(corpus):
    tok = Tokenizer.train("bpe", [corpus], 300, min_frequency=1)
    batch = tok(["the", "the quick brown fox"])
    assert batch["input_ids"][0, -1].item() == tok.eos_id and batch["attention_mask"][0, -1] == 0


# ------------------------------------------------------------------ loading other files
def test_loading_a_directory_with_only_vocab_txt(wordpiece, tmp_path):
    wordpiece.save(tmp_path / "full")
    only = tmp_path / "only"
    only.mkdir()
    (only / "vocab.txt").write_bytes((tmp_path / "full" / "vocab.txt").read_bytes())
    tok = Tokenizer.load(only)
    assert tok.kind == "wordpiece" and tok.lowercase and tok.vocab_size == wordpiece.vocab_size
    assert tok.special_ids == wordpiece.special_ids
    assert tok.encode_batch(SENTENCES, return_word_ids=True) == wordpiece.encode_batch(
        SENTENCES, return_word_ids=True)
    # a cased checkpoint says so in tokenizer_config.json
    (only / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    cased = Tokenizer.load(only)
    assert not cased.lowercase
    assert cased.encode("The", add_special_tokens=False) != tok.encode("The", add_special_tokens=False)


def test_tokenizer_json_with_baked_in_padding_and_truncation(wordpiece, tmp_path):
    """As in sentence-transformers/all-MiniLM-L6-v2: padding and truncation to 128 in the file."""
    raw = json.loads(wordpiece.backend.to_str())
    raw["truncation"] = {"direction": "Right", "max_length": 128, "strategy": "LongestFirst",
                         "stride": 0}
    raw["padding"] = {"strategy": {"Fixed": 128}, "direction": "Right", "pad_to_multiple_of": None,
                      "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"}
    (tmp_path / "tokenizer.json").write_text(json.dumps(raw))
    tok = Tokenizer.load(tmp_path / "tokenizer.json")
    assert tok.model_max_length == 128 and tok.kind == "wordpiece" and tok.lowercase
    assert tok.encode("the dog") == wordpiece.encode("the dog")  # not padded to 128
    long = "the dog " * 100
    assert len(tok.encode(long)) == 202  # not truncated to 128
    assert tok.backend.padding is None and tok.backend.truncation is None
    # a tokenizer_config.json model_max_length takes precedence, as in transformers
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 512}))
    assert Tokenizer.load(tmp_path).model_max_length == 512


def test_special_token_names_come_from_the_config(tmp_path):
    from tokenizers import Tokenizer as Backend
    from tokenizers import models

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "hello": 4, "<mask>": 5, "<sep>": 6}
    backend = Backend(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    (tmp_path / "tokenizer.json").write_text(backend.to_str())
    tok = Tokenizer.load(tmp_path)
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.unk_id) == (
        1, 0, 2, 0, 2, 5, 3)
    assert tok.kind == "other"
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(
        {"sep_token": {"content": "<sep>", "lstrip": False}}))
    assert Tokenizer.load(tmp_path).sep_id == 6


# ------------------------------------------------------------------ Hugging Face parity
def test_ids_match_hugging_face_bert_tokenizer(wordpiece, tmp_path):
    transformers = pytest.importorskip("transformers")
    wordpiece.save(tmp_path / "ours")
    only = tmp_path / "vocab_only"
    only.mkdir()
    (only / "vocab.txt").write_bytes((tmp_path / "ours" / "vocab.txt").read_bytes())
    # transformers 5 ignores BertTokenizerFast(vocab_file=...); from_pretrained reads vocab.txt
    hf = transformers.BertTokenizerFast.from_pretrained(str(only), do_lower_case=True)
    ours = Tokenizer.load(tmp_path / "ours")
    assert hf.vocab_size == ours.vocab_size
    unknown = 0
    for s in SENTENCES:
        want = hf(s)["input_ids"]
        assert ours.encode(s) == want, s
        assert wordpiece.encode(s) == want, s
        unknown += want.count(ours.unk_id)
        for n in (3, 8):
            assert ours.encode(s, max_length=n) == hf(s, truncation=True, max_length=n)["input_ids"], s
    assert unknown > 0  # the sentences did exercise [UNK]
    pairs = hf(SENTENCES[:5], SENTENCES[5:10], truncation=True, max_length=12)
    ours_pairs = ours.encode_batch(SENTENCES[:5], SENTENCES[5:10], max_length=12)
    assert ours_pairs["input_ids"] == pairs["input_ids"]
    assert ours_pairs["token_type_ids"] == pairs["token_type_ids"]


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "char"])
def test_hugging_face_auto_tokenizer_reads_our_files(kind, corpus, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = Tokenizer.train(kind, [corpus], 300, min_frequency=1)
    tok.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    texts = SENTENCES[:4] + ["All:\n  Speak, speak."]
    assert hf(texts)["input_ids"] == tok.encode_batch(texts)["input_ids"]
    assert hf.pad_token_id == tok.pad_id


# ------------------------------------------------------------------ CLI
def _cli(argv: list[str]) -> int:
    from zerolm.cli import tokenizer as verb

    parser = argparse.ArgumentParser(prog="zerolm")
    verb.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_trains_saves_and_encodes(corpus, tmp_path, capsys):
    out = tmp_path / "tok"
    assert _cli(["tokenizer", "train", "--kind", "wordpiece", "--files", str(corpus),
                 "--vocab-size", "200", "--min-frequency", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wordpiece" in printed and str(out) in printed and str(corpus) in printed
    tok = Tokenizer.load(out)
    first = tok.encode("First Citizen:")
    assert "'First Citizen:'" in printed and str([tok.id_to_token(i) for i in first]) in printed
    assert tok.lowercase and tok.vocab_size <= 200
    assert _cli(["tokenizer", "encode", str(out), "--text", "Hear me speak"]) == 0
    lines = capsys.readouterr().out.splitlines()
    ids = tok.encode("Hear me speak")
    assert lines[0].split() == ["id", "piece", "text"]
    rows = [ln.split() for ln in lines[1:1 + len(ids)]]
    assert [int(r[0]) for r in rows] == ids
    assert [r[1] for r in rows] == [tok.id_to_token(i) for i in ids]
    assert rows[0][1:] == ["[CLS]", '"[CLS]"'] and f"ids:  {ids}" in lines


def test_piece_text_reads_byte_level_pieces_as_text(tmp_path):
    # "café" is frequent enough to become one piece; "中文" occurs once, so its characters
    # stay split into byte pieces, which cannot be shown as characters on their own
    corpus = tmp_path / "c.txt"
    corpus.write_text("café au lait, a gripping story\n" * 20 + "中文\n", encoding="utf-8")
    tok = Tokenizer.train("bpe", [corpus], 300)
    texts = {tok.id_to_token(i): tok.piece_text(i) for i in tok.encode("café gripping 中")}
    assert texts["cafÃ©"] == "café" and texts["Ġgripping"] == " gripping"
    zhong = [t for p, t in texts.items() if p not in ("cafÃ©", "Ġgripping", "Ġ")]
    assert "".join(zhong).replace("> <", " ").replace("><", " ") == "<0xE4 0xB8 0xAD>"
    assert tok.piece_text(tok.eos_id) == "<|endoftext|>"
    text = "a gripping café au lait"  # no piece splits a character: the texts add up to the text
    assert "".join(tok.piece_text(i) for i in tok.encode(text)) == text


def test_readable_bytes_marks_partial_characters():
    from zerolm.tokenizers.tokenizer import readable_bytes

    assert readable_bytes("中文".encode()[:4]) == "中<0xE6>"
    assert readable_bytes(b"a" + "é".encode()[:1]) == "a<0xC3>"
    assert readable_bytes("中".encode()[1:]) == "<0xB8 0xAD>"
    assert readable_bytes("ok é".encode()) == "ok é"


def test_cli_char_needs_no_vocab_size_and_bpe_does(corpus, tmp_path, capsys):
    from zerolm.errors import ConfigError

    assert _cli(["tokenizer", "train", "--kind", "char", "--files", str(corpus), "--no-lowercase",
                 "--out", str(tmp_path / "char")]) == 0
    assert Tokenizer.load(tmp_path / "char").kind == "char"
    with pytest.raises(ConfigError, match="--vocab-size"):
        _cli(["tokenizer", "train", "--kind", "bpe", "--files", str(corpus), "--out", str(tmp_path)])


def test_cli_help_shows_an_example(capsys):
    for argv in (["tokenizer", "--help"], ["tokenizer", "train", "--help"]):
        with pytest.raises(SystemExit):
            _cli(argv)
        assert "example:\n  zerolm tokenizer train --kind" in capsys.readouterr().out
