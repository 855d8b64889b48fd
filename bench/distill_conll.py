"""CoNLL-2003 NER distillation with a CRF: all-MiniLM-L6-v2 + CRF fine-tuned by the shipped
recipe (configs/conll2003_minilm.yaml) taught into a 3-layer student initialised from
teacher blocks 0, 2, 4. The student's emissions learn the teacher's per-word tag
distributions (soft targets) and its CRF transitions learn from the labels; kd_baseline
is the same student on the labels alone, trained by the same run.

Target (issue 12): student entity F1 (seqeval / conlleval, dev) >= 95% of the teacher's.

    python bench/distill_conll.py [--out runs/bench_distill_conll] [--epochs 2]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from common import emit, environment
from zerolm.config import DistillConfig, FinetuneConfig, load_config
from zerolm.train.distill import distill
from zerolm.train.finetune import finetune

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/bench_distill_conll")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--layers", default="0,2,4")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads while training (0: all CPUs)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    out = Path(args.out)
    teacher = out / "teacher"
    if not (teacher / "eval.json").exists():
        finetune(load_config(REPO / "configs/conll2003_minilm.yaml", [f"out_dir={teacher}", "train.progress=false"],
                             cls=FinetuneConfig), overwrite=True)
    cfg = load_config(REPO / "configs/tiny/distill_classify.yaml", [
        f"teacher={teacher / 'best'}", f"out_dir={out / 'student'}", "kd_baseline=true",
        "data.train=conll2003/train.txt", "data.dev=conll2003/dev.txt", "data.max_length=128",
        "student.n_layers=3", f"student.layers=[{args.layers}]", "distill.hard=1", "distill.soft=1",
        f"distill.temperature={args.temperature}", "distill.hidden=0", "distill.attention=0",
        f"optim.lr={args.lr}", "optim.weight_decay=0.01", "schedule.warmup_steps=100", f"train.epochs={args.epochs}",
        "train.batch_size=32", "train.eval_every=250", "train.log_every=50", "train.progress=false",
        "train.early_stopping.metric=val_f1", "train.early_stopping.mode=max", f"train.threads={args.threads}"],
        cls=DistillConfig)
    result, report = distill(cfg, overwrite=True)
    t, s, b = report["teacher"], report["student"], report["kd_baseline"]
    lat = report["latency"]
    rows = [[name, f"{100 * r['f1']:.2f}", f"{100 * r['f1'] / t['f1']:.1f}%", f"{100 * r['precision']:.2f}",
             f"{100 * r['recall']:.2f}"] for name, r in (("teacher (6 layers)", t), ("student (3 layers, KD)", s),
                                                         ("kd_baseline (labels only)", b))]
    print(f"latency batch {lat['batch_sizes']}: teacher {lat['teacher_ms']} ms, student {lat['student_ms']} ms, "
          f"speed-up {lat['speedup']}; student trained {report['train_s']:.0f} s over {report['steps']} steps")
    emit(rows, ["model", "dev entity F1", "retention", "precision", "recall"],
         {"bench": "distill_conll", "report": report, "env": environment(), "args": vars(args)})


if __name__ == "__main__":
    main()
