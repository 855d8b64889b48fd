"""Recovery: fine-tune a pruned or factorised model on its task's training data, by default
distilling from the uncompressed model (hard + soft targets), through the one training
loop (`zerolm distill` with teacher = the original, student.init = the compressed model).

Where it writes (beside --out, never inside it, so --out stays a plain model directory
whose size on disk is the model's): `OUT.recovery/`

    OUT.recovery/compressed/   the model right after the transform (before recovery)
    OUT.recovery/run/          the recovery run: metrics.jsonl, loss.png, distill.json, best/
    OUT.recovery/round-R/...   the same per round of iterative magnitude pruning

--out itself is written once, atomically, from the recovered model, so a failed recovery
leaves no half-written --out (its run directory stays, to read what went wrong).

Magnitude pruning keeps its zeros: training moves every weight, so the pruned ones are set
back to zero after each recovery (a mask). Iterative pruning (`rounds` > 1) reaches the
final sparsity in equal steps, recovering between them (Han et al. 2015; Zhu & Gupta 2017
use a cubic schedule, equal steps are the plain version).

compress may not import zerolm.train (loading imports compress to replay int8 modules, and
train imports loading: the import rules forbid the cycle), so the caller hands the loop's
entry point in as `distill_fn` (the CLI passes `zerolm.train.distill.distill`).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from zerolm.compress.magnitude import NO_SPEEDUP, apply_mask, magnitude, sparsity_report, zero_mask
from zerolm.compress.save import save_compressed
from zerolm.config import (
    DistillConfig,
    DistillLossConfig,
    EarlyStoppingConfig,
    LabelledDataConfig,
    OptimConfig,
    ScheduleConfig,
    StudentConfig,
    TrainConfig,
)
from zerolm.errors import ConfigError
from zerolm.modeldir import MODEL_FILE
from zerolm.models.config import FACTORISABLE

log = logging.getLogger(__name__)

RECOVERABLE = ("prune-heads", "prune-ffn", "low-rank", "magnitude")  # int8 models do not train
SUFFIX = ".recovery"  # OUT.recovery/: the recovery runs of --out
OURS = ("compressed", "run")  # what a recovery directory holds (and round-R/ of them)


@dataclass
class RecoveryOptions:
    """How to recover (the --recover* options of `zerolm compress`)."""

    steps: int  # optimizer steps in all (shared among the rounds of iterative pruning)
    train: str  # labelled file in the model's own task format
    dev: str  # validation file, same format: evaluated before and after recovery
    lr: float = 5e-5  # a fine-tuning rate: the model is trained already and only has to adapt
    batch_size: int = 32
    soft: float = 1.0  # weight of the original model's soft targets; 0: the labels alone
    temperature: float = 2.0
    threads: int = 0  # torch CPU threads of the run; 0: the loop's automatic choice
    seed: int = 1337

    def check(self, method: str, rounds: int = 1) -> None:
        if method not in RECOVERABLE:
            raise ConfigError(f"--recover does not apply to {method}: an int8 model does not train. Recover "
                              "the pruned / factorised model first, then quantize it (zerolm compress OUT "
                              f"--method {method} --out OUT_INT8)")
        if self.steps < 1:
            raise ConfigError(f"--recover STEPS must be >= 1, got {self.steps}")
        if not self.train or not self.dev:
            raise ConfigError("--recover needs --recover-data TRAIN and --recover-dev DEV (labelled files in the "
                              "model's training format)")
        if not self.lr > 0:
            raise ConfigError(f"--recover-lr must be a positive number, got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"--recover-batch-size must be >= 1, got {self.batch_size}")
        if self.soft < 0:
            raise ConfigError(f"--recover-soft must be >= 0 (0: labels only), got {self.soft}")
        if rounds < 1 or rounds > self.steps:
            raise ConfigError(f"--iterative {rounds}: give 1 to --recover STEPS ({self.steps}) rounds, each "
                              "recovers for at least one step")


def recovery_dir(out: str | os.PathLike) -> Path:
    """OUT.recovery/, beside --out."""
    out = Path(out)
    return out.with_name(out.name + SUFFIX)


def check_recovery_dir(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """OUT.recovery/ if it may be used: absent or empty, or with `overwrite` holding only
    what an earlier recovery wrote (it is then removed: nothing else is ever deleted)."""
    work = recovery_dir(out)
    if work.exists() and not work.is_dir():
        raise ConfigError(f"{work} exists and is not a directory; move it, or choose another --out")
    if work.is_dir() and any(work.iterdir()):
        if not overwrite:
            raise ConfigError(f"{work} (the recovery runs of --out) is not empty; choose another --out, or pass "
                              "--overwrite to replace it")
        other = [p.name for p in work.iterdir() if p.name not in OURS and not p.name.startswith("round-")]
        if other:
            raise ConfigError(f"{work} holds files a recovery did not write ({other[:3]}); move them, or choose "
                              "another --out")
    return work


def clear_recovery_dir(out: str | os.PathLike) -> None:
    """Remove an earlier recovery's OUT.recovery/ (after `check_recovery_dir` allowed it)."""
    work = recovery_dir(out)
    if work.is_dir():
        shutil.rmtree(work)


def round_steps(steps: int, rounds: int) -> list[int]:
    """`steps` shared among `rounds` as evenly as possible (the first rounds take the rest)."""
    base, extra = divmod(steps, rounds)
    return [base + (r < extra) for r in range(rounds)]


def recovery_config(teacher: str, init: str | os.PathLike, run_dir: str | os.PathLike, opts: RecoveryOptions,
                    steps: int, max_length: int) -> DistillConfig:
    """The DistillConfig of one recovery run: the compressed model (whole, head included)
    learns the original's outputs and the labels for `steps` steps, evaluated at the end."""
    return DistillConfig(
        out_dir=str(run_dir), teacher=str(teacher), student=StudentConfig(init=str(init)),
        distill=DistillLossConfig(hard=1.0, soft=opts.soft, temperature=opts.temperature),
        data=LabelledDataConfig(train=opts.train, dev=opts.dev, max_length=max_length),
        optim=OptimConfig(lr=opts.lr), schedule=ScheduleConfig(name="linear", warmup_steps=0),
        train=TrainConfig(max_steps=steps, batch_size=opts.batch_size, eval_every=0, save_every=0,
                          log_every=max(1, min(10, steps // 5)), keep_final=False, keep_checkpoints_when_done=False,
                          progress=False, threads=opts.threads, seed=opts.seed,
                          early_stopping=EarlyStoppingConfig("val_loss", "min", 0))).validate()


def _run_model(run_dir: Path) -> Path:
    """The model a recovery run saved: best/ (its evaluation at the end), else final/."""
    for d in (run_dir / "best", run_dir / "final"):
        if (d / MODEL_FILE).exists():
            return d
    raise ConfigError(f"{run_dir}: the recovery run saved no model (see its metrics.jsonl and the log)")


def _dev(pred, path: str) -> dict[str, float]:
    from zerolm.tasks.base import scalars

    return scalars(pred.evaluate(path))


def _recover_once(model: nn.Module, pred, source: str, where: Path, opts: RecoveryOptions, steps: int,
                  distill_fn: Callable[[DistillConfig], Any], record: dict, mask: dict | None):
    """Save `model` to where/compressed, recover it into where/run; returns (recovered
    predictor, round record)."""
    import zerolm

    compressed = save_compressed(model, where / "compressed", tokenizer=pred.tokenizer, meta=pred.meta,
                                 record=record)
    before = _dev(zerolm.load(compressed), opts.dev)
    max_length = int(pred.meta.get("max_length") or model.config.max_seq_len)
    cfg = recovery_config(source, compressed, where / "run", opts, steps, max_length)
    log.info("recovery: %d steps from %s (%s) in %s", steps, compressed,
             "labels only" if not opts.soft else f"distilling from {source}, soft weight {opts.soft:g}",
             where / "run")
    result, report = distill_fn(cfg)  # zerolm.train.distill.distill: (loop result, report)
    if result.interrupted:
        raise ConfigError(f"{where / 'run'}: the recovery run was interrupted at step {result.step}; nothing "
                          "was written to --out (run the command again)")
    recovered = zerolm.load(_run_model(where / "run"))
    if mask is not None:  # training moved the pruned weights: they are zero again
        apply_mask(recovered.model, mask)
    after = _dev(recovered, opts.dev)
    return recovered, {"steps": steps, "run_dir": str(where / "run"), "before_recovery": str(compressed),
                       "dev_original": report.get("teacher"), "dev_before": before, "dev_after": after}


def recover(model: nn.Module, pred, source: str, out: str | os.PathLike, opts: RecoveryOptions, *,
            distill_fn: Callable[[DistillConfig], Any], record: dict, mask: dict | None = None
            ) -> tuple[nn.Module, dict]:
    """Recover the compressed `model` (of `pred`, loaded from `source`) for opts.steps steps
    in OUT.recovery/; returns (recovered model, recovery record for compress.json). With
    `mask` (magnitude) the pruned weights are set back to zero afterwards."""
    recovered, rec = _recover_once(model, pred, source, recovery_dir(out), opts, opts.steps, distill_fn, record,
                                   mask)
    return recovered.model, {**_options(opts, source), "recovery_dir": str(recovery_dir(out)), **rec}


def recover_magnitude(model: nn.Module, pred, source: str, out: str | os.PathLike, opts: RecoveryOptions, *,
                      sparsity: float, rounds: int, scope: str = "global", targets: Sequence[str] = FACTORISABLE,
                      distill_fn: Callable[[DistillConfig], Any], record: dict) -> tuple[nn.Module, dict, dict]:
    """Iterative magnitude pruning: `rounds` rounds of (prune to sparsity x r / rounds,
    recover steps / rounds, zero the pruned weights again), in OUT.recovery/round-R/.
    Weights pruned in a round stay pruned (they are zero, the smallest magnitude there is),
    so the final model has exactly the final sparsity. Returns (model, sparsity report of
    the final model, recovery record)."""
    work, rounds_rec = recovery_dir(out), []
    for r, steps in enumerate(round_steps(opts.steps, rounds), start=1):
        target = sparsity * r / rounds
        report = magnitude(model, target, scope=scope, targets=targets)
        mask = zero_mask(model, targets)
        where = work if rounds == 1 else work / f"round-{r}"
        recovered, rec = _recover_once(model, pred, source, where, opts, steps, distill_fn,
                                       {**record, "report": report}, mask)
        model = recovered.model
        final = sparsity_report(model, targets)
        rounds_rec.append({"round": r, "sparsity": target, "overall_after": final["overall"], **rec})
        log.info("round %d/%d: sparsity %.1f%%, dev %s -> %s", r, rounds, 100 * final["overall"],
                 rec["dev_before"], rec["dev_after"])
    last = rounds_rec[-1]
    rec = {**_options(opts, source), "rounds": rounds_rec, "dev_original": rounds_rec[0]["dev_original"],
           "dev_before": rounds_rec[0]["dev_before"],
           "dev_after": last["dev_after"], "recovery_dir": str(work)}
    report = {"method": "magnitude", "scope": scope, **sparsity_report(model, targets), "rounds": rounds,
              "note": NO_SPEEDUP}
    return model, report, rec


def _options(opts: RecoveryOptions, source: str) -> dict:
    how = "labels" if not opts.soft else "distillation from the original (hard + soft targets)"
    return {"how": how, "teacher": source, **asdict(opts)}
