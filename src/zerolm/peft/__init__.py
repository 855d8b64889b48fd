"""Parameter-efficient fine-tuning as transforms on a finished model.

Nothing here subclasses a model: strategies set `requires_grad` and swap modules found
by their stable names (`q_proj`, `attn`, `tok_emb`, ...), keeping the base state-dict keys.
"""

from zerolm.peft.adapter import BottleneckAdapter, LinearWithAdapter, apply_adapters
from zerolm.peft.lora import (
    LoRALinear,
    apply_lora,
    load_lora_state_dict,
    lora_state_dict,
    merge_lora,
)
from zerolm.peft.match import find_modules, name_matches, replace_module
from zerolm.peft.prompt import PrefixKV, SoftPrompt, apply_prefix, apply_prompt, reserved_positions
from zerolm.peft.strategy import (
    STRATEGIES,
    apply_strategy,
    make_strategy,
    replay_strategy,
    trainable_summary,
)

__all__ = [
    "STRATEGIES",
    "BottleneckAdapter",
    "LinearWithAdapter",
    "LoRALinear",
    "PrefixKV",
    "SoftPrompt",
    "apply_adapters",
    "apply_lora",
    "apply_prefix",
    "apply_prompt",
    "apply_strategy",
    "find_modules",
    "load_lora_state_dict",
    "lora_state_dict",
    "make_strategy",
    "merge_lora",
    "name_matches",
    "replace_module",
    "replay_strategy",
    "reserved_positions",
    "trainable_summary",
]
