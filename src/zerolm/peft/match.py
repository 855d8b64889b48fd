"""Finding and swapping modules by name: how every PEFT transform reaches into a model.

A target matches a module when it equals the module's dotted name or its last
components: "q_proj" matches "body.blocks.3.attn.q_proj", and "attn.o_proj" matches
"blocks.0.attn.o_proj" but not "blocks.0.cross.o_proj". Matching on stable module names
(see STYLE.md) keeps the transforms independent of the model classes.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def name_matches(name: str, targets: Iterable[str]) -> bool:
    """True when a target equals `name` or its trailing dotted components."""
    return any(name == t or name.endswith("." + t) for t in targets)


def find_modules(model: nn.Module, targets: Iterable[str], kind: type = nn.Module) -> list[str]:
    """Names of the modules of type `kind` whose names match one of `targets`."""
    targets = tuple(targets)
    return [n for n, m in model.named_modules() if n and isinstance(m, kind) and name_matches(n, targets)]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the submodule `name` is (works inside ModuleLists too)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def shared_names(model: nn.Module) -> dict[int, list[str]]:
    """Every name each parameter tensor has (tied weights have several), keyed by id."""
    names: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(n)
    return names
