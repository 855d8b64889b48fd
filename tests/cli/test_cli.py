"""The `zerolm` command end to end on tiny configs."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from zerolm.cli.main import VERBS, main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help_with_an_example(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"zerolm {verb}" in out


def test_console_script_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "zerolm.cli.main", "--version"], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("zerolm ")


def test_config_show_applies_overrides(capsys):
    assert main(["config", "show", str(REPO / "configs/tiny/gpt_char.yaml"), "train.max_steps=7"]) == 0
    assert "max_steps: 7" in capsys.readouterr().out


def test_config_error_is_one_clear_line(capsys):
    code = main(["config", "show", str(REPO / "configs/tiny/gpt_char.yaml"), "train.max_stesp=7"])
    err = capsys.readouterr().err
    assert code == 2
    assert "did you mean 'train.max_steps'" in err and "Traceback" not in err


def test_pretrain_generate_eval_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", str(REPO / "configs/tiny/gpt_bpe.yaml"), f"out_dir={out}",
                 "train.max_steps=10"]) == 0
    assert (out / "final" / "model.safetensors").exists() and (out / "loss.png").exists()
    capsys.readouterr()
    assert main(["generate", str(out / "final"), "--prompt", "The", "--max-new-tokens", "12",
                 "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("The")
    main(["generate", str(out / "final"), "--prompt", "The", "--max-new-tokens", "12", "--seed", "1",
          "--no-cache"])
    assert capsys.readouterr().out == first  # same seed, cached or not: same text
    assert main(["eval", str(out / "final"), "--input", "pkg:quickstart/corpus.txt", "--block-size", "64",
                 "--max-batches", "2", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["perplexity"] > 1 and metrics["tokens"] > 0


def test_bert_pretrain_and_mlm_eval(tmp_path, capsys):
    out = tmp_path / "bert"
    assert main(["pretrain", str(REPO / "configs/tiny/bert_mlm.yaml"), f"out_dir={out}",
                 "train.max_steps=40", "train.eval_every=0"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out / "final"), "--input", "pkg:quickstart/corpus.txt", "--block-size", "64",
                 "--max-batches", "2", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["masked_tokens"] > 0
    assert metrics["mlm_perplexity"] == pytest.approx(math.exp(metrics["mlm_loss"]), rel=1e-9)
    assert metrics["mlm_accuracy"] > 10 / 600  # 40 steps beat guessing among the 600 tokens


def test_tokenizer_train_and_encode(tmp_path, capsys):
    assert main(["tokenizer", "train", "--kind", "wordpiece", "--files", "pkg:quickstart/corpus.txt",
                 "--vocab-size", "300", "--out", str(tmp_path / "wp")]) == 0
    assert (tmp_path / "wp" / "vocab.txt").exists()
    capsys.readouterr()
    assert main(["tokenizer", "encode", str(tmp_path / "wp"), "--text", "the river"]) == 0
    assert "[CLS]" in capsys.readouterr().out


def test_generate_refuses_an_encoder(tmp_path, capsys):
    out = tmp_path / "bert"
    main(["pretrain", str(REPO / "configs/tiny/bert_mlm.yaml"), f"out_dir={out}", "train.max_steps=2"])
    assert main(["generate", str(out / "final")]) == 2
    assert "causal LM" in capsys.readouterr().err


def test_parser_builds_without_importing_torch():
    # verbs import their machinery lazily: `zerolm --help` stays fast
    code = "import sys; from zerolm.cli.main import build_parser; build_parser(); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr


def test_every_shipped_config_validates():
    from zerolm.config import FinetuneConfig, load_config

    configs = sorted((REPO / "configs").rglob("*.yaml")) + [
        REPO / "src/zerolm/resources/quickstart/quickstart.yaml"]
    assert len(configs) >= 20
    finetune = [c for c in configs if isinstance(load_config(c), FinetuneConfig)]
    # every dataset of the fine-tuning issue, from MiniLM and from zerolm's own BERT
    names = {c.stem for c in finetune}
    for data in ("sst2", "imdb", "trec", "conll2003", "wnut17", "atis_joint", "snips_joint"):
        assert {f"{data}_minilm", f"{data}_zerolm_bert"} <= names, data


def test_config_base_merges_sections_and_reinit_needs_init(tmp_path):
    from zerolm.config import load_config
    from zerolm.errors import ConfigError

    cfg = load_config(REPO / "configs" / "sst2_zerolm_bert.yaml")
    assert cfg.init == "runs/bert_mlm_reviews_wiki/best" and cfg.train.epochs == 2
    assert cfg.train.batch_size == 32 and cfg.data.train == "sst2/train.tsv"  # from the base
    (tmp_path / "a.yaml").write_text("base: b.yaml\ninit: x\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="reinit: true needs init"):
        load_config(REPO / "configs" / "tiny" / "classify_reviews.yaml", ["reinit=true"])
