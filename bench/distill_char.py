"""Causal-LM distillation on tiny Shakespeare (characters): a 6-layer d384 teacher taught
into a 2-layer d128 student, against the same student trained alone for the same steps.

Issue 12's target: the distilled student reaches a lower val loss than the student alone.
All three models share one split of the text (the first ~90% of the characters train,
the rest validates, cut at a line), the char tokenizer of the training part, windows of
64 characters, batch 12, and nanoGPT's CPU recipe (configs/char_gpt_shakespeare.yaml:
AdamW lr 1e-3 -> 1e-4 cosine, warmup 100, beta2 0.99). Val loss: the whole val part in
non-overlapping windows, nats per character.

    python bench/distill_char.py [--out runs/bench_distill_char] [--teacher-steps 2000] [--steps 2000]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from common import emit, environment
from zerolm.config import DistillConfig, load_config
from zerolm.data.text import resolve_data_path
from zerolm.train.distill import distill
from zerolm.train.pretrain import pretrain

REPO = Path(__file__).resolve().parents[1]
CHAR = REPO / "configs" / "char_gpt_shakespeare.yaml"
RECIPE = ["optim.lr=1e-3", "optim.weight_decay=0.1", "optim.betas=[0.9,0.99]", "schedule.name=cosine",
          "schedule.warmup_steps=100", "schedule.min_lr=1e-4", "train.batch_size=12", "train.clip_grad=0",
          "train.log_every=100", "train.progress=false"]


def split(out: Path, fraction: float = 0.9) -> tuple[Path, Path]:
    """train.txt / val.txt: the text cut at the line nearest `fraction` of its characters."""
    text = resolve_data_path("tinyshakespeare/input.txt").read_text()
    cut = text.index("\n", int(fraction * len(text))) + 1
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.txt").write_text(text[:cut])
    (out / "val.txt").write_text(text[cut:])
    return out / "train.txt", out / "val.txt"


def lm(out: Path, train: Path, val: Path, steps: int, shape: list[str], threads: int):
    cfg = load_config(CHAR, [f"out_dir={out}", f"data.train=[{train}]", f"data.val=[{val}]", f"train.max_steps={steps}",
                             "train.eval_every=0", "train.save_every=0", "train.eval_batches=0", f"train.threads={threads}",
                             *RECIPE, *shape])
    return pretrain(cfg, overwrite=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/bench_distill_char")
    ap.add_argument("--teacher-steps", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=2000, help="steps of the student, alone and distilled")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads while training (0: all CPUs)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    out = Path(args.out)
    train, val = split(out / "data")
    teacher_shape = ["model.n_layers=6", "model.d_model=384", "model.n_heads=6", "model.d_ff=1536"]
    student_shape = ["model.n_layers=2", "model.d_model=128", "model.n_heads=4", "model.d_ff=512"]
    t_dir = out / "teacher"
    if (t_dir / "final" / "model.safetensors").exists():
        import json

        t_state = json.loads((t_dir / "run.json").read_text())
        teacher_loss, teacher_s = None, t_state.get("wall_s")
    else:
        t = lm(t_dir, train, val, args.teacher_steps, teacher_shape, args.threads)
        teacher_loss, teacher_s = t.final_eval["loss"], t.wall_s
    alone = lm(out / "alone", train, val, args.steps, student_shape, args.threads)
    cfg = load_config(REPO / "configs/tiny/distill_classify.yaml", [
        f"teacher={t_dir / 'final'}", f"out_dir={out / 'distilled'}", f"data.train={train}", f"data.dev={val}",
        "data.max_length=64", "student.n_layers=2", "student.d_model=128", "student.n_heads=4", "student.d_ff=512",
        "student.init=random", "distill.hard=1", "distill.soft=1", f"distill.temperature={args.temperature}",
        "distill.hidden=0", "distill.attention=0", f"train.max_steps={args.steps}", "train.epochs=0",
        "train.eval_every=0", "train.eval_batches=0", "train.keep_final=true",
        "train.early_stopping.metric=val_loss", "train.early_stopping.mode=min", f"train.threads={args.threads}",
        *RECIPE], cls=DistillConfig)
    result, report = distill(cfg, overwrite=True)
    if teacher_loss is None:
        teacher_loss = report["teacher"]["loss"]
    rows = [["teacher 6 x d384", f"{teacher_loss:.4f}", f"{report['teacher_params']:,}", args.teacher_steps,
             f"{teacher_s:.0f}"],
            ["student 2 x d128 alone", f"{alone.final_eval['loss']:.4f}", f"{report['student_params']:,}",
             args.steps, f"{alone.wall_s:.0f}"],
            ["student 2 x d128 distilled", f"{report['student']['loss']:.4f}", f"{report['student_params']:,}",
             args.steps, f"{result.wall_s:.0f}"]]
    emit(rows, ["model", "val loss (nats/char)", "params", "steps", "train s"],
         {"bench": "distill_char", "teacher_loss": teacher_loss, "alone_loss": alone.final_eval["loss"],
          "distilled_loss": report["student"]["loss"], "latency": report["latency"], "env": environment(),
          "args": vars(args)})


if __name__ == "__main__":
    main()
