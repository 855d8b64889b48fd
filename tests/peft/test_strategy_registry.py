"""Strategies are classes in a registry, each with its own settings section."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zerolm.config import FinetuneConfig, StrategyConfig, load_config
from zerolm.models import ModelConfig, build_model
from zerolm.models.heads import SequenceClassifier
from zerolm.peft import STRATEGIES, apply_strategy, make_strategy, replay_strategy
from zerolm.peft.base import Strategy


def classifier() -> nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(family="bert", vocab_size=99, d_model=32, n_layers=2, n_heads=4, d_ff=37, max_seq_len=32)
    return SequenceClassifier(build_model(cfg), 2)


def test_each_strategy_reads_its_own_settings_section():
    s = StrategyConfig(name="lora")
    s.lora.rank, s.prompt.length = 4, 9
    assert make_strategy("lora", s).settings.rank == 4
    assert make_strategy("prompt", s).reserved_positions == 9
    assert make_strategy("prefix", s).reserved_positions == 0  # queries keep their positions
    with pytest.raises(ValueError, match="did you mean 'lora'"):
        make_strategy("lroa")


def test_a_new_strategy_is_one_class_and_one_registry_line(monkeypatch):
    class NormsOnly(Strategy):
        name = "norms"

        def trains(self, model):
            ids = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
            return lambda pid, names: pid in ids

    monkeypatch.setitem(STRATEGIES, "norms", NormsOnly)
    model = classifier()
    apply_strategy(model, "norms")
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all("norm" in n or n.startswith("classifier") for n in trained)


def test_replay_reads_task_json_of_this_and_earlier_versions():
    cfg = load_config("configs/tiny/classify_reviews.yaml", ["strategy.name=lora", "strategy.lora.rank=3"],
                      cls=FinetuneConfig)
    import dataclasses

    for saved in (dataclasses.asdict(cfg.strategy), {"name": "lora", "lora_rank": 3, "lora_targets": ["q_proj"]}):
        model = classifier()
        replay_strategy(model, saved)
        ranks = {m.rank for m in model.modules() if hasattr(m, "lora_a")}
        assert ranks == {3}
