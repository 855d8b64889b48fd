"""The unigram (T5 SentencePiece-style) tokenizer and sentinel tokens: T5's special ids,
round trips, the normalizer, sentinels at the end in descending order, files that
Hugging Face's T5 tokenizer reads with the same ids, Hugging Face T5 files read by zerolm,
and `zerolm tokenizer train --kind unigram --sentinels N`."""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata

import pytest

from zerolm.errors import ConfigError, DataError
from zerolm.tokenizers import Tokenizer

TEXT = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.
  Indented   line   with    spaces.
"""

SENTENCES = [
    "First Citizen: before we proceed any further, hear me speak.",
    "NAÏVE CAFÉ Owners SERVE Crème Brûlée!",
    "Zyxwvut quibbles flabbergasted the unknown words.",
    "don't stop-believing (ok?) [really] {braces} <angle>",
    "3.14159 is pi; e=2.71828 and 1,000,000 is a million",
    "  leading and   repeated   spaces  ",
    "tabs\there and\nnewlines there",
    "Ångström Øresund straße façade",
    "中文字符 mixed with English",
    "emoji 😀 and symbols © ® ™ §",
    "hyphen-ated em—dash en–dash … ellipsis",
    "a",
    "",
]

ORDINARY = [
    "The quick brown fox jumps over the lazy dog.",
    "A river runs through the old town, past the market and the library.",
    "Naïve café owners serve crème brûlée -- and 42 other desserts?",
    "Bakers rise early: the bread is warm by six o'clock & sold by $3.",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(TEXT * 5 + "\n".join(ORDINARY) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def t5(corpus):
    return Tokenizer.train("unigram", [corpus], 400, sentinels=10)


# ------------------------------------------------------------------ layout
def test_specials_have_t5s_ids_and_roles(t5):
    assert t5.kind == "unigram"
    assert (t5.pad_id, t5.eos_id, t5.unk_id) == (0, 1, 2)
    assert [t5.id_to_token(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
    assert t5.cls_id is t5.sep_id is t5.mask_id is t5.bos_id is None  # as HF's T5 tokenizer
    ids = t5.encode("the dog")
    assert ids[-1] == t5.eos_id and ids.count(t5.eos_id) == 1  # T5 ends every input with </s>
    assert t5.encode("the dog", add_special_tokens=False) == ids[:-1]
    pair = t5.encode_batch(["the dog"], ["a fox"])
    a, b = t5.encode("the dog"), t5.encode("a fox")
    assert pair["input_ids"][0] == a + b  # A </s> B </s>
    assert set(pair["token_type_ids"][0]) == {0}


def test_sentinels_are_the_last_ids_in_descending_order(t5):
    n = t5.vocab_size
    assert t5.sentinel_ids == [n - 1 - k for k in range(10)]  # <extra_id_0> = vocab_size - 1
    assert [t5.id_to_token(i) for i in t5.sentinel_ids] == [f"<extra_id_{k}>" for k in range(10)]
    assert set(t5.sentinel_ids) <= t5.special_ids
    # a sentinel in text is one token, never split, and decoding skips it unless asked
    ids = t5.encode("the <extra_id_3> dog")
    assert t5.sentinel_ids[3] in ids
    assert t5.decode(ids) == "the dog"
    assert t5.decode(ids, skip_special_tokens=False) == "the<extra_id_3> dog</s>"  # as HF's T5
    # no learnt piece has a sentinel's id: the corpus never produces one
    corpus_ids = t5.encode_batch(TEXT.splitlines(), add_special_tokens=False)["input_ids"]
    assert not {i for row in corpus_ids for i in row} & set(t5.sentinel_ids)


def test_without_sentinels_there_are_none(corpus):
    tok = Tokenizer.train("unigram", [corpus], 300)
    assert tok.sentinel_ids == [] and tok.vocab_size <= 300


def test_sentinels_count_in_vocab_size(corpus):
    small = Tokenizer.train("unigram", [corpus], 120, sentinels=20)
    assert small.vocab_size <= 120 and len(small.sentinel_ids) == 20
    assert small.sentinel_ids[0] == small.vocab_size - 1


# ------------------------------------------------------------------ text
def test_ordinary_text_round_trips(t5):
    for text in ORDINARY + TEXT.splitlines():
        assert t5.decode(t5.encode(text)) == " ".join(text.split()), text


def test_whitespace_is_collapsed_as_sentencepiece_does(t5):
    assert t5.encode("  the   dog\n\tsleeps ") == t5.encode("the dog sleeps")
    assert t5.encode("\n") == t5.encode("") == [t5.eos_id]


def test_words_start_with_the_meta_symbol(t5):
    ids = t5.encode("the market", add_special_tokens=False)
    pieces = [t5.id_to_token(i) for i in ids]
    assert pieces[0].startswith("▁") and any(p.startswith("▁") for p in pieces[1:])
    assert "".join(t5.piece_text(i) for i in ids) == " the market"
    # pre-split words (tagging) get the pieces of running text, one word id each
    enc = t5.encode_batch([["the", "market"]], is_pretokenized=True, return_word_ids=True,
                          add_special_tokens=False)
    assert enc["input_ids"][0] == ids
    assert enc["word_ids"][0][0] == 0 and enc["word_ids"][0][-1] == 1


def test_text_is_nfkc_normalized(t5):
    for raw, nfkc in [("ﬁne", "fine"), ("wait…", "wait..."), ("Ｔｈｅ", "The"), ("x²", "x2"),
                      ("cafe\u0301", "cafe\u0301")]:  # per character: a decomposed accent stays
        assert t5.encode(raw) == t5.encode(nfkc), raw


def test_unseen_characters_are_unknown(t5):
    ids = t5.encode("中 the")
    assert t5.unk_id in ids and t5.decode(ids).split() == ["the"]


def test_lowercase(corpus):
    tok = Tokenizer.train("unigram", [corpus], 300, lowercase=True)
    assert tok.lowercase and tok.encode("THE Dog") == tok.encode("the dog")


def test_charsmap_is_nfkc_of_each_character():
    from tokenizers import normalizers

    from zerolm.tokenizers.charsmap import precompiled_charsmap

    for lower in (False, True):
        norm = normalizers.Precompiled(precompiled_charsmap(lower))
        for cp in range(1, sys.maxunicode + 1, 37):  # a spread of the code points
            if 0xD800 <= cp <= 0xDFFF:
                continue
            want = unicodedata.normalize("NFKC", chr(cp))
            assert norm.normalize_str(chr(cp)) == (want.lower() if lower else want), hex(cp)


# ------------------------------------------------------------------ files
def test_save_then_load(t5, tmp_path):
    t5.save(tmp_path)
    again = Tokenizer.load(tmp_path)
    assert again.kind == "unigram" and again.vocab_size == t5.vocab_size
    assert again.sentinel_ids == t5.sentinel_ids and again.special_tokens == t5.special_tokens
    assert again.encode_batch(SENTENCES)["input_ids"] == t5.encode_batch(SENTENCES)["input_ids"]
    conf = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert conf["tokenizer_class"] == "T5TokenizerFast" and conf["extra_ids"] == 10
    assert conf["additional_special_tokens"] == [f"<extra_id_{k}>" for k in range(10)]
    assert (conf["pad_token"], conf["eos_token"], conf["unk_token"]) == ("<pad>", "</s>", "<unk>")


@pytest.mark.parametrize("lowercase", [False, True])
def test_hugging_face_reads_our_files_with_the_same_ids(corpus, tmp_path, lowercase):
    transformers = pytest.importorskip("transformers")
    tok = Tokenizer.train("unigram", [corpus], 400, sentinels=10, lowercase=lowercase)
    tok.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert "T5" in type(hf).__name__
    texts = SENTENCES + ["wait… ﬁne Ｔｈｅ x²", "the <extra_id_0> dog <extra_id_9>", "All:\n  Speak, speak."]
    ours = tok.encode_batch(texts)["input_ids"]
    assert hf(texts)["input_ids"] == ours
    assert any(tok.unk_id in row for row in ours)  # the texts did exercise <unk>
    assert hf(texts[:3], texts[3:6])["input_ids"] == tok.encode_batch(texts[:3], texts[3:6])["input_ids"]
    assert (hf.pad_token_id, hf.eos_token_id, hf.unk_token_id) == (tok.pad_id, tok.eos_id, tok.unk_id)
    assert [hf.convert_tokens_to_ids(f"<extra_id_{k}>") for k in range(10)] == tok.sentinel_ids
    assert len(hf) == tok.vocab_size
    assert [hf.decode(r, skip_special_tokens=True) for r in ours] == tok.decode_batch(ours)
    assert [hf.decode(r) for r in ours] == tok.decode_batch(ours, skip_special_tokens=False)


def test_hugging_face_t5_files_load(tmp_path):
    transformers = pytest.importorskip("transformers")
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0), ("▁the", -3.0),
             ("▁dog", -4.0), ("s", -5.0)] + [(f"<extra_id_{k}>", 0.0) for k in reversed(range(5))]
    hf = transformers.T5Tokenizer(vocab=vocab, extra_ids=5)  # transformers 5's T5 layout
    hf.save_pretrained(tmp_path)
    tok = Tokenizer.load(tmp_path)
    assert tok.kind == "unigram"
    assert tok.sentinel_ids == [hf.convert_tokens_to_ids(f"<extra_id_{k}>") for k in range(5)]
    assert tok.sentinel_ids == [11, 10, 9, 8, 7]
    assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.sep_id) == (0, 1, 2, None)
    assert tok.encode("the dogs") == hf("the dogs")["input_ids"]


def test_bpe_takes_sentinels_too(corpus, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = Tokenizer.train("bpe", [corpus], 400, min_frequency=1, sentinels=4)
    assert tok.vocab_size <= 400
    assert tok.sentinel_ids == [tok.vocab_size - 1 - k for k in range(4)]
    tok.save(tmp_path)
    again = Tokenizer.load(tmp_path)
    assert again.sentinel_ids == tok.sentinel_ids
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    text = "the <extra_id_2> dog"
    assert hf(text)["input_ids"] == tok.encode(text)
    assert tok.sentinel_ids[2] in tok.encode(text)


@pytest.mark.parametrize("kind", ["wordpiece", "char"])
def test_sentinels_are_refused_for_other_kinds(kind, corpus):
    with pytest.raises(ConfigError, match=f"sentinels=5.*unigram and bpe tokenizers only.*{kind}"):
        Tokenizer.train(kind, [corpus], 300, sentinels=5)


def test_a_vocabulary_without_room_for_sentinels_is_refused(corpus):
    with pytest.raises(ConfigError, match="vocab_size=100 leaves no room.*100 sentinels"):
        Tokenizer.train("unigram", [corpus], 100, sentinels=100)
    with pytest.raises(ConfigError, match="sentinels=-1"):
        Tokenizer.train("unigram", [corpus], 100, sentinels=-1)


# ------------------------------------------------------------------ CLI
def _cli(argv: list[str]) -> int:
    from zerolm.cli import tokenizer as verb

    parser = argparse.ArgumentParser(prog="zerolm")
    verb.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_trains_unigram_with_sentinels(corpus, tmp_path, capsys):
    out = tmp_path / "t5"
    assert _cli(["tokenizer", "train", "--kind", "unigram", "--sentinels", "8", "--files", str(corpus),
                 "--vocab-size", "300", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    tok = Tokenizer.load(out)
    assert tok.kind == "unigram" and len(tok.sentinel_ids) == 8
    assert "unigram" in printed and f"sentinels:  8 (<extra_id_0> = {tok.vocab_size - 1}" in printed
    assert _cli(["tokenizer", "encode", str(out), "--text", "the dog"]) == 0
    lines = capsys.readouterr().out.splitlines()
    ids = tok.encode("the dog")
    rows = [ln.split() for ln in lines[1:1 + len(ids)]]
    assert [int(r[0]) for r in rows] == ids and rows[-1][1] == "</s>"
    assert rows[0][1].startswith("▁")


def test_cli_refuses_sentinels_for_wordpiece(corpus, tmp_path):
    with pytest.raises(ConfigError, match="sentinels"):
        _cli(["tokenizer", "train", "--kind", "wordpiece", "--sentinels", "8", "--files", str(corpus),
              "--vocab-size", "300", "--out", str(tmp_path / "wp")])


def test_cli_reads_both_sides_of_a_translation_table(tmp_path, capsys):
    table = tmp_path / "train.tsv"
    rows = ["en\tde", "Two young men are outside.\tZwei junge Männer sind im Freien.",
            "A dog runs in the park.\tEin Hund läuft im Park."]
    table.write_text("\n".join(rows * 30) + "\n", encoding="utf-8")
    out = tmp_path / "tok"
    assert _cli(["tokenizer", "train", "--kind", "unigram", "--sentinels", "4", "--files", str(table),
                 "--columns", "en", "de", "--vocab-size", "120", "--out", str(out)]) == 0
    assert "'Two young men are outside.'" in capsys.readouterr().out
    tok = Tokenizer.load(out)
    for text in ("Two young men are outside.", "Zwei junge Männer sind im Freien."):
        ids = tok.encode(text)
        assert tok.unk_id not in ids and tok.decode(ids) == text  # both languages were learnt
    with pytest.raises(DataError, match="no column .text."):
        Tokenizer.train("unigram", [table], 120)
