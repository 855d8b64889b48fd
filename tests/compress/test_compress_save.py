"""A compressed model saves, reloads in a new process and predicts as it did before saving."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import zerolm
from zerolm.compress import low_rank, magnitude, prune_ffn, prune_heads, save_compressed

TEXTS = ["a lovely, moving film", "a dull and lifeless mess", "fine", "not good at all, sadly"]

TRANSFORMS = {
    "prune-heads": lambda m: prune_heads(m, per_layer=[1, 4], allow_empty=True),  # block 1 keeps no head
    "prune-ffn": lambda m: prune_ffn(m, 0.4),
    "low-rank": lambda m: low_rank(m, energy=0.8),
    "magnitude": lambda m: magnitude(m, 0.5),
    "all": lambda m: (prune_heads(m, 0.25), prune_ffn(m, per_layer=[37, 5], allow_empty=True),
                      low_rank(m, rank=6, targets=["attn.q_proj", "mlp.fc_out"])),
}


def predict_in_new_process(directory) -> list[dict]:
    code = "import json, sys, zerolm; print(json.dumps(zerolm.load(sys.argv[1]).predict(json.loads(sys.argv[2]))))"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code, str(directory), json.dumps(TEXTS)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("method", list(TRANSFORMS))
def test_a_compressed_model_reloads_in_a_new_process_and_predicts_the_same(method, classifier, tmp_path):
    pred = zerolm.load(classifier)
    original = pred.predict(TEXTS)
    TRANSFORMS[method](pred.model)
    shapes = pred.model.config.to_dict().get("layers")
    before = pred.predict(TEXTS)
    if method != "magnitude":
        assert before != original  # the transform did change the model
    out = save_compressed(pred.model, tmp_path / "c", tokenizer=pred.tokenizer, meta=pred.meta,
                          record={"method": method})
    assert {"model.safetensors", "model_config.json", "task.json", "tokenizer", "compress.json"} <= {
        p.name for p in out.iterdir()}
    after = predict_in_new_process(out)
    assert [a["label"] for a in after] == [b["label"] for b in before]
    for a, b in zip(after, before):
        assert a["probs"] == pytest.approx(b["probs"], abs=2e-6)
    again = zerolm.load(out)
    assert again.model.config.to_dict().get("layers") == shapes and again.meta == pred.meta
    assert sum(p.numel() for p in again.model.parameters()) == sum(p.numel() for p in pred.model.parameters())


def test_a_non_empty_directory_is_refused_before_anything_is_written(classifier, tmp_path):
    from zerolm.errors import ConfigError

    pred = zerolm.load(classifier)
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not empty; choose another --out, or pass --overwrite"):
        save_compressed(pred.model, out, tokenizer=pred.tokenizer, meta=pred.meta)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    save_compressed(pred.model, out, tokenizer=pred.tokenizer, meta=pred.meta, overwrite=True)
    assert not (out / "notes.txt").exists() and torch.equal(
        zerolm.load(out).model.classifier.weight, pred.model.classifier.weight)
