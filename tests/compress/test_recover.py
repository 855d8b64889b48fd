"""`zerolm compress --recover`: the compressed model trained through the one loop (by default
distilled from the original), written to --out with its pruned shapes and zeros kept; the
recovery run kept in OUT.recovery/; and the refusals, which write nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import zerolm
from zerolm.cli.main import main

TRAIN = "pkg:quickstart/reviews.tsv"
DEV = "pkg:quickstart/reviews_dev.tsv"


@pytest.fixture
def small(tmp_path):
    """32 labelled reviews, used as both training and dev file: the tiny classifier is at
    chance on the real dev file, so recovery shows on the data it trains on."""
    from zerolm.data.text import resolve_data_path

    lines = resolve_data_path(TRAIN).read_text(encoding="utf-8").splitlines()
    path = tmp_path / "small.tsv"
    path.write_text("\n".join(lines[:33]) + "\n", encoding="utf-8")
    return str(path)


def _recover_args(data: str, steps: int, *extra: str) -> list[str]:
    return ["--recover", str(steps), "--recover-data", data, "--recover-dev", data, "--recover-batch-size", "16",
            "--recover-lr", "3e-3", *extra]


def test_recovery_lowers_the_loss_keeps_the_pruned_shapes_and_reloads(classifier, small, tmp_path, capsys):
    out = tmp_path / "ffn"
    code = main(["compress", str(classifier), "--method", "prune-ffn", "--fraction", "0.9", "--out", str(out),
                 *_recover_args(small, 40, "--recover-soft", "0")])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "recovery (labels, 40 steps): dev loss" in printed
    record = json.loads((out / "compress.json").read_text())
    rec = record["recovery"]
    assert rec["steps"] == 40 and rec["soft"] == 0 and rec["teacher"] == str(classifier)
    assert rec["dev_after"]["loss"] < rec["dev_before"]["loss"] - 0.02, rec
    assert rec["dev_original"]["loss"] == pytest.approx(zerolm.load(classifier).evaluate(small)["loss"], abs=1e-4)
    # the run and the model before recovery are kept beside --out, and --out is a plain model
    work = tmp_path / "ffn.recovery"
    assert (work / "run" / "metrics.jsonl").is_file() and (work / "run" / "loss.png").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["compress.json", "model.safetensors", "model_config.json",
                                                     "task.json", "tokenizer"]
    before = zerolm.load(work / "compressed")
    widths = [before.model.config.layer(i).d_ff for i in range(2)]
    assert sum(widths) < 0.2 * 2 * 37 and record["report"]["d_ff"] == widths
    assert record["params_after"] == sum(p.numel() for p in before.model.parameters())
    # a fresh process loads --out with the pruned shapes and scores what the record says
    script = ("import json, sys, zerolm; p = zerolm.load(sys.argv[1]); "
              "print(json.dumps([[p.model.config.layer(i).d_ff for i in range(2)], p.evaluate(sys.argv[2])['loss']]))")
    proc = subprocess.run([sys.executable, "-c", script, str(out), small], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
    shapes, loss = json.loads(proc.stdout.strip().splitlines()[-1])
    assert shapes == widths and loss == pytest.approx(rec["dev_after"]["loss"], abs=1e-5)


def test_iterative_magnitude_reaches_the_exact_sparsity_and_keeps_the_zeros(classifier, small, tmp_path, capsys):
    import torch

    from zerolm.models import body_of

    out = tmp_path / "sparse"
    code = main(["compress", str(classifier), "--method", "magnitude", "--sparsity", "0.6", "--scope", "layer",
                 "--iterative", "3", "--out", str(out), *_recover_args(small, 6)])  # distilled (default)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "sparsity per block: 60.0%, 60.0%" in printed and "distillation from the original" in printed
    record = json.loads((out / "compress.json").read_text())
    rounds = record["recovery"]["rounds"]
    assert [r["sparsity"] for r in rounds] == pytest.approx([0.2, 0.4, 0.6]) and [r["steps"] for r in rounds] == [2] * 3
    params = lambda path: dict(body_of(zerolm.load(path).model).named_parameters())  # noqa: E731
    state, first = params(out), params(tmp_path / "sparse.recovery" / "round-1" / "compressed")
    assert len(record["report"]["sparsity"]) == 12  # six linears in each of two blocks
    for key, share in record["report"]["sparsity"].items():
        w = state[key + ".weight"]
        k = int(0.6 * w.numel() + 0.5)
        assert int((w == 0).sum()) == k and share == k / w.numel(), key  # exact, after training
        assert torch.all(w[first[key + ".weight"] == 0] == 0), key  # pruned in round 1: still zero
    # the rounds did train: the weights that survive differ from the original's
    orig = params(classifier)
    kept = state["blocks.0.mlp.fc_in.weight"] != 0
    assert not torch.equal(state["blocks.0.mlp.fc_in.weight"][kept], orig["blocks.0.mlp.fc_in.weight"][kept])


@pytest.mark.parametrize("args, message", [
    (["--method", "int8-dynamic", "--recover", "5", "--recover-data", TRAIN, "--recover-dev", DEV],
     "--recover does not apply to int8-dynamic: an int8 model does not train"),
    (["--method", "int8-weight", "--recover", "5"], "then quantize it"),
    (["--method", "prune-ffn", "--fraction", "0.5", "--recover-data", TRAIN], "--recover-data needs --recover STEPS"),
    (["--method", "prune-ffn", "--fraction", "0.5", "--recover", "5"], "needs --recover-data TRAIN and --recover-dev"),
    (["--method", "prune-ffn", "--fraction", "0.5", "--recover", "5", "--recover-data", TRAIN, "--recover-dev", DEV,
      "--iterative", "2"], "--iterative belongs to --method magnitude"),
    (["--method", "magnitude", "--sparsity", "0.5", "--recover", "2", "--recover-data", TRAIN, "--recover-dev", DEV,
      "--iterative", "3"], "each recovers for at least one step"),
    (["--method", "prune-ffn", "--fraction", "0.5", "--recover", "0", "--recover-data", TRAIN, "--recover-dev", DEV],
     "--recover STEPS must be >= 1"),
])
def test_recovery_refusals_say_why_and_write_nothing(args, message, classifier, tmp_path, capsys):
    assert main(["compress", str(classifier), *args, "--out", str(tmp_path / "never")]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_used_recovery_directory_is_refused_before_anything_runs(classifier, tmp_path, capsys):
    (tmp_path / "m.recovery").mkdir()
    (tmp_path / "m.recovery" / "notes.txt").write_text("mine")
    args = ["compress", str(classifier), "--method", "prune-ffn", "--fraction", "0.5", "--out", str(tmp_path / "m"),
            "--recover", "1", "--recover-data", TRAIN, "--recover-dev", DEV]
    assert main(args) == 2 and "m.recovery (the recovery runs of --out) is not empty" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 2 and "files a recovery did not write" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.recovery"]
    assert (tmp_path / "m.recovery" / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_an_earlier_recovery(classifier, small, tmp_path, capsys):
    args = ["compress", str(classifier), "--method", "prune-heads", "--per-layer", "1,1", "--out",
            str(tmp_path / "h"), *_recover_args(small, 1)]
    assert main(args) == 0
    (tmp_path / "h.recovery" / "round-9").mkdir()  # as an earlier iterative run would have left
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert sorted(p.name for p in (tmp_path / "h.recovery").iterdir()) == ["compressed", "run"]
    assert json.loads((tmp_path / "h" / "compress.json").read_text())["recovery"]["steps"] == 1


def test_a_model_without_a_task_is_refused_before_anything_is_written(tiny_model, tmp_path, capsys):
    from zerolm.modeldir import save_model

    save_model(tiny_model("gpt"), tmp_path / "gpt")
    code = main(["compress", str(tmp_path / "gpt"), "--method", "prune-ffn", "--fraction", "0.5", "--out",
                 str(tmp_path / "g"), "--recover", "3", "--recover-data", TRAIN, "--recover-dev", DEV])
    assert code == 2 and "this model has no task (task.json)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt"]


@pytest.mark.parametrize("steps, rounds, expect", [(6, 3, [2, 2, 2]), (7, 3, [3, 2, 2]), (5, 1, [5])])
def test_recovery_steps_are_shared_among_the_rounds(steps, rounds, expect):
    from zerolm.compress.recover import recovery_dir, round_steps

    assert round_steps(steps, rounds) == expect
    assert recovery_dir("runs/pruned/").name == "pruned.recovery"
