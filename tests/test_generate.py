"""Generation: batched equals one by one, past the context window with a sliding window,
and every parameter validated with a one-line error naming it."""

from __future__ import annotations

import pytest
import torch

from zerolm.cli.main import main
from zerolm.errors import ConfigError
from zerolm.generate import GenerationConfig, generate_ids
from zerolm.models import ModelConfig, build_model

TINY = dict(family="gpt", vocab_size=99, d_model=32, n_layers=2, n_heads=4, d_ff=37, max_seq_len=24,
            dropout=0.0, attn_dropout=0.0)


def lm(**kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**TINY, **kw})).eval()


def left_pad(rows: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(map(len, rows))
    ids = torch.tensor([[pad] * (T - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


@pytest.mark.parametrize("use_cache", [True, False])
def test_batched_greedy_generation_equals_each_prompt_alone(use_cache):
    model = lm()
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, 99, (n,), generator=g).tolist() for n in (3, 9, 1, 6)]
    cfg = GenerationConfig(max_new_tokens=10, greedy=True, use_cache=use_cache)
    alone = [generate_ids(model, torch.tensor([p]), cfg)[0].tolist() for p in prompts]
    ids, mask = left_pad(prompts)
    together = generate_ids(model, ids, cfg, attention_mask=mask)
    assert together.tolist() == alone


def test_rows_stop_on_their_own_and_the_others_go_on():
    model = lm()
    prompts = [[5, 6, 7], [8, 9]]
    cfg = GenerationConfig(max_new_tokens=12, greedy=True)
    free = [generate_ids(model, torch.tensor([p]), cfg)[0].tolist() for p in prompts]
    eos = free[0][2]  # the third token row 0 produces: it stops there
    ids, mask = left_pad(prompts)
    out = generate_ids(model, ids, cfg, attention_mask=mask, eos_id=eos).tolist()
    assert out[0][:3] == free[0][:3] and set(out[0][3:]) <= {eos}
    n = free[1].index(eos) + 1 if eos in free[1] else len(free[1])
    assert out[1][:n] == free[1][:n]  # row 1 is unaffected by row 0 leaving the batch


def test_min_new_tokens_no_repeat_ngrams_and_no_beams_for_a_causal_lm():
    model = lm()
    prompts = [[5, 6, 7, 5, 6], [8, 9]]
    ids, mask = left_pad(prompts)
    free = generate_ids(model, ids, GenerationConfig(max_new_tokens=8, greedy=True), attention_mask=mask)
    eos = free[0, 1].item()
    late = generate_ids(model, ids, GenerationConfig(max_new_tokens=8, greedy=True, min_new_tokens=4),
                        attention_mask=mask, eos_id=eos)
    assert not late[:, :4].eq(eos).any()
    out = generate_ids(model, ids, GenerationConfig(max_new_tokens=12, greedy=True, no_repeat_ngram_size=2),
                       attention_mask=mask)
    for p, row in zip(prompts, out.tolist()):
        seq = p + row  # the prompt counts too, as in Hugging Face
        grams = [tuple(seq[i:i + 2]) for i in range(len(seq) - 1)]
        for i in range(len(p) - 1, len(grams)):  # each bigram a new token completes is new
            assert grams[i] not in grams[:i], (seq, i)
    with pytest.raises(ConfigError, match="beam search .* encoder-decoders"):
        generate_ids(model, ids, GenerationConfig(num_beams=2), attention_mask=mask)


def test_generation_past_the_context_window_uses_a_sliding_window():
    model = lm()  # max_seq_len 24
    prompt = torch.randint(1, 99, (1, 10))
    cfg = GenerationConfig(max_new_tokens=40, greedy=True)
    cached = generate_ids(model, prompt, cfg)
    uncached = generate_ids(model, prompt, GenerationConfig(max_new_tokens=40, greedy=True, use_cache=False))
    assert cached.shape == (1, 40)  # not cut at the window
    assert torch.equal(cached, uncached)
    # the token after the window is the model's prediction from the last 24 tokens
    seq = torch.cat([prompt, cached], 1)
    with torch.no_grad():
        for t in (30, 45):
            window = seq[:, t - 24:t]
            assert int(model(window)[0, -1].argmax()) == int(seq[0, t])


@pytest.mark.parametrize("field, value, message", [
    ("max_new_tokens", -1, "max_new_tokens must be an integer >= 0"),
    ("temperature", -0.5, "temperature must be >= 0"),
    ("temperature", float("nan"), "temperature must be >= 0"),
    ("top_k", -3, "top_k must be an integer >= 0"),
    ("top_p", 0.0, "top_p must be in \\(0, 1\\]"),
    ("top_p", 1.5, "top_p must be in \\(0, 1\\]"),
    ("repetition_penalty", 0.0, "repetition_penalty must be > 0"),
    ("seed", -1, "seed must be an integer in \\[0, 2\\*\\*63\\)"),
    ("seed", 2**64, "seed must be an integer in \\[0, 2\\*\\*63\\)"),
    ("stop", [""], "stop sequences must be non-empty"),
    ("num_beams", 0, "num_beams must be an integer >= 1"),
    ("no_repeat_ngram_size", -1, "no_repeat_ngram_size must be an integer >= 0"),
    ("min_new_tokens", -2, "min_new_tokens must be an integer >= 0"),
    ("length_penalty", float("inf"), "length_penalty must be a finite number"),
])
def test_each_invalid_generation_parameter_has_its_own_error(field, value, message):
    with pytest.raises(ConfigError, match=message):
        GenerationConfig(**{field: value})


@pytest.mark.parametrize("flag, value, name", [
    ("--max-new-tokens", "-5", "--max-new-tokens"), ("--temperature", "-1", "--temperature"),
    ("--top-k", "-1", "--top-k"), ("--top-p", "2", "--top-p"), ("--repetition-penalty", "0", "--repetition-penalty"),
    ("--num-samples", "0", "num-samples"), ("--num-beams", "0", "--num-beams"),
])
def test_generate_cli_refuses_bad_parameters_in_one_line(tmp_path, capsys, flag, value, name):
    code = main(["generate", str(tmp_path / "no-model"), flag, value])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and name in err
