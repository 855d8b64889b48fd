"""SST-2 task distillation: all-MiniLM-L6-v2 fine-tuned by the shipped recipe (teacher)
taught into a 3-layer student initialised from teacher layers, beside the same student
trained on the labels alone (`kd_baseline`, same initialisation and budget).

Target (issue 12): student accuracy >= 97% of the teacher's, >= 1.8x faster than the
teacher at batch 32, and >= 1.0 point above kd_baseline. Latency: median of repeated
forward passes over SST-2 dev sentences, 2 threads, batch 1 and batch 32.

    python bench/distill_sst2.py [--out runs/bench_distill] [--epochs 1] [--layers 0,2,4]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from common import emit, environment
from zerolm.config import DistillConfig, FinetuneConfig, load_config
from zerolm.data.text import resolve_data_path
from zerolm.train.distill import distill
from zerolm.train.finetune import finetune

REPO = Path(__file__).resolve().parents[1]


def latency_ms(pred, texts: list[str], batch: int, repeats: int) -> float:
    """Median milliseconds per batch of `batch` dev sentences (tokenized beforehand)."""
    tok, model = pred.tokenizer, pred.model.eval()
    rows = tok.encode_batch(texts[:batch], max_length=128)["input_ids"]
    b = tok.pad(rows, token_type_ids=[[0] * len(r) for r in rows])
    times = []
    with torch.inference_mode():
        for _ in range(2):
            model(b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"])
        for _ in range(repeats):
            t = time.perf_counter()
            model(b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"])
            times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main() -> None:
    import zerolm

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/bench_distill")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--layers", default="0,2,4", help="teacher blocks the student starts from")
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    teacher_dir = out / "teacher"
    if not (teacher_dir / "eval.json").exists():
        finetune(load_config(REPO / "configs/sst2_minilm.yaml", [f"out_dir={teacher_dir}", "train.progress=false"],
                             cls=FinetuneConfig), overwrite=True)
    common = [f"teacher={teacher_dir / 'best'}", "student.n_layers=3", f"student.layers=[{args.layers}]",
              "data.train=sst2/train.tsv", "data.dev=sst2/dev.tsv", "data.max_length=128", f"optim.lr={args.lr}",
              "schedule.warmup_steps=100", f"train.epochs={args.epochs}", "train.batch_size=32",
              "train.eval_every=500", "train.log_every=50", "train.progress=false",
              "train.early_stopping.metric=val_accuracy", "train.early_stopping.mode=max"]
    runs = {
        "student (KD)": [f"out_dir={out / 'kd'}", "distill.hard=1", "distill.soft=1",
                         f"distill.temperature={args.temperature}", "distill.hidden=0", "distill.attention=0"],
        "kd_baseline (labels only)": [f"out_dir={out / 'baseline'}", "distill.hard=1", "distill.soft=0",
                                      "distill.hidden=0", "distill.attention=0"],
    }
    results = {}
    for name, over in runs.items():
        cfg = load_config(REPO / "configs/tiny/distill_classify.yaml", [*common, *over], cls=DistillConfig)
        result, report = distill(cfg, overwrite=True)
        results[name] = {"accuracy": report["student"]["accuracy"], "train_s": result.train_s,
                         "params": report["student_params"], "dir": str(cfg.out_dir)}
        results["teacher"] = {"accuracy": report["teacher"]["accuracy"], "params": report["teacher_params"],
                              "dir": str(teacher_dir / "best")}
    dev = [ln.split("\t")[0] for ln in resolve_data_path("sst2/dev.tsv").read_text().splitlines()[1:]]
    for r in results.values():
        pred = zerolm.load(r["dir"])
        r["ms_b1"] = latency_ms(pred, dev, 1, 50)
        r["ms_b32"] = latency_ms(pred, dev, 32, 10)
    t = results["teacher"]
    rows = []
    for name, r in results.items():
        rows.append([name, f"{100 * r['accuracy']:.2f}", f"{100 * r['accuracy'] / t['accuracy']:.1f}%",
                     f"{r['params']:,}", f"{r['ms_b1']:.1f}", f"{r['ms_b32']:.1f}",
                     f"{t['ms_b32'] / r['ms_b32']:.2f}x"])
    emit(rows, ["model", "dev acc", "retention", "params", "ms/batch 1", "ms/batch 32", "speed-up b32"],
         {"bench": "distill_sst2", "results": results, "env": environment(), "args": vars(args)})


if __name__ == "__main__":
    main()
