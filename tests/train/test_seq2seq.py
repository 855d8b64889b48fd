"""Sequence-to-sequence fine-tuning end to end on the pairs shipped with zerolm: the data
(labels on the target only, raw references kept), span-corruption pretraining feeding a
fine-tuning run, the dev report's BLEU equal to sacrebleu's definition on the model's own
predictions, and the training strategies that apply to an encoder-decoder."""

from pathlib import Path

import pytest

import zerolm
from zerolm.config import FinetuneConfig, RunConfig, load_config
from zerolm.data.masking import IGNORE_INDEX
from zerolm.data.pairs import PairBatches, read_pairs
from zerolm.errors import ConfigError, DataError
from zerolm.eval.overlap import corpus_bleu
from zerolm.tokenizers import Tokenizer
from zerolm.train.finetune import finetune
from zerolm.train.pretrain import pretrain

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny"
PAIRS = REPO / "src" / "zerolm" / "resources" / "quickstart" / "translate_train.tsv"
DEV = "pkg:quickstart/translate_dev.tsv"


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train("unigram", [PAIRS], vocab_size=120, columns=("en", "de"))


def test_pairs_put_the_loss_on_the_target_and_its_end(tok):
    pairs = read_pairs(PAIRS, source_column="en", target_column="de")
    data = PairBatches(pairs[:4], tok, max_length=32, max_target_length=32, batch_size=4, seed=0)
    b = data.collate([0, 1, 2, 3])
    for row, p in enumerate(pairs[:4]):
        n = int(b["attention_mask"][row].sum())
        assert b["input_ids"][row, :n].tolist() == tok.encode(p.source)  # with its </s>
        labels = b["labels"][row]
        assert labels[labels != IGNORE_INDEX].tolist() == tok.encode(p.target, add_special_tokens=False) + [tok.eos_id]
    refs = [r for batch in data.eval_batches() for r in batch["references"]]
    assert sorted(refs) == sorted(p.target for p in pairs[:4])  # raw texts, for BLEU
    cut = PairBatches(pairs[:4], tok, max_length=5, max_target_length=4, batch_size=4, seed=0)
    assert cut.truncated == 8 and all(s[-1] == tok.eos_id and len(s) == 5 for s in cut.sources)
    assert all(len(t) == 4 and t[-1] == tok.eos_id for t in cut.targets)


def test_bad_pair_files_name_the_line(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("en\tde\nA dog.\tEin Hund.\nA cat.\t \n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.tsv:3: empty 'de'"):
        read_pairs(bad, source_column="en", target_column="de")
    with pytest.raises(DataError, match=r"bad.tsv:2: no field 'source'.*data.source_column"):
        read_pairs(bad)


@pytest.fixture(scope="module")
def span_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("span") / "run"
    cfg = load_config(TINY / "t5_span.yaml", [f"out_dir={out}", "train.progress=false"], cls=RunConfig)
    pretrain(cfg)
    return out / "final"


def test_span_pretraining_then_translation_fine_tuning(span_model, tmp_path):
    cfg = load_config(TINY / "seq2seq_translate.yaml", [f"out_dir={tmp_path / 'run'}", f"init={span_model}",
                                                         "train.epochs=2", "train.progress=false"],
                      cls=FinetuneConfig)
    result, report = finetune(cfg)
    assert report["task"] == "seq2seq" and report["metric"] == "bleu" and report["generated"] == 40
    assert {"bleu", "rouge1", "rouge2", "rougeL", "loss", "perplexity", "decoding"} <= set(report)
    # the report's BLEU is sacrebleu's definition on the model's own predictions
    pred = zerolm.load(result.out_dir / "best")
    sources, rows = pred.task.read_inputs(DEV)
    hyps = [p["target"] for p in pred.predict(sources)]
    assert corpus_bleu(hyps, [r["de"] for r in rows])["bleu"] == pytest.approx(report["bleu"], abs=1e-6)


def test_the_translation_learns_the_phrase_book(tmp_path):
    cfg = load_config(TINY / "seq2seq_translate.yaml", [f"out_dir={tmp_path / 'run'}", "train.progress=false"],
                      cls=FinetuneConfig)
    result, report = finetune(cfg)
    assert report["bleu"] > 30  # from scratch on 200 pairs, in seconds
    # exported as a Hugging Face T5 with its tokenizer: transformers writes the same German
    transformers = pytest.importorskip("transformers")
    from zerolm.cli.main import main

    assert main(["convert", "--to", "hf", str(result.out_dir / "best"), str(tmp_path / "hf")]) == 0
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    sources = ["A man is eating in the snow.", "Three people are running on the street."]
    enc = hf_tok(sources, return_tensors="pt", padding=True)
    theirs = hf_tok.batch_decode(hf.generate(**enc, max_new_tokens=32, do_sample=False), skip_special_tokens=True)
    assert theirs == [p["target"] for p in zerolm.load(result.out_dir / "best").predict(sources)]
    # compression: shape-changing methods are refused before anything is written, int8 works
    for method in (["prune-heads", "--fraction", "0.25"], ["low-rank", "--rank", "4"]):
        assert main(["compress", str(result.out_dir / "best"), "--method", *method,
                     "--out", str(tmp_path / method[0])]) == 2
        assert not (tmp_path / method[0]).exists()
    assert main(["compress", str(result.out_dir / "best"), "--method", "int8-dynamic",
                 "--out", str(tmp_path / "int8")]) == 0
    assert isinstance(zerolm.load(tmp_path / "int8").predict(sources)[0]["target"], str)


@pytest.mark.parametrize("strategy", ["lora", "adapter", "freeze"])
def test_strategies_that_apply_to_an_encoder_decoder(tmp_path, strategy):
    cfg = load_config(TINY / "seq2seq_translate.yaml", [f"out_dir={tmp_path / 'run'}", "train.max_steps=4",
                                                         "train.eval_every=4", "train.progress=false",
                                                         f"strategy.name={strategy}"], cls=FinetuneConfig)
    result, report = finetune(cfg)
    assert report["strategy"]["strategy"] == strategy and report["strategy"]["percent"] < 100 and "bleu" in report
    pred = zerolm.load(result.out_dir / "best")  # the strategy is replayed from task.json
    assert isinstance(pred.predict(["A man is eating in the snow."])[0]["target"], str)


def test_a_strategy_that_leaves_nothing_to_train_says_so(tmp_path):
    cfg = load_config(TINY / "seq2seq_translate.yaml", [f"out_dir={tmp_path / 'run'}", "strategy.name=head_only",
                                                         "model.tie_embeddings=true"], cls=FinetuneConfig)
    with pytest.raises(ConfigError, match="head_only' leaves no parameter to train.*tie_embeddings"):
        finetune(cfg)


def test_seq2seq_settings_are_checked_before_any_work(tmp_path):
    base = [f"out_dir={tmp_path / 'x'}"]
    with pytest.raises(ConfigError, match="task.num_beams must be an integer >= 1"):
        load_config(TINY / "seq2seq_translate.yaml", [*base, "task.num_beams=0"], cls=FinetuneConfig)
    with pytest.raises(ConfigError, match="no 'val_accuracy'.*val_bleu"):
        load_config(TINY / "seq2seq_translate.yaml", [*base, "train.early_stopping.metric=val_accuracy"],
                    cls=FinetuneConfig)
    with pytest.raises(ConfigError, match="task.num_beams needs task.name 'seq2seq'"):
        load_config(TINY / "classify_reviews.yaml", [*base, "task.num_beams=4"], cls=FinetuneConfig)
    with pytest.raises(ConfigError, match="needs an encoder-decoder"):
        load_config(TINY / "seq2seq_translate.yaml", [*base, "model.family=gpt"], cls=FinetuneConfig)
