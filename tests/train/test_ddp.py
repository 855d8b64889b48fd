"""Data parallelism under torchrun: two processes train exactly as one process with
gradient accumulation, for every shipped pretraining config's model shape (tied and
untied heads, bias-free, BERT with and without a sentence head, T5's encoder-decoder),
shrunk to a tiny size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zerolm.config import load_config
from zerolm.train.pretrain import pretrain

REPO = Path(__file__).resolve().parents[2]
# the shape each shipped recipe gives its model, at a tiny size on the shipped corpus
SHRINK = ["model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.d_ff=37", "model.max_seq_len=32",
          "data.block_size=32", "data.train=[pkg:quickstart/corpus.txt]", "data.val=[]", "data.val_fraction=0.1",
          "tokenizer.vocab_size=600", "tokenizer.files=[]", "model.dropout=0.0", "model.attn_dropout=0.0",
          "train.batch_size=4", "train.max_steps=4", "train.log_every=1", "train.eval_every=0",
          "train.save_every=0", "train.threads=1", "train.progress=false", "schedule.warmup_steps=0"]
CASES = {
    "char_gpt_shakespeare (untied, bias-free)": ("configs/char_gpt_shakespeare.yaml", []),
    "gpt_bpe_reviews (tied)": ("configs/gpt_bpe_reviews.yaml", []),
    "bert_mlm_reviews_wiki (no sentence head)": ("configs/bert_mlm_reviews_wiki.yaml", []),
    "tiny/bert_mlm (NSP, untied)": ("configs/tiny/bert_mlm.yaml", ["model.tie_embeddings=false"]),
    "tiny/gpt_char (untied)": ("configs/tiny/gpt_char.yaml", ["model.tie_embeddings=false"]),
    "tiny/t5_span (encoder-decoder, span corruption, Adafactor)": (
        "configs/tiny/t5_span.yaml", ["optim.name=adafactor"]),
}


def _losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def assert_torchrun_equals(single_out: Path, verb: str, config: str, over: list[str], ddp_out: Path,
                           tokenizer: Path) -> None:
    """`verb` on 2 processes under torchrun logs the same losses as the one-process run."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "zerolm.cli.main", verb, str(REPO / config), *over, f"out_dir={ddp_out}",
           "train.grad_accum=1", f"tokenizer.path={tokenizer}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _losses(single_out), _losses(ddp_out)
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4]
    assert max(abs(x - y) for (_, x), (_, y) in zip(a, b)) <= 1e-5


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_equal_one_with_accumulation(name, tmp_path):
    config, extra = CASES[name]
    over = [*SHRINK, *extra]
    single = pretrain(load_config(REPO / config, [*over, f"out_dir={tmp_path / 'single'}", "train.grad_accum=2"]))
    assert_torchrun_equals(single.out_dir, "pretrain", config, over, tmp_path / "ddp", single.out_dir / "tokenizer")


FT_SHRINK = ["model.dropout=0.0", "model.attn_dropout=0.0", "task.head_dropout=0.0", "train.max_steps=4",
             "train.epochs=0", "train.batch_size=4", "train.log_every=1", "train.eval_every=0",
             "train.threads=1", "train.progress=false", "schedule.warmup_steps=0"]
FT_CASES = {
    "tag with a CRF": ("configs/tiny/tag_ner.yaml", ["task.crf=true"]),
    "classify with prompt tuning": ("configs/tiny/classify_reviews.yaml",
                                    ["strategy.name=prompt", "strategy.prompt.length=4", "optim.lr=1e-2"]),
    "seq2seq translation (T5, Adafactor)": ("configs/tiny/seq2seq_translate.yaml",
                                            ["optim.name=adafactor", "task.label_smoothing=0.1"]),
}


@pytest.mark.parametrize("name", list(FT_CASES))
def test_fine_tuning_on_two_processes_equals_one_with_accumulation(name, tmp_path):
    from zerolm.config import FinetuneConfig
    from zerolm.train.finetune import finetune

    config, extra = FT_CASES[name]
    over = [*FT_SHRINK, *extra]
    single, _ = finetune(load_config(REPO / config, [*over, f"out_dir={tmp_path / 'single'}", "train.grad_accum=2"],
                                     cls=FinetuneConfig))
    assert_torchrun_equals(single.out_dir, "finetune", config, over, tmp_path / "ddp",
                           single.out_dir / "best" / "tokenizer")
