"""Vocabulary pruning (`zerolm compress --method prune-vocab`, compress.vocab, Tokenizer.subset):
the same pieces and the same predictions on the data the vocabulary was kept from, files that
reload (in a new process, in Hugging Face, after int8, as ONNX), unseen words that still split
into characters, and the refusals (language models, BPE, int8 models, options)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import zerolm
from zerolm.cli.main import main
from zerolm.compress import prune_vocab, save_compressed
from zerolm.compress.save import method_chain, read_record
from zerolm.errors import ConfigError
from zerolm.modeldir import save_model
from zerolm.models import ModelConfig, build_model
from zerolm.models.heads import SequenceClassifier
from zerolm.tokenizers import Tokenizer

QUICKSTART = Path(__file__).resolve().parents[2] / "src" / "zerolm" / "resources" / "quickstart"
TRAIN = "pkg:quickstart/reviews.tsv"
NER_TRAIN = "pkg:quickstart/ner_train.txt"
UNSEEN = "zebras"  # not in the reviews: the tiny vocabulary splits it "z ##e ##b ##r ##as"


def train_texts() -> list[str]:
    lines = (QUICKSTART / "reviews.tsv").read_text(encoding="utf-8").splitlines()
    return [line.split("\t")[0] for line in lines[1:]]


def tokens(tok: Tokenizer, texts: list[str], max_length: int | None = 64) -> list[list[str]]:
    return [[tok.id_to_token(i) for i in row] for row in tok.encode_batch(texts, max_length=max_length)["input_ids"]]


def scores(pred, data: str) -> list[torch.Tensor]:
    """The model's raw outputs (logits, or per-token tag scores) on every example of a
    labelled file, in file order."""
    out: dict[int, torch.Tensor] = {}
    pred.model.eval()
    with torch.no_grad():
        for b in pred.task.labelled_batches(data, batch_size=16).eval_batches():
            inputs = {k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in b}
            for i, row in zip(b["index"].tolist(), pred.model(**inputs)):
                out[i] = row
    return [out[i] for i in range(len(out))]


def predict_in_new_process(directory: Path, texts: list[str]) -> list[dict]:
    code = "import json, sys, zerolm; print(json.dumps(zerolm.load(sys.argv[1]).predict(json.loads(sys.argv[2]))))"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code, str(directory), json.dumps(texts)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def tagger(tiny_run) -> Path:
    """best/ of a tiny NER tagger (no CRF) fine-tuned on the shipped CoNLL file."""
    return tiny_run("tag_ner.yaml", "train.epochs=1") / "best"


@pytest.fixture(scope="module")
def pruned(classifier, tmp_path_factory) -> Path:
    """The tiny classifier with the vocabulary of its training file, written by the CLI."""
    out = tmp_path_factory.mktemp("vocab") / "pruned"
    assert main(["compress", str(classifier), "--method", "prune-vocab", "--data", TRAIN, "--out", str(out)]) == 0
    return out


def wordpiece_file(tmp_path: Path) -> Path:
    """A BERT vocab.txt with the special tokens spread out, as in real BERT files."""
    vocab = ["[PAD]", "[unused0]", "the", "[UNK]", "film", "[CLS]", "[SEP]", "[MASK]", "##s", "good", "bad",
             "f", "##i", "##l", "##m", "g", "##o", "##d", "b", "##a"]
    path = tmp_path / "vocab.txt"
    path.write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    return path


# ------------------------------------------------------------------ the CLI, end to end
def test_the_pruned_classifier_predicts_the_same_in_a_new_process(classifier, pruned):
    texts = train_texts()
    before = zerolm.load(classifier).predict(texts)
    after = predict_in_new_process(pruned, texts)
    assert [a["label"] for a in after] == [b["label"] for b in before]
    for a, b in zip(after, before):
        assert a["probs"] == pytest.approx(b["probs"], abs=1e-6)
    original, small = zerolm.load(classifier), zerolm.load(pruned)
    rows = small.model.body.tok_emb.weight.shape[0]
    assert rows == small.model.config.vocab_size == small.tokenizer.vocab_size < original.tokenizer.vocab_size
    record = read_record(pruned)
    assert record["method"] == "prune-vocab" and record["options"]["data"] == TRAIN
    report = record["report"]
    assert report["vocab_after"] == rows == report["seen_in_data"] + report["kept_chars"] + report["kept_special"]
    assert report["embedding_params_before"] - report["embedding_params_after"] == \
        record["params_before"] - record["params_after"] == (report["vocab_before"] - rows) * 32


def test_the_pruned_tokenizer_splits_the_training_texts_into_the_same_pieces(classifier, pruned):
    texts = train_texts()
    old, new = Tokenizer.load(classifier / "tokenizer"), Tokenizer.load(pruned / "tokenizer")
    assert new.vocab_size < old.vocab_size and new.special_tokens == old.special_tokens
    assert tokens(new, texts) == tokens(old, texts)
    assert tokens(new, texts[:5], None) == tokens(old, texts[:5], None)  # untruncated too
    pair = [[t.id_to_token(i) for i in t.encode(texts[0], texts[1])] for t in (new, old)]
    assert pair[0] == pair[1]
    # the files Hugging Face reads agree with it: vocab.txt line i is id i, AutoTokenizer gives the same ids
    lines = (pruned / "tokenizer" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert lines == [new.id_to_token(i) for i in range(new.vocab_size)]
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(pruned / "tokenizer"))
    assert hf(texts[:20])["input_ids"] == new.encode_batch(texts[:20])["input_ids"]


def test_the_pruned_model_quantizes_and_exports(classifier, pruned, tmp_path, capsys):
    texts = train_texts()[:8]
    int8 = tmp_path / "int8"
    assert main(["compress", str(pruned), "--method", "int8-dynamic", "--out", str(int8)]) == 0
    assert "int8: 12 linears and the token embedding" in capsys.readouterr().out
    assert method_chain(read_record(int8)) == "prune-vocab -> int8-dynamic"
    assert len(zerolm.load(int8).predict(texts)) == len(texts)
    pytest.importorskip("onnxruntime", reason="the ONNX export needs onnxruntime (pip install 'zerolm[onnx]')")
    pytest.importorskip("onnx", reason="the ONNX export needs onnx (pip install 'zerolm[onnx]')")
    onnx = tmp_path / "onnx"
    assert main(["export", "onnx", str(pruned), "--out", str(onnx)]) == 0
    before = zerolm.load(classifier).predict(texts)
    for a, b in zip(zerolm.load(onnx).predict(texts), before):
        assert a["label"] == b["label"] and a["probs"] == pytest.approx(b["probs"], abs=1e-4)


def test_a_tagger_without_keep_chars_end_to_end(tagger, tmp_path, capsys):
    out = tmp_path / "tagger"
    assert main(["compress", str(tagger), "--method", "prune-vocab", "--data", NER_TRAIN, "--no-keep-chars",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    small = zerolm.load(out)
    n = small.tokenizer.vocab_size
    assert f"vocabulary: 600 -> {n} tokens:" in printed and "0 single characters" in printed
    record = read_record(out)
    assert record["options"]["no_keep_chars"] and record["report"]["kept_chars"] == 0
    assert n == small.model.config.vocab_size == record["report"]["seen_in_data"] + record["report"]["kept_special"]
    for a, b in zip(scores(small, NER_TRAIN), scores(zerolm.load(tagger), NER_TRAIN)):
        assert torch.allclose(a, b, atol=1e-6)


# ------------------------------------------------------------------ the library
@pytest.mark.parametrize("which, data", [("classifier", TRAIN), ("tagger", NER_TRAIN)])
def test_outputs_on_the_data_are_unchanged_and_the_module_stays(which, data, request, tmp_path):
    directory = request.getfixturevalue(which)
    pred = zerolm.load(directory)
    before = scores(pred, data)
    emb = pred.model.body.tok_emb
    keys = set(pred.model.state_dict())
    batches = pred.task.labelled_batches(data, batch_size=16).eval_batches()
    tok, report = prune_vocab(pred.model, pred.tokenizer, batches)
    assert pred.model.body.tok_emb is emb and type(emb) is nn.Embedding and set(pred.model.state_dict()) == keys
    assert emb.num_embeddings == pred.model.config.vocab_size == tok.vocab_size == report["vocab_after"]
    assert emb.padding_idx == pred.model.config.pad_id == tok.pad_id
    out = save_compressed(pred.model, tmp_path / "p", tokenizer=tok, meta=pred.meta, record={"method": "prune-vocab"})
    after = scores(zerolm.load(out), data)
    assert len(after) == len(before)
    for a, b in zip(after, before):
        assert torch.allclose(a, b, atol=1e-6)


def test_keep_chars_lets_an_unseen_word_split_into_pieces(classifier):
    seen = ["a good film"]
    pred = zerolm.load(classifier)
    assert "[UNK]" not in tokens(pred.tokenizer, [UNSEEN])[0]
    ids = [pred.tokenizer(seen)["input_ids"]]
    with_chars, report = prune_vocab(pred.model, pred.tokenizer, ids)
    assert tokens(with_chars, seen) == tokens(pred.tokenizer, seen)
    assert report["kept_chars"] > 0 and "[UNK]" not in tokens(with_chars, [UNSEEN])[0]
    assert tokens(with_chars, [UNSEEN]) == [["[CLS]", "z", "##e", "##b", "##r", "##a", "##s", "[SEP]"]]
    pred = zerolm.load(classifier)
    bare, report = prune_vocab(pred.model, pred.tokenizer, ids, keep_chars=False)
    assert tokens(bare, seen) == tokens(pred.tokenizer, seen) and report["kept_chars"] == 0
    assert bare.vocab_size == report["seen_in_data"] + report["kept_special"] < with_chars.vocab_size
    assert tokens(bare, [UNSEEN]) == [["[CLS]", "[UNK]", "[SEP]"]]


def test_subset_renumbers_every_id_a_wordpiece_tokenizer_holds(tmp_path):
    tok = Tokenizer.load(wordpiece_file(tmp_path))
    keep = [tok.token_to_id(t) for t in ("good", "##s", "film")]
    new, old_ids = tok.subset(keep)
    # the kept tokens and every special one, in their old order; "[unused0]", "the", "bad", ... gone
    assert [new.id_to_token(i) for i in range(new.vocab_size)] == \
        ["[PAD]", "[UNK]", "film", "[CLS]", "[SEP]", "[MASK]", "##s", "good"]
    assert old_ids == [0, 3, 4, 5, 6, 7, 8, 9]
    assert (new.pad_id, new.unk_id, new.cls_id, new.sep_id, new.mask_id) == (0, 1, 3, 4, 5)
    assert new.special_ids == {0, 1, 3, 4, 5}
    assert new.encode("good films", "film") == [3, 7, 2, 6, 4, 2, 4]  # the template's [CLS] / [SEP] renumbered
    assert tokens(new, ["good films"]) == tokens(tok, ["good films"])
    assert tokens(new, ["bad"]) == [["[CLS]", "[UNK]", "[SEP]"]]  # not kept, and no characters to fall back on
    saved = new.save(tmp_path / "saved")
    raw = json.loads((saved / "tokenizer.json").read_text())
    assert {k: v["ids"] for k, v in raw["post_processor"]["special_tokens"].items()} == {"[CLS]": [3], "[SEP]": [4]}
    assert sorted((t["content"], t["id"]) for t in raw["added_tokens"]) == \
        [("[CLS]", 3), ("[MASK]", 5), ("[PAD]", 0), ("[SEP]", 4), ("[UNK]", 1)]
    assert Tokenizer.load(saved).encode("good films", "film") == new.encode("good films", "film")
    assert Tokenizer.load(saved / "vocab.txt").encode("good films") == new.encode("good films")
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(saved))
    assert hf("good films", "film")["input_ids"] == new.encode("good films", "film")


def test_subset_of_a_char_vocabulary(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("hello world\nabc\n", encoding="utf-8")
    tok = Tokenizer.train("char", [text], 0)
    new, old_ids = tok.subset([tok.token_to_id(c) for c in "helo"])
    assert [new.id_to_token(i) for i in range(new.vocab_size)] == ["e", "h", "l", "o", "<unk>", "<|endoftext|>"]
    assert [tok.id_to_token(i) for i in old_ids] == ["e", "h", "l", "o", "<unk>", "<|endoftext|>"]
    assert tokens(new, ["hello"]) == tokens(tok, ["hello"]) == [list("hello")]
    assert new.decode(new.encode("hello")) == "hello"
    assert tokens(new, ["cab"]) == [["<unk>"] * 3]
    assert Tokenizer.load(new.save(tmp_path / "saved")).encode("hole") == new.encode("hole")


# ------------------------------------------------------------------ refusals
def test_a_bpe_tokenizer_is_refused_with_the_reason(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the film was good\nthe films were bad\n" * 20, encoding="utf-8")
    bpe = Tokenizer.train("bpe", [text], 300, min_frequency=1)
    with pytest.raises(ConfigError, match="BPE tokenizer builds its tokens by merges"):
        bpe.subset(range(10))
    # an encoder classifier over it gets the same refusal, before anything changes
    model = SequenceClassifier(build_model(ModelConfig(family="bert", vocab_size=bpe.vocab_size, d_model=16,
                                                       n_layers=1, n_heads=2, d_ff=8)), 2)
    with pytest.raises(ConfigError, match="merges"):
        prune_vocab(model, bpe, [torch.tensor([[1, 2, 3]])])
    assert model.body.tok_emb.num_embeddings == model.config.vocab_size == bpe.vocab_size


@pytest.mark.parametrize("family, tie", [("gpt", True), ("bert", True), ("bert", False)])
def test_a_language_model_is_refused(family, tie, tmp_path):
    tok = Tokenizer.load(wordpiece_file(tmp_path))
    model = build_model(ModelConfig(family=family, vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2,
                                    d_ff=8, tie_embeddings=tie))  # CausalLM / BertForPreTraining
    with pytest.raises(ConfigError, match="output layer over the vocabulary"):
        prune_vocab(model, tok, [torch.tensor([[5, 9, 6]])])
    assert model.body.tok_emb.num_embeddings == model.config.vocab_size == tok.vocab_size


def test_the_cli_refuses_a_causal_lm_and_an_int8_model_writing_nothing(classifier, tmp_path, capsys):
    tok = Tokenizer.load(wordpiece_file(tmp_path))
    lm = build_model(ModelConfig(family="gpt", vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2, d_ff=8))
    save_model(lm, tmp_path / "lm", tokenizer=tok)
    int8 = tmp_path / "int8"
    assert main(["compress", str(classifier), "--method", "int8-dynamic", "--out", str(int8)]) == 0
    capsys.readouterr()
    for model, message in ((tmp_path / "lm", "output layer over the vocabulary"), (int8, "already int8")):
        out = tmp_path / "never"
        assert main(["compress", str(model), "--method", "prune-vocab", "--data", TRAIN, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--method", "prune-vocab"], "prune-vocab needs --data TRAIN"),
    (["--method", "prune-vocab", "--data", TRAIN, "--fraction", "0.5"], "--fraction does not apply to prune-vocab"),
    (["--method", "prune-vocab", "--data", TRAIN, "--recover", "10"], "nothing to recover"),
    (["--method", "prune-vocab", "--data", TRAIN, "--importance", "gradient"], "--importance belong to"),
    (["--method", "prune-ffn", "--fraction", "0.5", "--no-keep-chars"], "belongs to --method prune-vocab"),
    (["--method", "low-rank", "--rank", "4", "--data", TRAIN], "--data belongs to prune-heads / prune-ffn"),
])
def test_option_refusals_say_why_and_write_nothing(args, message, classifier, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["compress", str(classifier), *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_report_times_a_pruned_vocabulary_on_its_own_tokenizer(classifier, pruned):
    from zerolm.compress.report import compare

    report = compare(str(classifier), [("vocab", str(pruned))], TRAIN, repeats=1)
    original, vocab = report["rows"]
    assert vocab["change"] == pytest.approx(0.0, abs=1e-9)  # the data the vocabulary came from
    assert vocab["tokens"] == original["tokens"] and vocab["bytes"] < original["bytes"]
