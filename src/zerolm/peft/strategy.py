"""Fine-tuning strategies: which parameters of a finished model train.

`apply_strategy` is the one entry point the training loop needs: it swaps modules
(LoRA, adapters, soft prompts, prefixes) where the strategy asks for it and sets
`requires_grad` on every parameter; the optimizer then takes the parameters that require
gradients.

A parameter shared by several modules (an LM head tied to the token embedding) is a
head parameter only if every module that owns it is a head: otherwise LoRA on a tied
GPT would train the whole embedding matrix, which is not parameter-efficient.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Sequence

from torch import nn

from zerolm.peft.adapter import BottleneckAdapter, apply_adapters
from zerolm.peft.lora import LoRALinear, apply_lora
from zerolm.peft.match import shared_names
from zerolm.peft.prompt import PrefixKV, SoftPrompt, apply_prefix, apply_prompt

log = logging.getLogger(__name__)

STRATEGIES = ("full", "freeze", "head_only", "bitfit", "lora", "adapter", "prompt", "prefix")
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


def _check_freeze_layers(model: nn.Module, k: int) -> None:
    if k < 0:
        raise ValueError(f"freeze_layers must be >= 0, got {k}")
    if k == 0:
        return
    stacks = [len(m) for n, m in model.named_modules()
              if n.rpartition(".")[2] == "blocks" and isinstance(m, nn.ModuleList)]
    if not stacks:
        raise ValueError("freeze_layers > 0 needs a model with a `blocks` ModuleList")
    if k > max(stacks):
        raise ValueError(f"freeze_layers {k} exceeds the model's {max(stacks)} blocks")


def apply_strategy(
    model: nn.Module,
    strategy: str,
    *,
    head_names: Sequence[str] = HEAD_NAMES,
    freeze_layers: int = 0,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    lora_dropout: float = 0.0,
    lora_targets: Sequence[str] = ("q_proj", "v_proj"),
    adapter_size: int = 64,
    prompt_length: int = 20,
    quiet: bool = False,
) -> dict:
    """Make `model` train with `strategy` (in place) and return its trainable summary.

    full: everything trains. freeze: embeddings and the bottom `freeze_layers` blocks are
    frozen, the rest trains. head_only: only modules named in `head_names` train (a
    linear probe). bitfit: biases and the head. lora: LoRA A/B on `lora_targets` and the
    head. adapter: Houlsby adapters, every LayerNorm and the head. prompt: a soft prompt
    of `prompt_length` input positions and the head. prefix: `prompt_length` prefix keys
    and values in every self-attention, and the head.
    """
    if strategy not in STRATEGIES:
        close = difflib.get_close_matches(strategy, STRATEGIES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown fine-tuning strategy {strategy!r}{hint}; choose from {list(STRATEGIES)}")
    head_names = tuple(head_names)
    if strategy == "freeze":
        _check_freeze_layers(model, freeze_layers)
    if strategy == "lora":
        apply_lora(model, lora_targets, rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout)
    elif strategy == "adapter":
        apply_adapters(model, adapter_size)
    elif strategy == "prompt":
        apply_prompt(model, prompt_length)
    elif strategy == "prefix":
        apply_prefix(model, prompt_length)

    # ids of the parameters each module-typed rule selects
    lora_ids = {id(p) for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_a, m.lora_b)}
    adapter_ids = {id(p) for m in model.modules() if isinstance(m, BottleneckAdapter) for p in m.parameters()}
    prompt_ids = {id(m.weight) for m in model.modules() if isinstance(m, SoftPrompt)}
    prefix_ids = {id(p) for m in model.modules() if isinstance(m, PrefixKV) for p in m.parameters()}
    norm_ids = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}

    rules: dict[str, Callable[[int, list[str]], bool]] = {
        "full": lambda pid, names: True,
        # a tensor tied to an embedding is frozen with it
        "freeze": lambda pid, names: not any(
            _under(n, EMBEDDING_NAMES) or _in_bottom_blocks(n, freeze_layers) for n in names),
        "head_only": lambda pid, names: False,
        "bitfit": lambda pid, names: all(n.endswith(".bias") or n == "bias" for n in names),
        "lora": lambda pid, names: pid in lora_ids,
        "adapter": lambda pid, names: pid in adapter_ids or pid in norm_ids,
        "prompt": lambda pid, names: pid in prompt_ids,
        "prefix": lambda pid, names: pid in prefix_ids,
    }
    rule = rules[strategy]
    params = {id(p): p for p in model.parameters()}
    for pid, names in shared_names(model).items():
        is_head = all(_under(n, head_names) for n in names)
        params[pid].requires_grad_(is_head or rule(pid, names))

    summary = {"strategy": strategy, **trainable_summary(model)}
    if summary["trainable"] == 0:
        raise ValueError(f"strategy {strategy!r} leaves no parameter to train: no module named "
                         f"{list(head_names)} owns an untied parameter; pass head_names= the "
                         "model's head, or untie it from the embedding")
    log.log(logging.DEBUG if quiet else logging.INFO, "fine-tuning strategy %s: %d of %d parameters train "
            "(%.2f%%)", strategy, summary["trainable"], summary["total"], summary["percent"])
    return summary


def replay_strategy(model: nn.Module, saved: dict) -> dict:
    """Put back the modules of the strategy a fine-tuned model was trained with, from the
    `strategy` entry of its task.json (before its weights are loaded)."""
    saved = dict(saved or {})
    name = saved.pop("name", "full")
    known = {"freeze_layers", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "adapter_size",
             "prompt_length"}
    kwargs = {k: v for k, v in saved.items() if k in known}
    if "lora_targets" in kwargs:
        kwargs["lora_targets"] = tuple(kwargs["lora_targets"])
    return apply_strategy(model, name, quiet=True, **kwargs)
