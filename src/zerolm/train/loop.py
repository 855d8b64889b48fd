"""The one training loop. Pretraining, fine-tuning and distillation differ only by the
task (batch -> loss), the batches, and which parameters require grad.

Written once here: gradient accumulation, clipping, the LR schedule, bf16 autocast,
evaluation and early stopping, atomic resumable checkpoints, NaN/inf detection,
data parallelism (torchrun), progress bar, metrics.jsonl and the loss-curve PNG.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from zerolm.config import EarlyStoppingConfig, OptimConfig, ScheduleConfig, TrainConfig
from zerolm.errors import TrainingError
from zerolm.modeldir import save_model
from zerolm.tasks.base import to_device
from zerolm.train import dist
from zerolm.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from zerolm.train.optim import build_optimizer, lr_at

log = logging.getLogger(__name__)


class Batches(Protocol):
    def batch(self, step: int, index: int) -> dict[str, torch.Tensor]: ...

    def eval_batches(self, max_batches: int = 0) -> Iterable[dict[str, torch.Tensor]]: ...


@dataclass
class TrainResult:
    step: int
    stopped_early: bool
    best_metric: float | None
    final_eval: dict[str, float]
    out_dir: Path
    wall_s: float
    tokens: int
    history: list[dict[str, Any]] = field(default_factory=list)
    best_step: int | None = None  # the step saved in best/ (None: no evaluation ran)


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
    ):
        self.cfg, self.optim_cfg, self.sched = train, optim, schedule
        self.task, self.train_data, self.val_data = task, train_data, val_data
        self.out_dir = Path(out_dir)
        self.config_text, self.tokenizer = config_text, tokenizer
        self.device = device or torch.device("cpu")
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

    # ------------------------------------------------------------------ public
    def request_stop(self) -> None:
        """Stop after the current step, saving a resumable checkpoint (Ctrl-C does this)."""
        self._stop_requested = True

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def resume(self, path: str | Path | None = None) -> bool:
        """Restore the newest checkpoint (or `path`); False when there is none."""
        if path is None:
            cks = list_checkpoints(self.checkpoint_dir)
            if not cks:
                return False
            path = cks[-1]
        state = load_checkpoint(Path(path), self.model, self.optimizer)
        self.step = state["step"]
        self.best = state.get("best")
        self.best_step = state.get("best_step")
        self.bad_evals = state.get("bad_evals", 0)
        self.tokens_seen = state.get("tokens", 0)
        self._truncate_metrics(self.step)
        log.info("resumed from %s at step %d", path, self.step)
        return True

    def fit(self) -> TrainResult:
        cfg = self.cfg
        main = dist.is_main()
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if self.config_text:
                (self.out_dir / "config.yaml").write_text(self.config_text)
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in self.model.parameters())
        log.info("trainable parameters: %s of %s (%.2f%%)", f"{n_train:,}", f"{n_all:,}",
                 100.0 * n_train / max(n_all, 1))
        autocast = self._autocast()
        micro = cfg.grad_accum
        progress = self._progress(main)
        start_step, start_time = self.step, time.perf_counter()
        window_t, window_tokens = time.perf_counter(), 0
        stopped_early = False
        final_eval: dict[str, float] = {}
        old_handler = self._install_sigint()
        self.model.train()
        try:
            while self.step < cfg.max_steps:
                lr = lr_at(self.step, self.optim_cfg.lr, self.sched, cfg.max_steps)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                loss_acc = torch.zeros((), device=self.device)
                extra: dict[str, float] = {}
                step_tokens = 0
                for m in range(micro):
                    batch = self.train_data.batch(self.step, self.rank * micro + m)
                    step_tokens += _count_tokens(batch)
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
                step_tokens *= self.world
                self.tokens_seen += step_tokens
                window_tokens += step_tokens

                is_log = self.step % max(cfg.log_every, 1) == 0 or self.step == cfg.max_steps
                row: dict[str, Any] | None = None
                if is_log:
                    loss_val = float(dist.all_reduce_mean(loss_acc))
                    now = time.perf_counter()
                    tps = window_tokens / max(now - window_t, 1e-9)
                    window_t, window_tokens = now, 0
                    row = {"step": self.step, "loss": loss_val, "lr": lr, "tokens_per_s": tps,
                           "tokens": self.tokens_seen, "elapsed_s": now - start_time,
                           **{k: float(v) for k, v in extra.items()}}
                    if grad_norm is not None:
                        row["grad_norm"] = float(grad_norm)
                    if progress is not None:
                        progress.set_postfix(loss=f"{loss_val:.4f}", tok_s=f"{tps:,.0f}", refresh=False)
                if progress is not None:
                    progress.update(1)

                is_eval = self.val_data is not None and (
                    (cfg.eval_every and self.step % cfg.eval_every == 0) or self.step == cfg.max_steps)
                if is_eval:
                    final_eval = self.evaluate()
                    row = {**(row or {"step": self.step}), **{f"val_{k}": v for k, v in final_eval.items()}}
                    stop = self._early_stopping(final_eval)
                    if stop:
                        stopped_early = True
                if row is not None and main:
                    self._write_metrics(row)
                    if not is_eval:
                        log.debug("step %d: %s", self.step, row)
                    self._log_row(row, start_step, start_time)
                for cb in self.callbacks:
                    cb(self, self.step, row or {})
                stop_now = stopped_early or dist.broadcast_object(self._stop_requested)
                if (cfg.save_every and self.step % cfg.save_every == 0) or stop_now \
                        or self.step == cfg.max_steps:
                    self.save()
                if stop_now:
                    break
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
            if progress is not None:
                progress.close()
        wall = time.perf_counter() - start_time
        if main:
            save_model(self.model, self.out_dir / "final", run_config=self.config_text, tokenizer=self.tokenizer)
            self._plot()
        dist.barrier()
        return TrainResult(self.step, stopped_early, self.best, final_eval, self.out_dir, wall,
                           self.tokens_seen, best_step=self.best_step)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation metrics (computed on rank 0, shared with every rank)."""
        metrics: dict[str, float] = {}
        if dist.is_main():
            self.model.eval()
            with self._autocast():
                metrics = self.task.evaluate(self.model, self.val_data.eval_batches(self.cfg.eval_batches))
            self.model.train()
        return dist.broadcast_object(metrics)

    def save(self) -> None:
        if dist.is_main():
            state = {"step": self.step, "best": self.best, "best_step": self.best_step, "bad_evals": self.bad_evals,
                     "tokens": self.tokens_seen}
            path = self.checkpoint_dir / f"step-{self.step:08d}"
            save_checkpoint(path, self.model, self.optimizer, state, self.config_text, self.tokenizer)
            for old in list_checkpoints(self.checkpoint_dir)[: -max(self.cfg.keep_checkpoints, 1)]:
                shutil.rmtree(old, ignore_errors=True)
        dist.barrier()

    # ---------------------------------------------------------------- internals
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

    def _install_sigint(self):
        if not dist.is_main() or not _in_main_thread():
            return None

        def handler(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            log.warning("interrupt: stopping after this step and saving a checkpoint "
                        "(press Ctrl-C again to abort without saving)")
            self._stop_requested = True

        return signal.signal(signal.SIGINT, handler)

    def _fail_nonfinite(self, what: str, micro: int | None) -> None:
        cks = list_checkpoints(self.checkpoint_dir)
        last = f"the last good checkpoint is {cks[-1]}" if cks else "no checkpoint was written yet"
        where = f"step {self.step + 1}" + (f", micro-batch {micro}" if micro is not None else "")
        raise TrainingError(f"{what} at {where}; training stopped and nothing was saved from this "
                            f"step ({last}; resume with --resume). Try a lower optim.lr, a longer "
                            f"schedule.warmup_steps or train.clip_grad.")

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
                save_model(self.model, self.out_dir / "best", run_config=self.config_text,
                           tokenizer=self.tokenizer)
            return False
        self.bad_evals += 1
        if es.patience and self.bad_evals >= es.patience:
            log.info("early stopping: %s did not improve for %d evaluations (best %.5g)",
                     es.metric, self.bad_evals, self.best)
            return True
        return False

    def _write_metrics(self, row: dict[str, Any]) -> None:
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    def _truncate_metrics(self, step: int) -> None:
        """After a resume, drop rows logged after the checkpoint (they will be redone)."""
        path = self.out_dir / "metrics.jsonl"
        if not dist.is_main() or not path.exists():
            return
        rows = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        path.write_text("".join(r + "\n" for r in rows))

    def _log_row(self, row: dict[str, Any], start_step: int, start_time: float) -> None:
        done = self.step - start_step
        elapsed = time.perf_counter() - start_time
        eta = elapsed / max(done, 1) * (self.cfg.max_steps - self.step)
        parts = [f"step {self.step}/{self.cfg.max_steps}"]
        if "loss" in row:
            parts.append(f"loss {row['loss']:.4f}")
        parts += [f"{k} {v:.4f}" for k, v in row.items() if k.startswith("val_") and isinstance(v, float)]
        if "tokens_per_s" in row:
            parts.append(f"{row['tokens_per_s']:,.0f} tok/s")
        parts.append(f"eta {_fmt_time(eta)}")
        log.info(" | ".join(parts))

    def _plot(self) -> None:
        from zerolm.eval.plots import plot_loss_curve

        try:
            plot_loss_curve(self.out_dir / "metrics.jsonl", self.out_dir / "loss.png")
        except Exception as e:  # a plot must never cost the run
            log.warning("could not draw the loss curve: %s", e)


def _fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
