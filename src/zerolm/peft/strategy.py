"""Fine-tuning strategies: which parameters of a finished model train.

A strategy is a class with a `name`, its settings (one section of the config, e.g.
`strategy.lora`), `apply(model)` for the module swaps it needs (LoRA, adapters, soft
prompts, prefixes) and `trains(model)`, the rule that picks the parameters it trains
besides the task head. The registry `STRATEGIES` below maps names to classes: a new
strategy is one new class (in its own file when it swaps modules) plus one line there.

`apply_strategy` is the one entry point the training loop needs: it applies the strategy
and sets `requires_grad` on every parameter; the optimizer then takes the parameters
that require gradients.

A parameter shared by several modules (an LM head tied to the token embedding) is a
head parameter only if every module that owns it is a head: otherwise LoRA on a tied
GPT would train the whole embedding matrix, which is not parameter-efficient.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence

import torch
from torch import nn

from zerolm.config import FreezeConfig, StrategyConfig, build_section, upgrade_strategy_keys
from zerolm.errors import ConfigError
from zerolm.peft.adapter import AdapterStrategy
from zerolm.peft.base import Strategy
from zerolm.peft.lora import LoraStrategy
from zerolm.peft.match import shared_names
from zerolm.peft.prompt import PrefixStrategy, PromptStrategy

log = logging.getLogger(__name__)

HEAD_NAMES = ("classifier", "lm_head", "crf", "sentence_head")
EMBEDDING_NAMES = ("tok_emb", "pos_emb", "type_emb", "emb_norm")


def trainable_summary(model: nn.Module) -> dict:
    """Trainable and total parameter counts (each shared tensor counted once)."""
    params = list(model.parameters())  # deduplicates tied tensors
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return {"trainable": trainable, "total": total,
            "percent": 100.0 * trainable / total if total else 0.0}


def _module_path(param_name: str) -> list[str]:
    return param_name.split(".")[:-1]


def _under(param_name: str, names: Sequence[str]) -> bool:
    """True when some module on the parameter's path has an attribute name in `names`."""
    return any(c in names for c in _module_path(param_name))


def _in_bottom_blocks(param_name: str, k: int) -> bool:
    path = _module_path(param_name)
    return any(c == "blocks" and i + 1 < len(path) and path[i + 1].isdigit() and int(path[i + 1]) < k
               for i, c in enumerate(path))


class FullStrategy(Strategy):
    """Every weight trains ("bidirectional" fine-tuning of the whole network)."""

    name = "full"


class HeadOnlyStrategy(Strategy):
    """Only the task head trains: a linear probe of the frozen body."""

    name = "head_only"

    def trains(self, model):
        return lambda pid, names: False


class BitFitStrategy(Strategy):
    """Biases and the head train (Ben Zaken et al., 2022)."""

    name = "bitfit"

    def trains(self, model):
        return lambda pid, names: all(n.endswith(".bias") or n == "bias" for n in names)


class FreezeStrategy(Strategy):
    """Embeddings and the bottom `layers` blocks frozen, the rest trains."""

    name = "freeze"
    settings_class = FreezeConfig

    def apply(self, model):
        k = self.settings.layers
        if k < 0:
            raise ValueError(f"freeze layers must be >= 0, got {k}")
        if k == 0:
            return
        stacks = [len(m) for n, m in model.named_modules()
                  if n.rpartition(".")[2] == "blocks" and isinstance(m, nn.ModuleList)]
        if not stacks:
            raise ValueError("freezing layers needs a model with a `blocks` ModuleList")
        if k > max(stacks):
            raise ValueError(f"strategy.freeze.layers {k} exceeds the model's {max(stacks)} blocks")

    def trains(self, model):
        k = self.settings.layers
        # a tensor tied to an embedding is frozen with it
        return lambda pid, names: not any(_under(n, EMBEDDING_NAMES) or _in_bottom_blocks(n, k) for n in names)


STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in (
    FullStrategy, FreezeStrategy, HeadOnlyStrategy, BitFitStrategy, LoraStrategy, AdapterStrategy,
    PromptStrategy, PrefixStrategy)}


def make_strategy(name: str, settings: StrategyConfig | None = None):
    """The strategy `name` with its settings from `settings` (the config's strategy section)."""
    if name not in STRATEGIES:
        close = difflib.get_close_matches(name, list(STRATEGIES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown fine-tuning strategy {name!r}{hint}; choose from {list(STRATEGIES)}")
    settings = settings or StrategyConfig(name=name)
    return STRATEGIES[name](getattr(settings, name, None))


def _legacy_settings(name: str, kw: dict) -> StrategyConfig:
    """StrategyConfig from the keyword arguments of earlier versions (lora_rank=...)."""
    tree = upgrade_strategy_keys({"name": name, **kw}) if kw else {"name": name}
    if "lora" in tree and "targets" in tree["lora"]:
        tree["lora"]["targets"] = list(tree["lora"]["targets"])
    return build_section(StrategyConfig, tree, "strategy.")


def apply_strategy(model: nn.Module, strategy, *, head_names: Sequence[str] = HEAD_NAMES,
                   settings: StrategyConfig | None = None, quiet: bool = False, **legacy) -> dict:
    """Make `model` train with `strategy` (in place) and return its trainable summary.

    `strategy` is a name (its settings from `settings`, a StrategyConfig, or from keyword
    arguments such as lora_rank=8, prompt_length=20) or a strategy object. What trains: the
    task head (modules named in `head_names`) and what the strategy's rule picks.
    """
    if isinstance(strategy, str):
        if legacy:
            settings = _legacy_settings(strategy, legacy)
        strategy = make_strategy(strategy, settings)
    head_names = tuple(head_names)
    strategy.apply(model)
    rule = strategy.trains(model)
    params = {id(p): p for p in model.parameters()}
    for pid, names in shared_names(model).items():
        is_head = all(_under(n, head_names) for n in names)
        params[pid].requires_grad_(is_head or rule(pid, names))

    summary = {"strategy": strategy.name, **trainable_summary(model)}
    if summary["trainable"] == 0:
        raise ConfigError(f"strategy {strategy.name!r} leaves no parameter to train: no module named "
                          f"{list(head_names)} owns an untied parameter (and bitfit finds no biases); "
                          "pass head_names= the model's head, untie it from the embedding "
                          "(model.tie_embeddings: false), or choose another strategy")
    log.log(logging.DEBUG if quiet else logging.INFO, "fine-tuning strategy %s: %s of %s parameters train "
            "(%.3g%%)", strategy.name, f"{summary['trainable']:,}", f"{summary['total']:,}", summary["percent"])
    return summary


def replay_strategy(model: nn.Module, saved: dict) -> dict:
    """Put back the modules of the strategy a fine-tuned model was trained with, from the
    `strategy` entry of its task.json (before its weights are loaded)."""
    tree = upgrade_strategy_keys(dict(saved or {"name": "full"}), "task.json strategy")
    settings = build_section(StrategyConfig, tree, "strategy.")
    # prompt and prefix init draw random numbers that the loaded weights replace: loading
    # a model must not move the caller's random state
    with torch.random.fork_rng(devices=[]):
        return apply_strategy(model, settings.name, settings=settings, quiet=True)
