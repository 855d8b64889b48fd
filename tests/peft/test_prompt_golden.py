"""Prompt and prefix tuning give the outputs they gave before the model-core redesign.

tests/fixtures/prompt_prefix_golden.safetensors was written by the code before the
redesign (PromptEmbedding swapped in for `tok_emb`, PrefixAttention swapped in for
every `attn`, `GPT` with its LM head inside). For each family and strategy it holds a
SequenceClassifier's state dict and logits, and for the GPT LM with a soft prompt or a
prefix its state dict, logits and 8 greedy tokens. These tests load the old weights, key
for key, into the models the code builds now and ask for the same outputs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from zerolm.generate import GenerationConfig, generate_ids
from zerolm.models import ModelConfig, build_model
from zerolm.models.heads import SequenceClassifier
from zerolm.peft import apply_strategy, reserved_positions

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "prompt_prefix_golden.safetensors"
P = 4  # the prompt / prefix length the fixture was written with

# old key -> new key, in this order; the old layout's names are frozen here (and only here)
RENAMES = [
    (re.compile(r"(^|\.)tok_emb\.prompt$"), r"\1soft_prompt.weight"),
    (re.compile(r"(^|\.)blocks\.(\d+)\.attn\.prefix_k$"), r"\1prefix_kv.keys.\2"),
    (re.compile(r"(^|\.)blocks\.(\d+)\.attn\.prefix_v$"), r"\1prefix_kv.values.\2"),
]


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(GOLDEN)


def tiny(family: str) -> nn.Module:
    cfg = ModelConfig(family=family, vocab_size=99, d_model=32, n_layers=2, n_heads=4, d_ff=37,
                      max_seq_len=32, dropout=0.0, attn_dropout=0.0)
    return build_model(cfg).eval()


def renamed(key: str) -> str:
    for pattern, new in RENAMES:
        key = pattern.sub(new, key)
    return key


def saved(golden: dict, prefix: str) -> dict[str, torch.Tensor]:
    """The old state dict stored under `prefix` (old keys)."""
    return {k[len(prefix):]: v for k, v in golden.items() if k.startswith(prefix)}


def classifier_state(old: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An old SequenceClassifier state dict in the new layout."""
    old = dict(old)
    lm_head = old.pop("body.lm_head.weight", None)
    if lm_head is not None:
        # the old GPT body carried its tied LM head; the new body has none, and dropping
        # it loses nothing
        assert torch.equal(lm_head, old["body.tok_emb.weight"])
    return {renamed(k): v for k, v in old.items()}


def lm_state(old: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An old GPT LM state dict (the body's keys at the top level) in the CausalLM layout."""
    return {(k if k.startswith("lm_head.") else "body." + renamed(k)): v for k, v in old.items()}


@pytest.mark.parametrize("kind", ["none", "prompt", "prefix"])
@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_classifier_logits_equal_those_before_the_redesign(golden, family, kind):
    model = SequenceClassifier(tiny(family), num_labels=3, dropout=0.0).eval()
    if kind != "none":
        apply_strategy(model, kind, prompt_length=P)
    state = classifier_state(saved(golden, f"{family}.{kind}.sd."))
    model.load_state_dict(state)  # strict: the old keys, renamed, are exactly the new ones
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    with torch.no_grad():
        logits = model(golden["ids"], attention_mask=golden["mask"])
    torch.testing.assert_close(logits, golden[f"{family}.{kind}.logits"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_gpt_lm_logits_and_greedy_tokens_equal_those_before_the_redesign(golden, kind):
    lm = tiny("gpt")
    apply_strategy(lm, kind, prompt_length=P)
    lm.load_state_dict(lm_state(saved(golden, f"lm.{kind}.sd.")))  # strict
    assert lm.lm_head.weight is lm.body.tok_emb.weight  # loading kept the tie
    prompt = golden["ids"][:1, :6]
    with torch.no_grad():
        logits = lm(prompt)
    torch.testing.assert_close(logits, golden[f"lm.{kind}.logits"], rtol=0, atol=1e-6)
    # the KV-cached path (a 2-token start, then one token at a time) gives them too
    with torch.no_grad():
        cache = lm.new_cache(1, 6 + reserved_positions(lm))
        parts = [lm(prompt[:, :2], cache=cache)] + [lm(prompt[:, t:t + 1], cache=cache) for t in range(2, 6)]
    torch.testing.assert_close(torch.cat(parts, dim=1), golden[f"lm.{kind}.logits"], rtol=0, atol=1e-5)
    greedy = generate_ids(lm, prompt, GenerationConfig(max_new_tokens=8, greedy=True))
    assert torch.equal(greedy, golden[f"lm.{kind}.greedy"])


@pytest.mark.parametrize("family", ["bert", "gpt"])
@pytest.mark.parametrize("kind", ["none", "prompt", "prefix"])
def test_model_files_written_before_the_redesign_still_load(golden, family, kind, tmp_path, caplog):
    """A fine-tuned model directory of an earlier zerolm loads as it is: its weight names
    are upgraded on load (with a warning), and it predicts what it predicted then."""
    from safetensors.torch import save_file

    from zerolm.modeldir import load_weights

    old = saved(golden, f"{family}.{kind}.sd.")
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in old.items()}, str(path))
    torch.manual_seed(1)  # other weights than the fixture's: only loading can make them equal
    model = SequenceClassifier(tiny(family), num_labels=3, dropout=0.0).eval()
    if kind != "none":
        apply_strategy(model, kind, prompt_length=P)
    load_weights(model, path)  # strict
    assert any("earlier zerolm" in r.getMessage() for r in caplog.records) == (
        family == "gpt" or kind != "none")  # an old BERT classifier's names were already today's
    with torch.no_grad():
        logits = model(golden["ids"], attention_mask=golden["mask"])
    torch.testing.assert_close(logits, golden[f"{family}.{kind}.logits"], rtol=0, atol=1e-6)


def test_a_pretrained_lm_written_before_the_redesign_still_loads(golden, tmp_path):
    from safetensors.torch import save_file

    from zerolm.modeldir import load_weights

    old = {k: v for k, v in saved(golden, "lm.prompt.sd.").items()}  # top-level tok_emb, blocks...
    save_file({k: v.contiguous() for k, v in old.items()}, str(tmp_path / "w.safetensors"))
    lm = tiny("gpt")
    apply_strategy(lm, "prompt", prompt_length=P)
    load_weights(lm, tmp_path / "w.safetensors")
    with torch.no_grad():
        logits = lm(golden["ids"][:1, :6])
    torch.testing.assert_close(logits, golden["lm.prompt.logits"], rtol=0, atol=1e-6)
