"""Self-supervised pretraining from a RunConfig: tokenizer, corpus, model, the loop."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from zerolm.config import RunConfig, check_writable_dir, dump_config
from zerolm.data.corpus import load_corpus
from zerolm.data.lm import CausalLMBatches, MaskedLMBatches
from zerolm.data.spans import SpanCorruptionBatches
from zerolm.data.text import resolve_data_path
from zerolm.errors import ConfigError
from zerolm.models import build_model
from zerolm.tasks import OBJECTIVES
from zerolm.tokenizers import Tokenizer
from zerolm.train import dist
from zerolm.train.loop import Trainer, TrainResult
from zerolm.train.rundir import open_run_dir

log = logging.getLogger(__name__)


def prepare_tokenizer(cfg: RunConfig) -> Tokenizer:
    """Load `tokenizer.path`, or the run's own tokenizer, or train one (rank 0) and save it."""
    tc = cfg.tokenizer
    if tc.path:
        return Tokenizer.load(resolve_data_path(tc.path))
    own = Path(cfg.out_dir) / "tokenizer"
    if dist.is_main() and not (own / "tokenizer.json").exists():
        files = tc.files or cfg.data.train
        text_files = [resolve_data_path(f) for f in files]  # tables contribute their text column
        size = "" if tc.kind == "char" else f" (vocab {tc.vocab_size})"
        log.info("training a %s tokenizer%s on %s", tc.kind, size, ", ".join(files))
        tok = Tokenizer.train(tc.kind, text_files, tc.vocab_size, min_frequency=tc.min_frequency,
                              lowercase=tc.lowercase, sentinels=tc.sentinels, columns=tuple(tc.columns))
        tok.save(own)
    dist.barrier()
    return Tokenizer.load(own)


def build_batches(cfg: RunConfig, tok: Tokenizer):
    """(train batches, val batches) for the configured objective."""
    d, t = cfg.data, cfg.task
    keep_ends = tok.kind != "wordpiece"
    if not dist.is_main():
        dist.barrier()  # rank 0 tokenizes and caches first
    cols = tuple(d.columns)
    corpus = load_corpus(d.train, tok, keep_line_ends=keep_ends, text_column=cols, cache_dir=d.cache_dir)
    if dist.is_main():
        dist.barrier()
    if d.val:
        val = load_corpus(d.val, tok, keep_line_ends=keep_ends, text_column=cols, cache_dir=d.cache_dir)
        train = corpus
    elif t.name == "clm":
        flat = corpus.flat()
        cut = int((1 - d.val_fraction) * len(flat))  # nanoGPT: first 90% train, last 10% val
        bs, tr = d.block_size, cfg.train
        return (CausalLMBatches(flat[:cut], bs, tr.batch_size, tr.seed),
                CausalLMBatches(flat[cut:], bs, tr.batch_size, tr.seed))
    else:
        train, val = corpus.split_lines(d.val_fraction)
    tr = cfg.train
    if t.name == "clm":
        return (CausalLMBatches(train.flat(), d.block_size, tr.batch_size, tr.seed),
                CausalLMBatches(val.flat(), d.block_size, tr.batch_size, tr.seed))
    if t.name == "span":  # block_size: encoder tokens per example, after corruption
        micro = tr.grad_accum * dist.world_size()
        mk = lambda c, m: SpanCorruptionBatches(  # noqa: E731
            c.flat(), tok, input_length=d.block_size, batch_size=tr.batch_size, seed=tr.seed,
            noise_density=t.noise_density, mean_span_length=t.mean_span_length, micro_per_step=m)
        return mk(train, micro), mk(val, 1)
    mk = lambda c: MaskedLMBatches(c, tok, t, d.block_size, tr.batch_size, tr.seed,  # noqa: E731
                                   whole_word=t.whole_word_mask)
    return mk(train), mk(val)


def _init_from(model, path: str) -> None:
    """Start from the weights of a zerolm or local Hugging Face model directory."""
    from zerolm.errors import CheckpointError
    from zerolm.loading import load_model

    src, _ = load_model(path)
    own, theirs = model.state_dict(), src.state_dict()
    for k, v in theirs.items():
        if k in own and own[k].shape != v.shape:
            raise CheckpointError(f"{path}: shape mismatch for '{k}': checkpoint {tuple(v.shape)}, "
                                  f"config {tuple(own[k].shape)}; make model.* match the checkpoint")
    missing, _ = model.load_state_dict(theirs, strict=False)
    if missing:
        log.info("not in %s (freshly initialised): %s", path, ", ".join(missing))


def pretrain(cfg: RunConfig, *, resume: bool | str = False, overwrite: bool = False, init: str | None = None,
             callbacks: list | None = None) -> TrainResult:
    """Run (or resume) pretraining as configured; returns the loop's result."""
    device = dist.setup(cfg.train.device)
    if dist.is_main():
        check_writable_dir(cfg.out_dir)
    with open_run_dir(cfg.out_dir, resume=resume, overwrite=overwrite):
        return _pretrain(cfg, device, resume, init, callbacks)


def _pretrain(cfg: RunConfig, device, resume, init, callbacks) -> TrainResult:
    tok = prepare_tokenizer(cfg)
    if cfg.model.vocab_size != tok.vocab_size or cfg.model.pad_id != (tok.pad_id or 0):
        log.info("model.vocab_size set to the tokenizer's %d", tok.vocab_size)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, vocab_size=tok.vocab_size, pad_id=tok.pad_id or 0))
    if cfg.task.name == "mlm" and tok.mask_id is None:
        raise ConfigError("task.name 'mlm' needs a tokenizer with a [MASK] token (tokenizer.kind: wordpiece)")
    train_data, val_data = build_batches(cfg, tok)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    if init:
        _init_from(model, init)
    task = OBJECTIVES[cfg.task.name]()
    trainer = Trainer(model, task, train_data, val_data=val_data, train=cfg.train, optim=cfg.optim,
                      schedule=cfg.schedule, out_dir=cfg.out_dir, config_text=dump_config(cfg),
                      tokenizer=tok, device=device)
    trainer.callbacks.extend(callbacks or [])
    if resume:
        found = trainer.resume(None if resume is True else resume)
        if not found:
            log.info("no checkpoint in %s: starting from scratch", trainer.checkpoint_dir)
    n = sum(p.numel() for p in model.parameters())
    log.info("%s model: %s parameters, %d layers, d_model %d, vocab %d", cfg.model.family, f"{n:,}",
             cfg.model.n_layers, cfg.model.d_model, cfg.model.vocab_size)
    return trainer.fit()
