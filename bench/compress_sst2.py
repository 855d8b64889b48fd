"""SST-2 compression and export: every variant of the fine-tuned MiniLM teacher (the
shipped configs/sst2_minilm.yaml, about 90% dev) side by side in one `zerolm compress
--report`, each made by the CLI as a user would, one after another (2 cores: never two
jobs at once).

Variants and issue 13 targets (points lost on dev accuracy; speed-up and size against the
teacher, latency at 2 threads):
- `heads40`: prune-heads 40% (gradient importance) + recovery: <= 1.0 point lost, >= 1.2x
  faster at batch 32;
- `ffn50`: prune-ffn 50% (gradient importance) + recovery: <= 1.5 points lost, >= 1.3x
  faster at batch 32;
- `int8`: int8-dynamic: <= 0.5 point lost, >= 1.5x faster at batch 32, >= 2.3x smaller;
- `lowrank`: low-rank at rank 128 (half of every block's linear parameters: a 384x384
  linear keeps 128 * 768, a 384x1536 one 128 * 1920) + recovery: <= 2.0 points lost;
- `onnx_fp32` / `onnx_int8`: `zerolm export onnx --int8`: fp32 >= 1.2x faster than
  PyTorch at batch 1 on short inputs, int8 >= 2.5x and <= 0.5 point lost;
- `pipeline`: the distilled 3-layer student (bench/distill_sst2.py, layers3), prune-ffn
  50% + recovery (distilling from the student), prune-vocab on SST-2 train (the recovery
  data: the token embedding keeps the word pieces of the training sentences, the special
  tokens and single characters; predictions on train unchanged), then int8-dynamic: >= 95%
  of the teacher's accuracy, >= 6x the teacher's speed (judged at batch 32, batch 1 shown),
  >= 6x smaller on disk. `student` (the 3-layer student alone) is shown for reference.

Recovery: --steps optimizer steps of batch 32 on SST-2 train, distilling from the
uncompressed model (the CLI's hard + soft targets). The report times the first dev
evaluation batch (batch 32 of the longest dev inputs, and its first row alone for batch
1); "short inputs" for the ONNX batch-1 target are additionally timed here on the first
dev sentence of at most 16 tokens, same 2 threads, median of --repeats passes.

    ZEROLM_DATA=/work/shared/data python bench/compress_sst2.py \\
        --teacher runs/bench_distill/teacher/best --student runs/bench_distill/kd/best --out runs/bench_compress
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from common import emit, environment

TRAIN, DEV = "sst2/train.tsv", "sst2/dev.tsv"
SHORT_TOKENS = 16

# name -> (points lost at most, speed-up at batch 32 at least, size ratio at least); None: no target
TARGETS = {"heads40": (1.0, 1.2, None), "ffn50": (1.5, 1.3, None), "int8": (0.5, 1.5, 2.3),
           "lowrank": (2.0, None, None), "onnx_fp32": (None, None, None), "onnx_int8": (0.5, None, None),
           "student": (None, None, None), "pipeline": (None, 6.0, 6.0)}
SHORT_B1 = {"onnx_fp32": 1.2, "onnx_int8": 2.5}  # speed-up at batch 1 on a short input, at least
PIPELINE_SHARE = 0.95  # of the teacher's accuracy


def zerolm_cli(*args: str, log: Path) -> tuple[bool, float, str]:
    """Run `zerolm ARGS` in a fresh process (2 threads); (ok, seconds, last lines of output)."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    cmd = [str(Path(sys.executable).with_name("zerolm")), *args]  # the console script beside python
    t = time.perf_counter()
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    tail = "\n".join(log.read_text().splitlines()[-6:])
    return rc == 0, time.perf_counter() - t, tail


def short_batch1_ms(paths: dict[str, str], dev: str, repeats: int) -> dict[str, float]:
    """Median ms of one forward pass of each model on the first dev sentence of at most
    SHORT_TOKENS tokens (tokenized once by the first model's tokenizer), at 2 threads."""
    import zerolm
    from zerolm.compress.report import latency_ms
    from zerolm.data.text import resolve_data_path

    first = zerolm.load(next(iter(paths.values())))
    tok = first.tokenizer
    lines = Path(resolve_data_path(dev)).read_text(encoding="utf-8").splitlines()[1:]
    texts = [ln.split("\t")[0] for ln in lines]
    rows = tok.encode_batch(texts, max_length=128)["input_ids"]
    row = next(r for r in rows if len(r) <= SHORT_TOKENS)
    b = tok.pad([row], token_type_ids=[[0] * len(row)])
    batch = {k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    out = {}
    for name, path in paths.items():
        torch.set_num_threads(2)  # before loading: an ONNX session takes the count when it starts
        model = zerolm.load(path).model.eval()
        out[name] = latency_ms(model, batch, repeats)
    out["_tokens"] = len(row)
    return out


def verdict(checks: list[bool]) -> str:
    return "-" if not checks else ("yes" if all(checks) else "NO")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="runs/bench_distill/teacher/best", help="the fine-tuned SST-2 MiniLM")
    ap.add_argument("--student", default="runs/bench_distill/kd/best", help="the distilled 3-layer student")
    ap.add_argument("--out", default="runs/bench_compress")
    ap.add_argument("--steps", type=int, default=400, help="recovery steps of each pruned / factorised model")
    ap.add_argument("--lr", type=float, default=5e-5, help="recovery learning rate of the pruned models")
    ap.add_argument("--lowrank-lr", type=float, default=1e-4, help="recovery learning rate of low-rank")
    ap.add_argument("--lowrank-rank", type=int, default=128, help="rank of every block linear (128: half)")
    ap.add_argument("--pipeline-fraction", type=float, default=0.5, help="share of the student's FFN neurons pruned")
    ap.add_argument("--reuse", action="store_true",
                    help="keep the variants an earlier run left in --out (only the report is made again)")
    ap.add_argument("--repeats", type=int, default=20, help="timed forward passes per model and batch")
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rec = ["--recover", str(args.steps), "--recover-data", TRAIN, "--recover-dev", DEV]
    grad = ["--importance", "gradient", "--data", TRAIN]
    d = {k: str(out / k) for k in ("heads40", "ffn50", "int8", "lowrank", "onnx", "pipeline_ffn", "pipeline_vocab",
                                   "pipeline")}
    jobs = [
        ("heads40", ["compress", args.teacher, "--method", "prune-heads", "--fraction", "0.4", *grad, *rec,
                     "--recover-lr", str(args.lr), "--out", d["heads40"]]),
        ("ffn50", ["compress", args.teacher, "--method", "prune-ffn", "--fraction", "0.5", *grad, *rec,
                   "--recover-lr", str(args.lr), "--out", d["ffn50"]]),
        ("int8", ["compress", args.teacher, "--method", "int8-dynamic", "--out", d["int8"]]),
        ("lowrank", ["compress", args.teacher, "--method", "low-rank", "--rank", str(args.lowrank_rank), *rec,
                     "--recover-lr", str(args.lowrank_lr), "--out", d["lowrank"]]),
        ("onnx", ["export", "onnx", args.teacher, "--int8", "--out", d["onnx"]]),
        ("pipeline_ffn", ["compress", args.student, "--method", "prune-ffn", "--fraction",
                          str(args.pipeline_fraction), *grad, *rec, "--recover-lr", str(args.lr),
                          "--out", d["pipeline_ffn"]]),
        # the word pieces of the recovery data: the embedding rows the classifier reads, before int8
        ("pipeline_vocab", ["compress", d["pipeline_ffn"], "--method", "prune-vocab", "--data", TRAIN,
                            "--out", d["pipeline_vocab"]]),
        ("pipeline", ["compress", d["pipeline_vocab"], "--method", "int8-dynamic", "--out", d["pipeline"]]),
    ]
    after = {"pipeline_vocab": "pipeline_ffn", "pipeline": "pipeline_vocab"}  # a pipeline step needs the one before
    status: dict[str, dict] = {}
    for name, cli in jobs:
        if name in after and not status[after[name]]["ok"]:
            status[name] = {"ok": False, "seconds": 0.0, "tail": f"skipped: {after[name]} failed"}
            continue
        if args.reuse and Path(d[name]).is_dir() and any(Path(d[name]).iterdir()):
            status[name] = {"ok": True, "seconds": 0.0, "tail": "reused"}
            continue
        ok, secs, tail = zerolm_cli(*cli, "--overwrite", log=out / f"{name}.log")
        status[name] = {"ok": ok, "seconds": round(secs, 1), "tail": tail}
        print(f"[{time.perf_counter() - t0:7.1f}s] {name}: {'ok' if ok else 'FAILED'} in {secs:.0f}s\n{tail}\n",
              flush=True)

    variants = {"heads40": d["heads40"], "ffn50": d["ffn50"], "int8": d["int8"], "lowrank": d["lowrank"],
                "onnx_fp32": d["onnx"], "onnx_int8": str(Path(d["onnx"]) / "model.int8.onnx"),
                "student": args.student, "pipeline": d["pipeline"]}
    made = {"onnx_fp32": "onnx", "onnx_int8": "onnx", "student": None}
    variants = {k: v for k, v in variants.items() if status.get(made.get(k, k), {"ok": True})["ok"]
                and Path(v).exists()}
    report_dir = out / "report"
    ok, secs, tail = zerolm_cli("compress", args.teacher, "--report", "--variants",
                                *[f"{k}={v}" for k, v in variants.items()], "--data", DEV, "--repeats",
                                str(args.repeats), "--out", str(report_dir), "--overwrite", log=out / "report.log")
    print(f"[{time.perf_counter() - t0:7.1f}s] report: {'ok' if ok else 'FAILED'} in {secs:.0f}s\n{tail}\n")
    if not ok:
        raise SystemExit(f"the report failed: see {out / 'report.log'}")
    report = json.loads((report_dir / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}

    onnx_short = {k: variants[k] for k in ("onnx_fp32", "onnx_int8") if k in variants}
    short = short_batch1_ms({"original": args.teacher, **onnx_short}, DEV, args.repeats) if onnx_short else {}

    base = rows["original"]
    table, record_rows = [], []
    for name, r in rows.items():
        lost_max, sp_min, size_min = TARGETS.get(name, (None, None, None))
        lost = None if r["change"] is None else -100.0 * r["change"]
        checks = []
        lost_txt = "" if name == "original" or lost is None else f"{lost:.2f}"
        if lost_max is not None and lost is not None:
            checks.append(lost <= lost_max)
            lost_txt += f" (<= {lost_max})"
        sp1, sp32 = r["speedup"]
        sp32_txt = f"{sp32:.2f}x" + (f" (>= {sp_min})" if sp_min else "")
        if sp_min:
            checks.append(sp32 >= sp_min)
        size_txt = f"{r['size_ratio']:.2f}x" + (f" (>= {size_min})" if size_min else "")
        if size_min:
            checks.append(r["size_ratio"] >= size_min)
        short_txt = ""
        if name in short:
            s = short["original"] / short[name]
            short_txt = f"{short[name]:.2f} ms {s:.2f}x" + (f" (>= {SHORT_B1[name]})" if name in SHORT_B1 else "")
            if name in SHORT_B1:
                checks.append(s >= SHORT_B1[name])
        share_txt = ""
        if name == "pipeline" and r["score"] is not None:
            share = r["score"] / base["score"]
            share_txt = f"{100 * share:.1f}% (>= {100 * PIPELINE_SHARE:.0f}%)"
            checks.append(share >= PIPELINE_SHARE)
        table.append([name, r["method"], f"{100 * r['score']:.2f}", lost_txt, share_txt,
                      f"{r['ms'][0]:.2f} / {r['ms'][1]:.1f}", f"{sp1:.2f}x", sp32_txt, short_txt,
                      f"{r['bytes'] / 1e6:.1f}", size_txt, f"{r['parameters']:,}" if r["parameters"] else "?",
                      "" if name == "original" else verdict(checks)])
        record_rows.append({"name": name, "method": r["method"], "accuracy": r["score"], "points_lost": lost,
                            "ms": r["ms"], "speedup": r["speedup"], "bytes": r["bytes"],
                            "size_ratio": r["size_ratio"], "parameters": r["parameters"],
                            "short_b1_ms": short.get(name), "targets_met": None if not checks else all(checks)})
    wall = time.perf_counter() - t0
    print(f"SST-2 dev; teacher {args.teacher}; latency at 2 threads, median of {args.repeats}: batch 1 "
          f"({report['tokens'][0]} tokens) / batch 32 ({report['tokens'][1]} tokens per row); short batch 1: "
          f"{short.get('_tokens', '?')} tokens; recovery {args.steps} steps; wall {wall / 60:.1f} min\n")
    emit(table, ["variant", "method", "acc %", "pts lost (target)", "of teacher", "ms b1 / b32", "speed-up b1",
                 "speed-up b32 (target)", "short b1 (target)", "MB", "smaller (target)", "params", "targets"],
         {"bench": "compress_sst2", "teacher": args.teacher, "student": args.student, "steps": args.steps,
          "lr": args.lr, "lowrank_lr": args.lowrank_lr, "lowrank_rank": args.lowrank_rank,
          "pipeline_fraction": args.pipeline_fraction, "tokens": report["tokens"],
          "short_tokens": short.get("_tokens"), "rows": record_rows,
          "jobs": {k: {"ok": v["ok"], "seconds": v["seconds"]} for k, v in status.items()},
          "wall_s": round(wall, 1), "env": environment()})


if __name__ == "__main__":
    main()
