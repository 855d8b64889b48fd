"""What a fine-tuning strategy is: a name, its settings (one section of the config, e.g.
`strategy.lora`), the module swaps it makes, and the rule picking what it trains."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from torch import nn

# a rule: (parameter id, every name the parameter has) -> whether it trains
Rule = Callable[[int, list[str]], bool]


class Strategy:
    """Base of every strategy; by itself, full fine-tuning (every weight trains)."""

    name: ClassVar[str] = "full"
    settings_class: ClassVar[type | None] = None  # its config section (zerolm.config), if any
    reserved_positions: int = 0  # input positions it takes from max_seq_len (a soft prompt's)

    def __init__(self, settings: Any = None):
        self.settings = settings if settings is not None else (
            self.settings_class() if self.settings_class is not None else None)

    def apply(self, model: nn.Module) -> None:
        """The module swaps the strategy needs (in place); none by default."""

    def trains(self, model: nn.Module) -> Rule:
        """Which parameters train besides the task head (after `apply`)."""
        return lambda pid, names: True
