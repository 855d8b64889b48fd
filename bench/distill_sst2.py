"""SST-2 distillation: all-MiniLM-L6-v2 fine-tuned by the shipped recipe (teacher) taught
into a smaller student by `zerolm distill`, beside the same student trained on the labels
alone (`kd_baseline`: same initialisation and budget, trained by the same run).

Recipes (issue 12 targets):
- `layers3` (default): a 3-layer student initialised from teacher blocks 0, 2, 4; hard +
  soft targets, one epoch. Target: >= 97% of the teacher, >= 1.8x faster at batch 32,
  >= 1.0 point above kd_baseline.
- `small`: 4 layers of width 256 (8 heads, FFN 1024), which no teacher block fits as it
  is: the pretrained MiniLM pruned to that shape by activation importance (Minitron),
  then TinyBERT's general distillation from it on unlabelled text (SST-2 train sentences,
  IMDB train reviews, WikiText-2 valid; hidden states through projections, MiniLMv2
  relations), then task distillation. Target: >= 95% of the teacher, >= 2.5x faster,
  general stage within 1 hour on 2 cores.

Latency: median of repeated forward passes over SST-2 dev sentences, 2 threads, batch 1
and batch 32, measured after training on the saved models.

    python bench/distill_sst2.py [--recipe layers3|small] [--out runs/bench_distill]

The recipes are the shipped configs/sst2_distill_minilm.yaml and sst2_distill_small.yaml.
"""

from __future__ import annotations

import argparse
import logging
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


RECIPES = {"layers3": REPO / "configs/sst2_distill_minilm.yaml", "small": REPO / "configs/sst2_distill_small.yaml"}


def main() -> None:
    import zerolm

    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="layers3")
    ap.add_argument("--out", default="runs/bench_distill")
    ap.add_argument("--epochs", type=float, help="task stage epochs (default: the config's)")
    ap.add_argument("--general-steps", type=int, help="small: general distillation steps (default: the config's)")
    ap.add_argument("--lr", type=float, help="task stage learning rate (default: the config's)")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted distillation run")
    ap.add_argument("--train-threads", type=int, help="torch threads while training (latency is timed at 2)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(2)
    out = Path(args.out)
    teacher_dir = out / "teacher"
    if not (teacher_dir / "eval.json").exists():
        finetune(load_config(REPO / "configs/sst2_minilm.yaml", [f"out_dir={teacher_dir}", "train.progress=false"],
                             cls=FinetuneConfig), overwrite=True)
    run_dir = out / args.recipe
    over = [f"teacher={teacher_dir / 'best'}", f"out_dir={run_dir}", "train.progress=false",
            "general.train.progress=false"]
    over += [f"train.epochs={args.epochs}"] if args.epochs else []
    over += [f"optim.lr={args.lr}"] if args.lr else []
    over += [f"general.train.max_steps={args.general_steps}"] if args.general_steps else []
    if args.train_threads:
        over += [f"train.threads={args.train_threads}", f"general.train.threads={args.train_threads}"]
    cfg = load_config(RECIPES[args.recipe], over, cls=DistillConfig)
    result, report = distill(cfg, resume=args.resume, overwrite=not args.resume)
    results = {
        "teacher": {"accuracy": report["teacher"]["accuracy"], "params": report["teacher_params"],
                    "dir": str(teacher_dir / "best")},
        "student (KD)": {"accuracy": report["student"]["accuracy"], "params": report["student_params"],
                         "train_s": report["train_s"], "dir": str(run_dir)},
        "kd_baseline (labels only)": {"accuracy": report["kd_baseline"]["accuracy"],
                                      "params": report["student_params"], "dir": str(run_dir / "kd_baseline")},
    }
    torch.set_num_threads(2)  # training may have run at another thread count
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
    extra = {"general": report.get("general"), "gain_over_kd_baseline": report.get("gain_over_kd_baseline")}
    print(f"general stage: {extra['general']}; gain over kd_baseline {extra['gain_over_kd_baseline']}")
    emit(rows, ["model", "dev acc", "retention", "params", "ms/batch 1", "ms/batch 32", "speed-up b32"],
         {"bench": f"distill_sst2/{args.recipe}", "results": results, "env": environment(), "args": vars(args),
          **extra})


if __name__ == "__main__":
    main()
