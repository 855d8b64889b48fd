"""Joint intent detection + slot filling on ATIS and SNIPS (dev splits), from
all-MiniLM-L6-v2 with the shipped recipes (configs/atis_joint_minilm.yaml,
configs/snips_joint_minilm.yaml), with and without a CRF on the slot tags.

Targets (issue 15), intent accuracy / slot F1 / frame accuracy on dev:
ATIS >= 97.0 / 95.0 / 86.0, SNIPS >= 98.0 / 94.0 / 88.0. Published JointBERT (BERT-base,
test split): ATIS 97.5 / 96.1 / 88.2, SNIPS 98.6 / 97.0 / 92.8. The figures are those of
the best evaluation of each run (the recipe keeps the best val_frame_accuracy), so dev
both selects and scores, as the early-stopped recipes of the other benches do.

    python bench/joint_slu.py [--datasets atis,snips] [--crf off,on] [--threads 1]
                              [--out runs/bench_joint_slu] [KEY=VALUE overrides ...]

A finished run (its eval.json) is read back, not retrained; --rerun trains it again.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from common import emit, environment
from zerolm.config import FinetuneConfig, load_config
from zerolm.train.finetune import finetune

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"atis": "configs/atis_joint_minilm.yaml", "snips": "configs/snips_joint_minilm.yaml"}
# intent accuracy, slot F1, frame accuracy (percent)
TARGETS = {"atis": (97.0, 95.0, 86.0), "snips": (98.0, 94.0, 88.0)}
JOINTBERT = {"atis": (97.5, 96.1, 88.2), "snips": (98.6, 97.0, 92.8)}
KEYS = ("intent_accuracy", "slot_f1", "frame_accuracy")


def run_one(dataset: str, crf: bool, out: Path, threads: int, overrides: list[str], rerun: bool) -> dict:
    run_dir = out / f"{dataset}_{'crf' if crf else 'softmax'}"
    if rerun or not (run_dir / "eval.json").exists():
        cfg = load_config(REPO / CONFIGS[dataset], [f"out_dir={run_dir}", f"task.crf={str(crf).lower()}",
                                                    f"train.threads={threads}", "train.progress=false",
                                                    *overrides], cls=FinetuneConfig)
        finetune(cfg, overwrite=True)
    return json.loads((run_dir / "eval.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default="atis,snips")
    ap.add_argument("--crf", default="off,on", help="off, on or off,on")
    ap.add_argument("--out", default="runs/bench_joint_slu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads while training (0: all CPUs)")
    ap.add_argument("--rerun", action="store_true", help="train again even where eval.json exists")
    ap.add_argument("overrides", nargs="*", help="config overrides for every run (e.g. optim.lr=1e-4)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    rows, results = [], []
    for dataset in args.datasets.split(","):
        for crf in [c == "on" for c in args.crf.split(",")]:
            rep = run_one(dataset, crf, Path(args.out), args.threads, args.overrides, args.rerun)
            got = [100 * rep[k] for k in KEYS]
            met = [g >= t for g, t in zip(got, TARGETS[dataset])]
            results.append({"dataset": dataset, "crf": crf, **dict(zip(KEYS, got)), "met": dict(zip(KEYS, met)),
                            "targets": dict(zip(KEYS, TARGETS[dataset])), "steps": rep["steps"],
                            "train_s": rep["train_s"], "unseen": rep["unseen"],
                            "slot_precision": 100 * rep["slot_precision"], "slot_recall": 100 * rep["slot_recall"]})
            rows.append([dataset, "CRF" if crf else "softmax",
                         *[f"{g:.2f} ({'ok' if m else 'MISSED'} >= {t})" for g, m, t in zip(got, met, TARGETS[dataset])],
                         " / ".join(f"{v}" for v in JOINTBERT[dataset]), f"{rep['steps']}", f"{rep['train_s']:.0f}"])
    emit(rows, ["dataset", "slots", "intent acc", "slot F1", "frame acc", "JointBERT (test)", "steps", "train s"],
         {"bench": "joint_slu", "results": results, "env": environment(), "args": vars(args)})


if __name__ == "__main__":
    main()
