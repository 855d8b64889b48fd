"""The one training loop. Pretraining, fine-tuning and distillation differ only by the
task (batch -> loss), the batches, and which parameters require grad.

Written once here: gradient accumulation, clipping, the LR schedule, bf16 autocast,
evaluation and early stopping, atomic resumable checkpoints (and resuming past a damaged
one), NaN/inf detection, data parallelism (torchrun), stopping cleanly on Ctrl-C or
SIGTERM, the CPU thread count, progress, metrics.jsonl, the loss-curve PNG and what a
finished run keeps on disk.

Time is counted two ways: `wall_s` is the whole of `fit`; `train_s` only the training
steps, so tokens/s (and any samples/s derived from a result) does not fall when
evaluation or checkpoint writing takes long. `train_s` is the run's: a checkpoint keeps
it and a resumed run goes on counting from there, as its step and tokens do.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zerolm.atomic import atomic_write_text
from zerolm.config import EarlyStoppingConfig, OptimConfig, ScheduleConfig, TrainConfig
from zerolm.errors import CheckpointError, TrainingError
from zerolm.modeldir import save_model
from zerolm.progress import Progress
from zerolm.tasks.base import Batches, scalars, to_device
from zerolm.train import dist
from zerolm.train.checkpoint import (
    checkpoint_step,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from zerolm.train.optim import build_optimizer, lr_at
from zerolm.train.rundir import RUN_STATE, disk_usage, format_size

log = logging.getLogger(__name__)

# a log window shorter than this (training seconds) is too noisy to call a slowdown
_MIN_WINDOW_S = 0.5
# a window this many times slower than the best earlier one means another job took the CPUs
_SLOWDOWN = 3.0

__all__ = ["Batches", "TrainResult", "Trainer"]


@dataclass
class TrainResult:
    step: int
    stopped_early: bool
    best_metric: float | None
    final_eval: dict[str, Any]  # the last evaluation's report, as the task returned it
    out_dir: Path
    wall_s: float  # the whole of this fit: training, evaluation and checkpoints
    tokens: int
    history: list[dict[str, Any]] = field(default_factory=list)
    best_step: int | None = None  # the step saved in best/ (None: no evaluation ran)
    interrupted: bool = False  # stopped by Ctrl-C, SIGTERM or request_stop: resumable
    train_s: float = 0.0  # seconds in training steps only, the whole run's (across resumes)
    fit_train_s: float = 0.0  # the part of train_s spent in this fit (0: it had nothing to train)


@dataclass
class _Step:
    """What one optimizer step leaves for logging."""

    loss: torch.Tensor  # mean over the micro-batches of this process (on the device)
    metrics: dict[str, float]  # the task's cheap metrics, averaged the same way
    grad_norm: torch.Tensor | None  # before clipping; None when clipping is off
    lr: float
    tokens: int  # over all processes


def _count_tokens(batch: dict[str, torch.Tensor]) -> int:
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return batch["input_ids"].numel()


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        task,
        train_data: Batches,
        *,
        train: TrainConfig,
        optim: OptimConfig,
        schedule: ScheduleConfig,
        out_dir: str | Path,
        val_data: Batches | None = None,
        config_text: str = "",
        tokenizer=None,
        device: torch.device | None = None,
        extra_files: dict[str, str] | None = None,
        saved_model: nn.Module | None = None,
    ):
        """`extra_files` (name -> text) are written into every model directory the run saves
        (best/, final/, checkpoints), inside the same atomic write: a fine-tuned model's
        task.json is never missing beside its weights. `saved_model` is what best/ and final/
        hold when it is not the trained model itself (distillation saves the student alone,
        without its projections); checkpoints hold everything, for resuming."""
        self.cfg, self.optim_cfg, self.sched = train, optim, schedule
        self.saved_model = saved_model if saved_model is not None else model
        self.extra_files = dict(extra_files or {})
        self.task, self.train_data, self.val_data = task, train_data, val_data
        self.out_dir = Path(out_dir)
        self.config_text, self.tokenizer = config_text, tokenizer
        self.device = device or torch.device("cpu")
        self.threads_note = self._set_threads()
        self.model = model.to(self.device)
        self.optimizer = build_optimizer(self.model, optim)
        self.world = dist.world_size()
        self.rank = dist.rank()
        self.ddp_model: nn.Module = self.model
        if self.world > 1:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        self.callbacks: list[Callable[[Trainer, int, dict[str, Any]], None]] = []  # after each step
        self._stop_requested = False
        self.step = 0
        self.best: float | None = None
        self.best_step: int | None = None  # the step whose weights are in best/
        self.bad_evals = 0
        self.tokens_seen = 0
        self.train_s = 0.0  # training-step seconds of the run (restored on resume)
        self._window_s, self._window_tokens = 0.0, 0  # the current log window (training time only)
        self._best_tps = 0.0
        self._warned_slow = False

    # ------------------------------------------------------------------ public
    def request_stop(self) -> None:
        """Stop after the current step, saving a resumable checkpoint (Ctrl-C does this)."""
        self._stop_requested = True

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def resume(self, path: str | Path | None = None) -> bool:
        """Restore the newest readable checkpoint (or `path`); False when there is none.

        A damaged newest checkpoint (truncated weights or optimizer file, broken
        trainer_state.json, missing file) is named in a warning and the one before it is
        taken, or, with train.resume_bad_checkpoint "stop", the resume fails naming the
        file. Nothing is deleted.
        """
        if path is not None:
            self._restore(Path(path), load_checkpoint(Path(path), self.model, self.optimizer))
            return True
        cks = list_checkpoints(self.checkpoint_dir)
        problems = []
        for ck in reversed(cks):
            try:
                state = load_checkpoint(ck, self.model, self.optimizer)
            except CheckpointError as e:
                if self.cfg.resume_bad_checkpoint == "stop":
                    raise CheckpointError(
                        f"{e}; not resuming (train.resume_bad_checkpoint=stop): set it to "
                        f"'previous' to resume from the checkpoint before, or move {ck} "
                        f"away") from None
                log.warning("%s; resuming from the checkpoint before it instead (%s is left as "
                            "it is)", e, ck.name)
                problems.append(str(e))
                continue
            self._restore(ck, state)
            return True
        if problems:
            raise CheckpointError(f"no readable checkpoint in {self.checkpoint_dir}: "
                                  f"{'; '.join(problems)}")
        return False

    def fit(self) -> TrainResult:
        cfg = self.cfg
        main = dist.is_main()
        log.info(self.threads_note)
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if self.config_text:
                atomic_write_text(self.out_dir / "config.yaml", self.config_text)
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in self.model.parameters())
        log.info("trainable parameters: %s of %s (%.2f%%)", f"{n_train:,}", f"{n_all:,}",
                 100.0 * n_train / max(n_all, 1))
        autocast = self._autocast()
        progress = self._progress(main)
        start_step, start_time = self.step, time.perf_counter()
        start_train_s = self.train_s  # 0, or what the run had trained before this resume
        self._window_s, self._window_tokens = 0.0, 0
        stopped_early = interrupted = False
        report: dict[str, Any] = {}
        old_handlers = self._install_signal_handlers()
        self.model.train()
        try:
            while self.step < cfg.max_steps:
                t0 = time.perf_counter()
                st = self._train_step(autocast)
                is_log = self.step % max(cfg.log_every, 1) == 0 or self.step == cfg.max_steps
                is_eval = self.val_data is not None and (self.step == cfg.max_steps or (
                    cfg.eval_every and self.step % cfg.eval_every == 0))
                if is_log or is_eval:
                    self._sync_device()  # queued GPU work belongs to the step, not to what follows
                self._count_train_time(time.perf_counter() - t0, st.tokens)

                row = self._log_row(st, start_time, progress) if is_log else None
                if progress is not None:
                    progress.update(1)
                if is_eval:
                    report, stopped_early = self._evaluate_and_check()
                    val = {f"val_{k}": v for k, v in scalars(report).items()}
                    row = {**(row or {"step": self.step}), **val}
                if row is not None and main:
                    self._record(row, is_eval, start_step, start_time)
                for cb in self.callbacks:
                    cb(self, self.step, row or {})
                # any process's signal stops them all (a scheduler may signal only some); a
                # signal during the last step or beside early stopping leaves a finished run
                requested = dist.any_rank(self._stop_requested, self.device)
                interrupted = requested and not stopped_early and self.step < cfg.max_steps
                if self._checkpoint_due(stopped_early or interrupted, interrupted):
                    self.save()
                if stopped_early or interrupted:
                    break
        finally:
            self._restore_signal_handlers(old_handlers)
            if progress is not None:
                progress.close()
        wall = time.perf_counter() - start_time
        status = "interrupted" if interrupted else "stopped_early" if stopped_early else "finished"
        self._finish(status, wall)
        return TrainResult(self.step, stopped_early, self.best, report, self.out_dir, wall,
                           self.tokens_seen, best_step=self.best_step, interrupted=interrupted,
                           train_s=self.train_s, fit_train_s=self.train_s - start_train_s)

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """The task's validation report, as the task returns it (computed on rank 0,
        shared with every rank). Only its top-level numbers are logged and compared."""
        report: dict[str, Any] = {}
        if dist.is_main():
            self.model.eval()
            batches = self.val_data.eval_batches(self.cfg.eval_batches)
            total = len(batches) if hasattr(batches, "__len__") else None
            with self._autocast(), Progress("evaluating", total=total, unit="batch",
                                            bar=self.cfg.progress) as bar:
                report = self.task.evaluate(self.model, bar.wrap(batches))
            self.model.train()
        return dist.broadcast_object(report)

    def save(self) -> None:
        """A resumable checkpoint of this step; older ones beyond train.keep_checkpoints go."""
        if dist.is_main():
            state = {"step": self.step, "best": self.best, "best_step": self.best_step,
                     "bad_evals": self.bad_evals, "tokens": self.tokens_seen, "train_s": self.train_s}
            path = self.checkpoint_dir / f"step-{self.step:08d}"
            save_checkpoint(path, self.model, self.optimizer, state, self.config_text,
                            self.tokenizer, self.extra_files)
            # checkpoints of later steps are left alone: they exist when this run resumed from an
            # earlier one (past a damaged checkpoint, or by choice), and deleting is not ours to do
            done = [p for p in list_checkpoints(self.checkpoint_dir)
                    if checkpoint_step(p) <= self.step]
            for old in done[: -max(self.cfg.keep_checkpoints, 1)]:
                shutil.rmtree(old, ignore_errors=True)
        dist.barrier()

    # ------------------------------------------------------------ the step
    def _train_step(self, autocast) -> _Step:
        """One optimizer step: grad_accum micro-batches per process, gradients averaged
        over processes by DDP on the last one, clipped, applied."""
        cfg, micro = self.cfg, self.cfg.grad_accum
        lr = lr_at(self.step, self.optim_cfg.lr, self.sched, cfg.max_steps)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        loss_acc = torch.zeros((), device=self.device)
        extra: dict[str, float] = {}
        tokens = 0
        for m in range(micro):
            batch = self.train_data.batch(self.step, self.rank * micro + m)
            tokens += _count_tokens(batch)
            batch = to_device(batch, self.device)
            sync = m == micro - 1 or self.world == 1
            ctx = contextlib.nullcontext() if sync else self.ddp_model.no_sync()
            with ctx, autocast:
                loss, metrics = self.task.loss(self.ddp_model, batch)
            if not torch.isfinite(loss):
                self._fail_nonfinite(f"loss is {loss.item()}", m)
            (loss / micro).backward()
            loss_acc += loss.detach() / micro
            for k, v in metrics.items():
                extra[k] = extra.get(k, 0.0) + float(v) / micro
        grad_norm = None
        if cfg.clip_grad > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
            if not torch.isfinite(grad_norm):
                self._fail_nonfinite(f"gradient norm is {grad_norm.item()}", None)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        tokens *= self.world
        self.tokens_seen += tokens
        return _Step(loss_acc, extra, grad_norm, lr, tokens)

    def _count_train_time(self, seconds: float, tokens: int) -> None:
        self.train_s += seconds
        self._window_s += seconds
        self._window_tokens += tokens

    # ---------------------------------------------------------- logging
    def _log_row(self, st: _Step, start_time: float, progress) -> dict[str, Any]:
        """The metrics row of a log step; closes the throughput window."""
        loss_val = float(dist.all_reduce_mean(st.loss))
        tps = self._window_tokens / max(self._window_s, 1e-9)
        self._watch_throughput(tps, self._window_s)
        self._window_s, self._window_tokens = 0.0, 0
        row = {"step": self.step, "loss": loss_val, "lr": st.lr, "tokens_per_s": tps,
               "tokens": self.tokens_seen, "elapsed_s": time.perf_counter() - start_time,
               "train_s": self.train_s, **st.metrics}
        if st.grad_norm is not None:
            row["grad_norm"] = float(st.grad_norm)
        if progress is not None:
            progress.set_postfix(loss=f"{loss_val:.4f}", tok_s=f"{tps:,.0f}", refresh=False)
        return row

    def _record(self, row: dict[str, Any], is_eval: bool, start_step: int,
                start_time: float) -> None:
        """metrics.jsonl and the log line (rank 0)."""
        self._write_metrics(row)
        if not is_eval:
            log.debug("step %d: %s", self.step, row)
        done = self.step - start_step
        elapsed = time.perf_counter() - start_time
        eta = elapsed / max(done, 1) * (self.cfg.max_steps - self.step)
        parts = [f"step {self.step}/{self.cfg.max_steps}"]
        if "loss" in row:
            parts.append(f"loss {row['loss']:.4f}")
        parts += [f"{k} {v:,.0f}" if float(v).is_integer() and abs(v) >= 10 else f"{k} {v:.4f}"
                  for k, v in row.items() if k.startswith("val_") and isinstance(v, (int, float))]
        if "tokens_per_s" in row:
            parts.append(f"{row['tokens_per_s']:,.0f} tok/s")
        parts.append(f"eta {_fmt_time(eta)}")
        log.info(" | ".join(parts))

    def _watch_throughput(self, tps: float, seconds: float) -> None:
        """Warn once when a log window trains much slower than the best one before it: on a
        CPU that is almost always other work taking the cores the threads were sized for."""
        if self.device.type != "cpu" or not dist.is_main() or seconds < _MIN_WINDOW_S:
            return
        if not self._warned_slow and self._best_tps > 0 and tps < self._best_tps / _SLOWDOWN:
            self._warned_slow = True
            log.warning("training slowed to %s tok/s from %s tok/s earlier in this run: other "
                        "work is likely competing for the CPUs (%s). Try train.threads=1, or fewer "
                        "processes per machine", f"{tps:,.0f}", f"{self._best_tps:,.0f}",
                        self.threads_note)
        self._best_tps = max(self._best_tps, tps)

    def _write_metrics(self, row: dict[str, Any]) -> None:
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    def _truncate_metrics(self, step: int) -> None:
        """After a resume, drop rows logged after the checkpoint (they will be redone)."""
        path = self.out_dir / "metrics.jsonl"
        if not dist.is_main() or not path.exists():
            return
        rows = [ln for ln in path.read_text().splitlines()
                if ln.strip() and json.loads(ln)["step"] <= step]
        atomic_write_text(path, "".join(r + "\n" for r in rows))

    # ---------------------------------------------- evaluation, early stopping
    def _evaluate_and_check(self) -> tuple[dict[str, Any], bool]:
        """(the report, whether early stopping ends the run); saves best/ on improvement."""
        report = self.evaluate()
        return report, self._early_stopping(scalars(report))

    def _early_stopping(self, metrics: dict[str, float]) -> bool:
        es: EarlyStoppingConfig = self.cfg.early_stopping
        name = es.metric[4:] if es.metric.startswith("val_") else es.metric
        if name not in metrics:
            raise TrainingError(f"train.early_stopping.metric '{es.metric}' is not among the "
                                f"validation metrics: {sorted('val_' + k for k in metrics)}")
        value = metrics[name]
        better = self.best is None or (value < self.best if es.mode == "min" else value > self.best)
        if better:
            self.best, self.best_step, self.bad_evals = value, self.step, 0
            if dist.is_main():
                save_model(self.saved_model, self.out_dir / "best", run_config=self.config_text,
                           tokenizer=self.tokenizer, extra_files=self.extra_files)
            return False
        self.bad_evals += 1
        if es.patience and self.bad_evals >= es.patience:
            log.info("early stopping: %s did not improve for %d evaluations (best %.5g)",
                     es.metric, self.bad_evals, self.best)
            return True
        return False

    # ------------------------------------------------------------- saving
    def _checkpoint_due(self, stopping: bool, interrupted: bool) -> bool:
        cfg = self.cfg
        last = stopping or self.step >= cfg.max_steps
        if last and not interrupted and not cfg.keep_checkpoints_when_done:
            return False  # the finished run deletes its checkpoints at the end: skip writing one
        return bool(cfg.save_every and self.step % cfg.save_every == 0) or last

    def _finish(self, status: str, wall: float) -> None:
        """final/, the loss curve, run.json, and the end-of-run clean-up of checkpoints."""
        cfg = self.cfg
        if dist.is_main():
            best, final = self.out_dir / "best", self.out_dir / "final"
            finished = status != "interrupted"
            if cfg.keep_final or (finished and not best.is_dir()):
                if not cfg.keep_final:
                    log.info("writing final/ although train.keep_final is false: there is no best/ "
                             "(no evaluation ran), so final/ is the run's only model")
                save_model(self.saved_model, final, run_config=self.config_text, tokenizer=self.tokenizer,
                           extra_files=self.extra_files)
            self._plot()
            if finished and not cfg.keep_checkpoints_when_done and self.checkpoint_dir.exists():
                # last of all: best/ and final/ are complete on disk before the checkpoints go
                shutil.rmtree(self.checkpoint_dir)
            state = {"status": status, "step": self.step, "max_steps": cfg.max_steps,
                     "best_step": self.best_step, "best_metric": self.best,
                     "tokens": self.tokens_seen, "wall_s": wall, "train_s": self.train_s}
            atomic_write_text(self.out_dir / RUN_STATE, json.dumps(state, indent=2) + "\n")
            kept = [f"{d.name}/ {format_size(disk_usage(d))}" for d in (best, final) if d.is_dir()]
            if self.checkpoint_dir.is_dir():
                kept.append(f"checkpoints/ {format_size(disk_usage(self.checkpoint_dir))}")
            log.info("%s at step %d; kept in %s: %s; total %s", status.replace("_", " "), self.step,
                     self.out_dir, ", ".join(kept), format_size(disk_usage(self.out_dir)))
        dist.barrier()

    # ---------------------------------------------------------------- internals
    def _restore(self, path: Path, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.best = state.get("best")
        self.best_step = state.get("best_step")
        self.bad_evals = state.get("bad_evals", 0)
        self.tokens_seen = state.get("tokens", 0)
        self.train_s = state.get("train_s", 0.0)  # 0 for a checkpoint written before it was kept
        self._truncate_metrics(self.step)
        log.info("resumed from %s at step %d", path, self.step)

    def _set_threads(self) -> str:
        """Set torch's CPU threads (train.threads, or auto) and say how many and why."""
        n, why = dist.choose_threads(self.cfg.threads)
        if self.device.type == "cpu" or self.cfg.threads > 0:
            torch.set_num_threads(n)
            return f"{n} torch thread{'' if n == 1 else 's'} ({why})"
        # on a GPU the CPU threads only feed it: torch's default is left unless asked
        return (f"training on {self.device}; {torch.get_num_threads()} torch CPU threads "
                f"(torch's default)")

    def _sync_device(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _autocast(self):
        if self.cfg.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _progress(self, main: bool):
        import sys

        if not (main and self.cfg.progress and sys.stderr.isatty()):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.cfg.max_steps, initial=self.step, unit="step", dynamic_ncols=True)

    def _install_signal_handlers(self) -> dict[int, Any]:
        """Ctrl-C and SIGTERM (what schedulers and torchrun send before they kill) stop the
        run after the current step with a resumable checkpoint. A second Ctrl-C aborts
        without saving; a second SIGTERM is ignored, because a scheduler that signals the
        whole process group and torchrun forwarding it deliver two. Returns what to restore."""
        if threading.current_thread() is not threading.main_thread():
            return {}  # Python handles signals in the main thread only

        def handler(signum, frame):
            if self._stop_requested:
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt
                return
            self._stop_requested = True
            if dist.is_main():
                again = (" (press Ctrl-C again to abort without saving)"
                         if signum == signal.SIGINT else "")
                log.warning("%s: stopping after this step and saving a resumable checkpoint%s",
                            signal.Signals(signum).name, again)

        return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _restore_signal_handlers(self, old: dict[int, Any]) -> None:
        for sig, h in old.items():
            # None: a handler not set from Python; the default is the closest we can restore
            signal.signal(sig, h if h is not None else signal.SIG_DFL)

    def _fail_nonfinite(self, what: str, micro: int | None) -> None:
        cks = list_checkpoints(self.checkpoint_dir)
        last = f"the last good checkpoint is {cks[-1]}" if cks else "no checkpoint was written yet"
        where = f"step {self.step + 1}" + (f", micro-batch {micro}" if micro is not None else "")
        raise TrainingError(f"{what} at {where}; training stopped and nothing was saved from this "
                            f"step ({last}; resume with --resume). Try a lower optim.lr, a longer "
                            f"schedule.warmup_steps or train.clip_grad.")

    def _plot(self) -> None:
        from zerolm.eval.plots import plot_loss_curve

        try:
            plot_loss_curve(self.out_dir / "metrics.jsonl", self.out_dir / "loss.png",
                            loss_unit=self.task.loss_unit)
        except Exception as e:  # a plot must never cost the run
            log.warning("could not draw the loss curve: %s", e)


def _fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
