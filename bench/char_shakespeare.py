"""Char-level GPT on tiny Shakespeare with nanoGPT's CPU configuration.

Anchor (../shared/BENCHMARKS.md, nanoGPT measured on the development machine): val
loss 1.898 on the whole val split in non-overlapping 64-char windows, 89 s wall,
39 ms/iter. Target: val loss <= 1.88, wall time <= nanoGPT's.

    python bench/char_shakespeare.py [--steps 2000] [--out runs/bench_char]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from pathlib import Path

from common import emit, environment
from zerolm.config import load_config
from zerolm.train.pretrain import pretrain

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "char_gpt_shakespeare.yaml"
NANOGPT = {"val_loss_whole_split": 1.898, "wall_s": 89.0, "ms_per_iter": 39.0, "peak_rss_mb": 374}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--out", default="runs/bench_char_shakespeare")
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = load_config(CONFIG, [
        f"out_dir={args.out}", f"train.max_steps={args.steps}", f"train.seed={args.seed}",
        "train.eval_every=0", "train.save_every=0", "train.log_every=100"])
    t0 = time.perf_counter()
    res = pretrain(cfg, overwrite=True)  # a re-run re-measures into the same directory
    wall = time.perf_counter() - t0  # everything: tokenizer, data, training, final eval, saving
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    val = res.final_eval["loss"]
    train_ms = 1e3 * res.wall_s / res.step
    rows = [["zerolm", f"{val:.4f}", f"{wall:.1f}", f"{train_ms:.1f}", f"{rss:.0f}"],
            ["nanoGPT (anchor)", f"{NANOGPT['val_loss_whole_split']:.3f}", f"{NANOGPT['wall_s']:.0f}",
             f"{NANOGPT['ms_per_iter']:.0f}", f"{NANOGPT['peak_rss_mb']}"]]
    emit(rows, ["run", "val loss (whole split)", "wall s", "ms/iter", "peak RSS MB"],
         {"bench": "char_shakespeare", "val_loss": val, "val_tokens": res.final_eval["tokens"],
          "wall_s": wall, "train_s": res.wall_s, "ms_per_iter": train_ms, "peak_rss_mb": rss,
          "steps": res.step, "target_val_loss": 1.88, "nanogpt": NANOGPT, "env": environment()})
    print(json.dumps({"meets_loss": val <= 1.88, "meets_time": wall <= NANOGPT["wall_s"]}))


if __name__ == "__main__":
    main()
