"""`zerolm compress` end to end on a tiny fine-tuned classifier, and its refusals."""

from __future__ import annotations

import json

import pytest

import zerolm
from zerolm.cli.main import main

DEV = "pkg:quickstart/reviews_dev.tsv"


def test_prune_heads_by_gradient_importance_end_to_end(classifier, tmp_path, capsys):
    out = tmp_path / "pruned"
    code = main(["compress", str(classifier), "--method", "prune-heads", "--fraction", "0.25",
                 "--importance", "gradient", "--data", DEV, "--max-batches", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "attention heads per block:" in printed and "weights on disk:" in printed
    before, after = (int(x.replace(",", "")) for x in
                     printed.split("parameters: ")[1].split(" (")[0].split(" -> "))
    assert after == before - 2 * (3 * (8 * 32 + 8) + 32 * 8)  # 2 heads of Dh 8: rows of q, k, v, columns of o
    pred = zerolm.load(out)
    assert sum(pred.model.config.layer(i).n_heads for i in range(2)) == 6  # 25% of 8 heads
    assert pred.meta == zerolm.load(classifier).meta
    record = json.loads((out / "compress.json").read_text())
    assert record["method"] == "prune-heads" and record["options"]["importance"] == "gradient"
    assert record["params_after"] == sum(p.numel() for p in pred.model.parameters())
    assert "accuracy" in pred.evaluate(DEV)


@pytest.mark.parametrize("args, expect", [
    (["--method", "prune-ffn", "--per-layer", "10,20"], "feed-forward width per block: [27, 17]"),
    (["--method", "low-rank", "--rank", "4", "--targets", "mlp.fc_in,mlp.fc_out"], "ranks per block: 0: fc_in 4"),
    (["--method", "magnitude", "--sparsity", "0.5", "--scope", "layer"], "no faster with dense kernels"),
])
def test_each_method_writes_a_model_every_command_loads(args, expect, classifier, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["compress", str(classifier), *args, "--out", str(out)]) == 0
    assert expect in capsys.readouterr().out
    preds = tmp_path / "preds.jsonl"
    assert main(["predict", str(out), "--input", DEV, "--output", str(preds)]) == 0
    assert len(preds.read_text().splitlines()) > 10


@pytest.mark.parametrize("args, message", [
    (["--method", "prune-heads", "--fraction", "1.0"], "would remove every one of the heads"),
    (["--method", "prune-heads", "--fraction", "0.5", "--importance", "gradient"], "needs --data FILE"),
    (["--method", "prune-heads", "--fraction", "0.5", "--rank", "4"], "belong to --method low-rank"),
    (["--method", "prune-ffn"], "exactly one of --fraction F and --per-layer"),
    (["--method", "low-rank", "--energy", "2"], r"in (0, 1]"),
    (["--method", "magnitude"], "give --sparsity S"),
    (["--method", "prune-ffn", "--per-layer", "1,x"], "one integer per block"),
])
def test_refusals_say_why_and_write_nothing(args, message, classifier, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["compress", str(classifier), *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_used_out_directory_needs_overwrite(classifier, tmp_path, capsys):
    out = tmp_path / "used"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    args = ["compress", str(classifier), "--method", "prune-ffn", "--fraction", "0.5", "--out", str(out)]
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main([*args, "--overwrite"]) == 0 and (out / "model.safetensors").exists()


def test_the_cli_lists_what_the_library_offers():
    from zerolm.cli import compress as cli
    from zerolm.compress import IMPORTANCE, METHODS
    from zerolm.models.config import FACTORISABLE

    assert (cli.METHODS, cli.IMPORTANCE, cli.FACTORISABLE) == (METHODS, IMPORTANCE, FACTORISABLE)


def test_a_pretraining_model_without_a_task_compresses_too(tiny_model, ids, tmp_path, capsys):
    import torch

    from zerolm.modeldir import load_zerolm_model, save_model
    from zerolm.models import build_model

    save_model(tiny_model("gpt"), tmp_path / "gpt")
    out = tmp_path / "gpt_small"
    assert main(["compress", str(tmp_path / "gpt"), "--method", "prune-heads", "--per-layer", "1,2",
                 "--out", str(out)]) == 0
    assert "attention heads per block: [3, 2]" in capsys.readouterr().out
    model, _ = load_zerolm_model(out)
    assert not (out / "task.json").exists() and model.config.layer(1).n_heads == 2
    with torch.no_grad():
        assert torch.isfinite(model(ids)).all()
    # gradient importance reads --data with the model's task: a causal LM's reader wants
    # prompts, and a bare encoder has no task at all; both refused, nothing written
    code = main(["compress", str(tmp_path / "gpt"), "--method", "prune-ffn", "--fraction", "0.5",
                 "--importance", "gradient", "--data", DEV, "--out", str(tmp_path / "g")])
    assert code == 2 and "reviews_dev.tsv:2: no field 'prompt'" in capsys.readouterr().err
    save_model(build_model(tiny_model("bert").config), tmp_path / "bert")  # an MLM, no task
    code = main(["compress", str(tmp_path / "bert"), "--method", "prune-ffn", "--fraction", "0.5",
                 "--importance", "gradient", "--data", DEV, "--out", str(tmp_path / "g")])
    assert code == 2 and "needs a fine-tuned model (task.json)" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()
