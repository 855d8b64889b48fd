"""The one loop: resume is exact, DDP equals accumulation, errors are clear."""

import json
import logging
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from zerolm.config import EarlyStoppingConfig, load_config
from zerolm.errors import ConfigError, TrainingError
from zerolm.tasks import CausalLMTask
from zerolm.train.pretrain import pretrain

REPO = Path(__file__).resolve().parents[2]
TINY_CHAR = REPO / "configs" / "tiny" / "gpt_char.yaml"


def _cfg(tmp_path, name, *overrides):
    return load_config(TINY_CHAR, [f"out_dir={tmp_path / name}", *overrides])


def _losses(out_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    common = ["model.dropout=0.1", "model.attn_dropout=0.1", "train.max_steps=12",
              "train.save_every=100", "train.eval_every=0", "train.log_every=1"]
    full = pretrain(_cfg(tmp_path, "full", *common))

    def stop_at_5(trainer, step, row):
        if step == 5:
            trainer.request_stop()

    part_cfg = _cfg(tmp_path, "part", *common)
    first = pretrain(part_cfg, callbacks=[stop_at_5])
    assert first.step == 5
    assert (tmp_path / "part" / "checkpoints" / "step-00000005").is_dir()
    resumed = pretrain(part_cfg, resume=True)
    assert resumed.step == 12
    a = load_file(full.out_dir / "final" / "model.safetensors")
    b = load_file(resumed.out_dir / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    assert _losses(full.out_dir) == _losses(resumed.out_dir)
    # the resumed run's step time goes on from the checkpoint's, as its steps and tokens do
    assert 0 < first.train_s == first.fit_train_s and 0 < resumed.fit_train_s < resumed.train_s
    assert resumed.train_s == pytest.approx(first.train_s + resumed.fit_train_s, abs=1e-6)
    rows = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_s"] for r in rows if "train_s" in r] == sorted(r["train_s"] for r in rows if "train_s" in r)


def test_checkpoint_files_are_safetensors_and_json(tmp_path):
    res = pretrain(_cfg(tmp_path, "ck", "train.max_steps=4", "train.save_every=2"))
    ck = sorted((res.out_dir / "checkpoints").iterdir())
    assert [p.name for p in ck] == ["step-00000002", "step-00000004"]
    names = {p.name for p in ck[-1].iterdir()}
    assert {"model.safetensors", "optimizer.safetensors", "trainer_state.json", "model_config.json",
            "config.yaml", "tokenizer"} <= names
    assert (res.out_dir / "loss.png").stat().st_size > 1000
    assert not list(res.out_dir.glob("**/*.pt")) and not list(res.out_dir.glob("**/*.bin"))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path):
    cfg = _cfg(tmp_path, "nan", "train.max_steps=6", "train.save_every=2", "train.eval_every=0")

    def poison(trainer, step, row):
        if step == 3:
            with torch.no_grad():
                for p in trainer.model.parameters():
                    p.fill_(float("nan"))

    with pytest.raises(TrainingError, match=r"loss is nan at step 4.*step-00000002"):
        pretrain(cfg, callbacks=[poison])
    good = load_file(tmp_path / "nan" / "checkpoints" / "step-00000002" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in good.values())


def test_early_stopping_with_patience(tmp_path):
    # the validation token count never changes, so it can never improve
    res = pretrain(_cfg(tmp_path, "es", "train.max_steps=40", "train.eval_every=2",
                        "train.early_stopping.metric=val_tokens", "train.early_stopping.patience=2"))
    assert res.stopped_early and res.step == 6 and res.best_step == 2
    assert not res.interrupted
    assert (res.out_dir / "best" / "model.safetensors").exists()


def test_unknown_config_key_names_the_closest_valid_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  n_layer: 4\ndata:\n  train: [x.txt]\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'model.n_layer'.*did you mean 'model.n_layers'"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"did you mean 'train.batch_size'"):
        load_config(TINY_CHAR, ["train.batchsize=3"])
    with pytest.raises(ConfigError, match=r"train.max_steps: expected an integer"):
        load_config(TINY_CHAR, ["train.max_steps=many"])
    assert load_config(TINY_CHAR, ["optim.lr=1e-3"]).optim.lr == 1e-3  # YAML 1.1 reads this as a string


def test_empty_corpus_fails_naming_the_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    cfg = _cfg(tmp_path, "e", f"data.train=[{empty}]")
    from zerolm.errors import DataError

    with pytest.raises(DataError, match=r"empty\.txt"):
        pretrain(cfg)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_torchrun_two_processes_match_one_process_with_accumulation(tmp_path):
    common = ["train.max_steps=8", "train.log_every=1", "train.eval_every=0", "train.save_every=0",
              "train.threads=1"]
    single = pretrain(_cfg(tmp_path, "single", *common, "train.grad_accum=2"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "zerolm.cli.main", "pretrain", str(TINY_CHAR), f"out_dir={tmp_path / 'ddp'}",
           *common, "train.grad_accum=1"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _losses(single.out_dir), _losses(tmp_path / "ddp")
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 9))
    assert max(abs(x - y) for (_, x), (_, y) in zip(a, b)) <= 1e-5


def test_bf16_autocast_trains_a_tiny_model(tmp_path):
    res = pretrain(_cfg(tmp_path, "bf16", "train.precision=bf16", "train.max_steps=3", "train.eval_every=3",
                        "train.save_every=0"))
    ref = pretrain(_cfg(tmp_path, "fp32", "train.max_steps=3", "train.eval_every=3", "train.save_every=0"))
    assert res.step == 3
    rows = _losses(res.out_dir)
    assert all(math.isfinite(loss) for _, loss in rows)
    # bf16 trains the same model as fp32, to bf16's precision
    assert abs(res.final_eval["loss"] - ref.final_eval["loss"]) < 0.05


def test_mlm_with_sentence_order_prediction_and_whole_word_masking(tmp_path):
    cfg = load_config(REPO / "configs" / "tiny" / "bert_mlm.yaml", [
        f"out_dir={tmp_path / 'sop'}", "task.sentence_objective=sop", "task.whole_word_mask=true",
        "train.max_steps=4", "train.eval_every=4"])
    res = pretrain(cfg)
    ev = res.final_eval
    assert ev["masked_tokens"] > 0 and "sentence_accuracy" in ev
    # sentence order is a balanced two-way choice: 4 steps leave the head near chance, ln 2
    assert abs(ev["sentence_loss"] - math.log(2)) < 0.2


def _tiny_trainer(out: Path, task, **train):
    """A Trainer on a 1-layer GPT over a repeating token stream (no tokenizer, no corpus)."""
    from zerolm.config import OptimConfig, ScheduleConfig, TrainConfig
    from zerolm.data.lm import CausalLMBatches
    from zerolm.models import ModelConfig, build_model
    from zerolm.train.loop import Trainer

    cfg = ModelConfig(family="gpt", vocab_size=13, d_model=16, n_layers=1, n_heads=2, d_ff=24,
                      max_seq_len=8)
    data = CausalLMBatches(np.arange(400) % 13, 8, 4, seed=0)
    tc = TrainConfig(**{"save_every": 0, "log_every": 1, "progress": False, "threads": 1, **train})
    return Trainer(build_model(cfg), task, data, val_data=data, train=tc, optim=OptimConfig(),
                   schedule=ScheduleConfig(warmup_steps=0), out_dir=out)


class _FullReport(CausalLMTask):
    """Evaluation that returns a whole report: nested tables and lists beside the numbers."""

    def evaluate(self, model, batches):
        return {**super().evaluate(model, batches), "per_class": {"a": {"f1": 0.5}},
                "confusion": [[1, 2], [3, 4]], "passed": True, "split": "dev"}


def test_evaluation_report_is_returned_whole_and_only_its_numbers_are_logged(tmp_path):
    trainer = _tiny_trainer(tmp_path / "run", _FullReport(), max_steps=2, eval_every=1)
    res = trainer.fit()
    assert res.final_eval["per_class"] == {"a": {"f1": 0.5}} and res.final_eval["split"] == "dev"
    assert trainer.evaluate()["confusion"] == [[1, 2], [3, 4]]
    rows = [json.loads(x) for x in (res.out_dir / "metrics.jsonl").read_text().splitlines()]
    val_keys = {k for r in rows for k in r if k.startswith("val_")}
    assert val_keys == {"val_loss", "val_perplexity", "val_tokens"}
    bad = _tiny_trainer(tmp_path / "bad", _FullReport(), max_steps=2, eval_every=1,
                        early_stopping=EarlyStoppingConfig("val_per_class"))
    with pytest.raises(TrainingError, match=r"'val_per_class' is not among the validation metrics: "
                                            r"\['val_loss', 'val_perplexity', 'val_tokens'\]"):
        bad.fit()


class _SlowEvaluation(CausalLMTask):
    def evaluate(self, model, batches):
        time.sleep(0.3)
        return super().evaluate(model, batches)


def test_tokens_per_second_counts_training_time_only(tmp_path):
    res = _tiny_trainer(tmp_path / "run", _SlowEvaluation(), max_steps=4, eval_every=1).fit()
    assert res.wall_s - res.train_s >= 4 * 0.3  # the evaluations are not training time
    rows = [json.loads(x) for x in (res.out_dir / "metrics.jsonl").read_text().splitlines()]
    step_tokens = 4 * 8
    # each window's tokens took less time than one evaluation: its 0.3 s was not counted
    assert all(step_tokens / r["tokens_per_s"] < 0.3 for r in rows)
    assert rows[-1]["train_s"] == pytest.approx(res.train_s)


def test_evaluation_and_tokenizing_report_progress_without_a_terminal(tmp_path, monkeypatch,
                                                                      caplog):
    from zerolm import progress

    monkeypatch.setattr(progress, "PROGRESS_EVERY_S", 0.0)  # every update: these jobs take no time
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False)
    caplog.set_level(logging.INFO)
    pretrain(_cfg(tmp_path, "p", "train.max_steps=2", "train.eval_batches=3",
                  "train.progress=false"))
    assert re.search(r"tokenizing corpus\.txt: [\d.]+ MB of [\d.]+ MB \(\d+%\)", caplog.text)
    evaluating = [r.getMessage() for r in caplog.records
                  if r.getMessage().startswith("evaluating:")]
    assert evaluating == ["evaluating: batch 1", "evaluating: batch 2", "evaluating: batch 3"]
