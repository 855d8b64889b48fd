"""Fine-tuning from a FinetuneConfig: load a pretrained model (zerolm or Hugging Face
directory) or build one, let the task add its head and read its data, apply the training
strategy as a transform, run the one loop, and report honestly on dev.

What differs between tasks (classify, tag, clm) lives in each task class (the registry
in zerolm.tasks); everything else (strategy, loop, best checkpoint, eval.json, plots) is
written once here. A fine-tuned directory (best/, final/) holds the model plus
task.json, so `zerolm.load` rebuilds exactly the trained model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
from torch import nn

from zerolm.atomic import atomic_write_text
from zerolm.config import (
    FinetuneConfig,
    RunConfig,
    check_writable_dir,
    dump_config,
    resolve_finetune_steps,
    warmup_warning,
)
from zerolm.errors import ConfigError
from zerolm.loading import load_model, resolve_model_path
from zerolm.modeldir import TASK_FILE, load_weights
from zerolm.models import build_model
from zerolm.tasks import finetune_task
from zerolm.tasks.base import FinetuneSetup, scalars
from zerolm.train import dist
from zerolm.train.loop import Trainer, TrainResult
from zerolm.train.rundir import open_run_dir

log = logging.getLogger(__name__)


def _producer_hint(init: str) -> str:
    """`; run zerolm pretrain configs/X.yaml first` when a shipped config writes `init`."""
    import yaml

    here = Path(__file__).resolve().parents[3]  # the repository root, in a source checkout
    target = Path(init).as_posix().rstrip("/")
    for root in dict.fromkeys([Path.cwd(), here]):
        for cfg in sorted((root / "configs").glob("**/*.yaml")):
            try:
                out = (yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}).get("out_dir")
            except (OSError, yaml.YAMLError):
                continue
            if out and "init" not in (yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}) \
                    and target.startswith(str(out).rstrip("/") + "/"):
                rel = cfg.relative_to(root).as_posix()
                return f"; it is written by `zerolm pretrain {rel}`: run that first"
    return ""


def _body_and_tokenizer(cfg: FinetuneConfig):
    if cfg.init:
        path = resolve_model_path(cfg.init)
        if not path.is_dir():
            from zerolm.data.text import data_root

            raise ConfigError(f"init: model directory {cfg.init} not found (looked in {Path.cwd()} and "
                              f"the data root {data_root()}){_producer_hint(cfg.init)}")
        model, tok = load_model(path)
        if tok is None:
            raise ConfigError(f"init: {cfg.init} has no tokenizer")
        if cfg.reinit:  # the same network from random weights: what pretraining buys, measured
            torch.manual_seed(cfg.train.seed)
            model = build_model(model.config)
        return model, tok
    from zerolm.train.pretrain import prepare_tokenizer

    run = RunConfig(out_dir=cfg.out_dir, tokenizer=cfg.tokenizer, model=cfg.model)
    tok = prepare_tokenizer(run)
    mcfg = dataclasses.replace(cfg.model, vocab_size=tok.vocab_size, pad_id=tok.pad_id or 0)
    torch.manual_seed(cfg.train.seed)
    return build_model(mcfg), tok


def max_input_length(cfg: FinetuneConfig, model: nn.Module) -> int:
    """Tokens an input may have: data.max_length, within the positions the model has left
    after the positions the strategy declares it reserves (a soft prompt's)."""
    from zerolm.peft import make_strategy

    reserved = make_strategy(cfg.strategy.name, cfg.strategy).reserved_positions
    room = model.config.max_seq_len - reserved
    if room < 2:
        raise ConfigError(f"strategy.{cfg.strategy.name}.length {reserved} leaves no room in "
                          f"model.max_seq_len {model.config.max_seq_len}")
    return min(cfg.data.max_length, room)


def check_names(cfg: FinetuneConfig) -> None:
    """The task and strategy names are in their registries (a typo stops here, before any
    work, with the closest name)."""
    from zerolm.peft import make_strategy

    finetune_task(cfg.task.name)
    try:
        make_strategy(cfg.strategy.name, cfg.strategy)
    except ValueError as e:
        raise ConfigError(f"strategy.name: {e}") from None


def finetune(cfg: FinetuneConfig, *, resume: bool | str = False, overwrite: bool = False
             ) -> tuple[TrainResult, dict]:
    """Train as configured; returns the loop's result and the dev report of the best model."""
    from zerolm.peft import apply_strategy

    check_names(cfg)
    device = dist.setup(cfg.train.device)
    if dist.is_main():
        check_writable_dir(cfg.out_dir)
    with open_run_dir(cfg.out_dir, resume=resume, overwrite=overwrite):
        return _finetune(cfg, device, resume, apply_strategy)


def _finetune(cfg: FinetuneConfig, device, resume, apply_strategy) -> tuple[TrainResult, dict]:
    model, tok = _body_and_tokenizer(cfg)
    tr = cfg.train
    micro = tr.grad_accum * dist.world_size()
    task_cls = finetune_task(cfg.task.name)
    st: FinetuneSetup = task_cls.setup(cfg, model, tok, max_length=max_input_length(cfg, model),
                                       micro_per_step=micro)
    steps, why = resolve_finetune_steps(tr, st.train_data.steps_per_epoch())
    log.info("run length: %s", why)
    warn = warmup_warning(cfg.schedule.warmup_steps, steps, "the run") if not tr.max_steps else None
    if warn:  # (a given max_steps was already checked with the config)
        log.warning("%s", warn)
    tr = dataclasses.replace(tr, max_steps=steps)
    cfg = dataclasses.replace(cfg, train=tr)
    torch.manual_seed(tr.seed)
    summary = apply_strategy(st.model, cfg.strategy.name, settings=cfg.strategy)
    out = Path(cfg.out_dir)
    meta = {**st.meta, "strategy": dataclasses.asdict(cfg.strategy)}
    trainer = Trainer(st.model, st.task, st.train_data, val_data=st.dev_data, train=tr, optim=cfg.optim,
                      schedule=cfg.schedule, out_dir=out, config_text=dump_config(cfg), tokenizer=tok,
                      device=device, extra_files={TASK_FILE: json.dumps(meta, indent=2)})
    if resume:
        trainer.resume(None if resume is True else resume)
    peak0 = _peak_rss_mb()
    result = trainer.fit()
    report: dict = {}
    if dist.is_main():
        best = out / "best"
        if (best / "model.safetensors").exists():
            load_weights(st.model, best / "model.safetensors")
        st.model.eval()
        # the loop's last evaluation already scored these weights when they are the best
        if result.best_step == result.step and result.final_eval and not tr.eval_batches:
            report = dict(result.final_eval)
        else:
            with torch.no_grad():
                report = st.task.evaluate(st.model, st.dev_data.eval_batches())
        # what the evaluation fitted on dev for these weights (classify: a calibrated
        # out-of-scope threshold) belongs beside them, in task.json
        fitted = report.pop("fitted_meta", None)
        if fitted:
            scored = best if (best / "model.safetensors").exists() else out / "final"
            if (scored / TASK_FILE).exists():
                atomic_write_text(scored / TASK_FILE, json.dumps({**meta, **fitted}, indent=2))
        train_s = result.train_s or result.wall_s
        report.update(task=cfg.task.name, metric=task_cls.metric, strategy=summary,
                      truncated_train=st.truncated, steps=result.step, planned_steps=tr.max_steps,
                      wall_s=result.wall_s,
                      train_s=train_s, interrupted=result.interrupted,
                      samples_per_s=result.step * tr.batch_size * micro / max(train_s, 1e-9),
                      peak_rss_mb=max(peak0, _peak_rss_mb()))
        atomic_write_text(out / "eval.json", json.dumps(report, indent=2))
        try:
            st.task.write_plots(report, out, Path(cfg.data.dev).name)
        except Exception as e:  # a plot must never cost the run
            log.warning("could not draw the evaluation plots: %s", e)
        log.debug("dev report: %s", scalars(report))
    return result, report


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB; Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
