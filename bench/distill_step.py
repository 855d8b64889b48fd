"""Distillation step time against its floor, side by side in one process.

The floor of a distillation step is what it cannot avoid: one forward pass of the frozen
teacher (inference, no gradients) plus one ordinary training step of the student (forward,
backward, optimizer) on the labels. A distillation step also computes the soft targets and
any intermediate losses, and keeps the hidden states (and, for the attention-map losses,
the attention probabilities) that they read. Target (issue 12): distillation step <= 1.3x
(teacher forward + student step).

Rounds alternate the two measurements on the same batches, so that machine noise falls on
both; the figure is the ratio of medians.

    python bench/distill_step.py [--teacher runs/bench_distill/teacher/best] [--rounds 7]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from common import emit, environment
from zerolm.config import DistillLossConfig
from zerolm.distill.losses import layer_map
from zerolm.distill.objective import Distilled, DistillObjective
from zerolm.distill.student import make_student
from zerolm.loading import load
from zerolm.models import body_of

SETUPS = {  # name: (student shape, init, losses)
    "3 layers, hard + soft": ({"n_layers": 3}, "teacher_layers", dict(hard=1, soft=1)),
    "3 layers, hard + soft + hidden + attention (TinyBERT)": (
        {"n_layers": 3}, "teacher_layers", dict(hard=1, soft=1, hidden=1, attention=1, embedding=1)),
    "3 layers, hard + soft + MiniLM": ({"n_layers": 3}, "teacher_layers", dict(hard=1, soft=1, minilm=1)),
    "4 layers width 256, hard + soft + hidden (projected)": (
        {"n_layers": 4, "d_model": 256, "n_heads": 8, "d_ff": 1024}, "teacher_embeddings",
        dict(hard=1, soft=1, hidden=1)),
}


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(teacher, batches, shape: dict, init: str, losses: dict, rounds: int) -> tuple[float, float]:
    """(floor, distillation) median seconds of one round over `batches`."""
    t_model = teacher.model.eval().requires_grad_(False)
    torch.manual_seed(0)
    student, task, _ = make_student(teacher, shape, init)
    w = DistillLossConfig(**{**dataclasses.asdict(DistillLossConfig(hard=0, soft=0)), **losses})
    lmap = layer_map(len(body_of(student).blocks), len(body_of(t_model).blocks), "uniform")
    model = Distilled(student, "classify", w, lmap, t_model.config.d_model).train()
    objective = DistillObjective(t_model, task, "classify", w)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def floor() -> None:  # teacher inference + the student's own training step on the labels
        for b in batches:
            with torch.inference_mode():
                t_model(b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"])
            loss, _ = task.loss(student, b)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    def distil() -> None:
        for b in batches:
            loss, _ = objective.loss(model, b)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    floor(), distil()  # warm-up
    f_s, d_s = [], []
    for _ in range(rounds):
        f_s.append(timed(floor))
        d_s.append(timed(distil))
    return statistics.median(f_s), statistics.median(d_s)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="runs/bench_distill/teacher/best")
    ap.add_argument("--data", default="sst2/train.tsv")
    ap.add_argument("--batches", type=int, default=8, help="batches per round")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(2)
    teacher = load(args.teacher)
    data = teacher.task.labelled_batches(args.data, seed=0, batch_size=32, max_length=128)
    batches = [data.batch(i, 0) for i in range(args.batches)]
    rows, results = [], {}
    for name, (shape, init, losses) in SETUPS.items():
        f, d = measure(teacher, batches, shape, init, losses, args.rounds)
        per = 1e3 / len(batches)
        results[name] = {"floor_ms": f * per, "distill_ms": d * per, "ratio": d / f}
        rows.append([name, f"{f * per:.1f}", f"{d * per:.1f}", f"{d / f:.3f}x"])
        print(rows[-1], flush=True)
    emit(rows, ["setup", "teacher fwd + student step (ms)", "distillation step (ms)", "ratio"],
         {"bench": "distill_step", "results": results, "env": environment(), "args": vars(args)})


if __name__ == "__main__":
    main()
