"""T5 span corruption (zerolm.data.spans): the statistics T5 specifies, T5's length
arithmetic, the invariant that input + target give back the original tokens, sentinel
order, determinism by (seed, step, index), and refusals."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from zerolm.data.masking import IGNORE_INDEX
from zerolm.data.spans import (
    SpanCorruptionBatches,
    corrupt_spans,
    input_and_target_lengths,
    random_spans_noise_mask,
    span_counts,
)

V = 32100  # T5's vocabulary: 32000 pieces, then 100 sentinels in descending order
SENTINELS = [V - 1 - k for k in range(100)]
TOK = SimpleNamespace(sentinel_ids=SENTINELS, eos_id=1, pad_id=0)


def _stream(n: int = 100_000, seed: int = 0) -> np.ndarray:
    # ids 3.. below the sentinels, as a uint16 memmap of a corpus holds them
    return np.random.default_rng(seed).integers(3, V - 100, size=n).astype(np.uint16)


def _rows(batch: dict[str, torch.Tensor]) -> list[tuple[list[int], list[int]]]:
    """(input without padding, target without padding) of each row."""
    out = []
    for x, m, y in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
        out.append((x[m.bool()].tolist(), y[y != IGNORE_INDEX].tolist()))
    return out


def _reconstruct(inputs: list[int], targets: list[int], sentinels: list[int]) -> list[int]:
    """The raw segment: each sentinel of the input replaced by what follows it in the target."""
    which = {s: k for k, s in enumerate(sentinels)}
    assert inputs[-1] == targets[-1] == 1, "input and target end with eos"
    spans: dict[int, list[int]] = {}
    current = None
    for t in targets[:-1]:
        if t in which:
            current = which[t]
            spans[current] = []
        else:
            assert current is not None, "the target starts with a sentinel"
            spans[current].append(t)
    out: list[int] = []
    for t in inputs[:-1]:
        out.extend(spans.pop(which[t]) if t in which else [t])
    assert not spans, "every span of the target has its sentinel in the input"
    return out


# ------------------------------------------------------------------ T5's arithmetic
def test_lengths_match_t5_for_the_usual_settings():
    # nanoT5 / Hugging Face run_t5_mlm_flax: 512 input tokens come from 568 raw tokens
    assert input_and_target_lengths(512, 0.15, 3.0) == (568, 114)
    assert input_and_target_lengths(128, 0.15, 3.0) == (141, 29)


def _t5_helper(inputs_length: int, density: float, mean: float) -> tuple[int, int]:
    """T5's random_spans_helper (t5/data/preprocessors.py), without its 0.5 special case."""
    def lengths(t: int) -> tuple[int, int]:
        noise = int(round(t * density))
        spans = int(round(noise / mean))
        return t - noise + spans + 1, noise + spans + 1

    t = inputs_length - 1
    while lengths(t + 1)[0] <= inputs_length:
        t += 1
    return t, lengths(t)[1]


@pytest.mark.parametrize("density", [0.05, 0.15, 0.3, 0.45])
@pytest.mark.parametrize("mean", [1.0, 2.0, 3.0, 8.0])
def test_lengths_equal_t5s_helper_and_inputs_are_exact(density, mean):
    for inputs_length in range(16, 700, 7):
        tokens, targets = input_and_target_lengths(inputs_length, density, mean)
        noise, spans = span_counts(tokens, density, mean)
        assert tokens - noise + spans + 1 == inputs_length  # the input, eos included, fits exactly
        assert noise + spans + 1 == targets
        if round(round(tokens * density) / mean) >= 1:  # T5 does not clip these counts
            assert (tokens, targets) == _t5_helper(inputs_length, density, mean)


def test_noise_mask_has_t5s_counts_and_starts_with_kept_tokens():
    rng = np.random.default_rng(0)
    for length in (2, 3, 10, 57, 568):
        for _ in range(20):
            m = random_spans_noise_mask(length, 0.15, 3.0, rng)
            noise, spans = span_counts(length, 0.15, 3.0)
            assert m.shape == (length,) and m.dtype == bool
            assert m.sum() == noise
            assert int((m[1:] & ~m[:-1]).sum()) == spans  # spans start after a kept token
            assert not m[0] and m[-1]  # kept first, noise last: interleaved as in T5


def test_corrupt_spans_on_t5s_example():
    raw = "Thank you for inviting me to your party last week .".split()
    mask = np.array([w in ("for", "inviting", "last") for w in raw])
    ids = np.arange(10, 10 + len(raw))
    inputs, targets = corrupt_spans(ids, mask, [99, 98], eos_id=1)
    word = dict(zip(ids.tolist(), raw)) | {99: "<X>", 98: "<Y>", 1: "</s>"}
    assert " ".join(word[i] for i in inputs) == "Thank you <X> me to your party <Y> week . </s>"
    assert " ".join(word[i] for i in targets) == "<X> for inviting <Y> last </s>"


# ------------------------------------------------------------------ batches
def test_statistics_on_100k_tokens():
    data = SpanCorruptionBatches(_stream(), TOK, input_length=512, batch_size=16, seed=0)
    rows = [r for step in range(data.steps_per_epoch()) for r in _rows(data.batch(step, 0))]
    assert len(rows) * data.tokens_length > 90_000
    noise = kept = spans = 0
    lengths: list[int] = []
    noise_at = np.zeros(data.tokens_length)  # how often each position of a segment is noise
    for inputs, targets in rows:
        sent = [t for t in targets if t in SENTINELS]
        spans += len(sent)
        noise += len(targets) - len(sent) - 1
        kept += len(inputs) - len(sent) - 1
        cuts = [i for i, t in enumerate(targets) if t in SENTINELS] + [len(targets) - 1]
        lengths += [b - a - 1 for a, b in zip(cuts, cuts[1:])]
        is_noise = np.zeros(data.tokens_length, dtype=bool)
        pos = 0
        for t in inputs[:-1]:
            if t in SENTINELS:
                n = lengths[len(lengths) - len(sent) + SENTINELS.index(t)]
                is_noise[pos:pos + n] = True
                pos += n
            else:
                pos += 1
        assert pos == data.tokens_length
        noise_at += is_noise
    assert abs(noise / (noise + kept) - 0.15) <= 0.005
    assert abs(noise / spans - 3.0) <= 0.1
    assert np.mean(lengths) == pytest.approx(noise / spans)
    assert 1 <= np.std(lengths) <= 4  # span lengths vary (not all 3), as the random segmentation
    # noise falls anywhere: both halves of a segment (past the first token) are corrupted alike
    half = data.tokens_length // 2
    rate = noise_at / len(rows)
    assert abs(rate[1:half].mean() - 0.15) <= 0.02 and abs(rate[half:].mean() - 0.15) <= 0.02


def test_inputs_are_exactly_input_length_and_sentinels_appear_once_in_order():
    for input_length in (64, 100, 512):
        data = SpanCorruptionBatches(_stream(50_000), TOK, input_length=input_length, batch_size=8, seed=3)
        batch = data.batch(2, 1)
        assert batch["input_ids"].shape == batch["attention_mask"].shape == (8, input_length)
        assert batch["labels"].shape == (8, data.target_length)
        assert batch["attention_mask"].all() and (batch["labels"] != IGNORE_INDEX).all()
        assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long
        for inputs, targets in _rows(batch):
            s_in = [t for t in inputs if t in SENTINELS]
            s_out = [t for t in targets if t in SENTINELS]
            n = span_counts(data.tokens_length, 0.15, 3.0)[1]
            assert s_in == s_out == SENTINELS[:n]  # each once, in order, <extra_id_0> first
            assert inputs[-2] == SENTINELS[n - 1]  # the last span ends the segment (T5's mask)


def test_input_and_target_give_back_the_original_segment():
    stream = _stream(20_000)
    data = SpanCorruptionBatches(stream, TOK, input_length=64, batch_size=4, seed=0)
    segments = {tuple(stream[k * data.tokens_length:(k + 1) * data.tokens_length].tolist())
                for k in range(data.n_segments)}
    seen = []
    for step in range(data.steps_per_epoch()):
        for inputs, targets in _rows(data.batch(step, 0)):
            original = tuple(_reconstruct(inputs, targets, SENTINELS))
            assert original in segments
            seen.append(original)
    # one epoch reads each segment once
    assert len(seen) == len(set(seen)) == data.steps_per_epoch() * 4


def test_eval_batches_cover_the_stream_and_are_the_same_every_time():
    stream = _stream(5_000)
    data = SpanCorruptionBatches(stream, TOK, input_length=64, batch_size=8, seed=0)
    first = list(data.eval_batches())
    again = list(data.eval_batches())
    assert all(torch.equal(a[k], b[k]) for a, b in zip(first, again) for k in a)
    rebuilt = [t for b in first for inputs, targets in _rows(b) for t in _reconstruct(inputs, targets, SENTINELS)]
    assert rebuilt == stream.tolist()  # every token once, the shorter last segment included
    last = first[-1]  # that segment is padded: pad id under a 0 mask, -100 in the labels
    assert not last["attention_mask"][-1].all() and (last["labels"][-1] == IGNORE_INDEX).any()
    assert (last["input_ids"][last["attention_mask"] == 0] == 0).all()
    assert len(list(data.eval_batches(max_batches=2))) == 2


def test_a_batch_depends_only_on_seed_step_and_index():
    stream = _stream(30_000)
    a = SpanCorruptionBatches(stream, TOK, input_length=64, batch_size=4, seed=7, micro_per_step=2)
    b = SpanCorruptionBatches(stream, TOK, input_length=64, batch_size=4, seed=7, micro_per_step=2)
    for step in range(3):  # a has read other batches before; b starts at step 5 (a resumed run)
        a.batch(step, 0)
        a.batch(step, 1)
    for step, index in [(5, 1), (5, 0), (400, 1)]:  # 400: a later epoch
        x, y = a.batch(step, index), b.batch(step, index)
        assert all(torch.equal(x[k], y[k]) for k in x)
    other_seed = SpanCorruptionBatches(stream, TOK, input_length=64, batch_size=4, seed=8, micro_per_step=2)
    assert not torch.equal(a.batch(5, 0)["input_ids"], a.batch(5, 1)["input_ids"])
    assert not torch.equal(a.batch(5, 0)["input_ids"], a.batch(6, 0)["input_ids"])
    assert not torch.equal(a.batch(5, 0)["input_ids"], other_seed.batch(5, 0)["input_ids"])


def test_micro_batches_of_a_step_read_different_segments():
    # grad accumulation x processes = 2 micro-batches per step: steps cover the stream once
    stream = _stream(12_000)
    data = SpanCorruptionBatches(stream, TOK, input_length=64, batch_size=3, seed=0, micro_per_step=2)
    seen = [tuple(_reconstruct(i, t, SENTINELS)) for s in range(data.steps_per_epoch())
            for m in range(2) for i, t in _rows(data.batch(s, m))]
    assert len(seen) == len(set(seen)) == data.steps_per_epoch() * 6


def test_real_tokenizer_and_corpus(tmp_path):
    from zerolm.data.corpus import load_corpus
    from zerolm.tokenizers import Tokenizer

    text = tmp_path / "t.txt"
    lines = [f"A little brown dog number {i} runs past the old market towards the river." for i in range(300)]
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok = Tokenizer.train("unigram", [text], 120, sentinels=20)
    corpus = load_corpus([str(text)], tok, keep_line_ends=True)
    data = SpanCorruptionBatches(corpus.flat(), tok, input_length=48, batch_size=4, seed=0)
    assert data.n_segments >= 10
    batch = data.batch(0, 0)
    assert tok.eos_id == 1
    for inputs, targets in _rows(batch):
        original = _reconstruct(inputs, targets, tok.sentinel_ids)
        words = tok.decode(original).split()
        assert " ".join(words) in " ".join(" ".join(lines).split())  # a stretch of the text
        shown = tok.decode(inputs, skip_special_tokens=False)
        assert "<extra_id_0>" in shown and shown.endswith("</s>")


# ------------------------------------------------------------------ refusals
def test_too_few_sentinels_are_refused_naming_the_numbers():
    few = SimpleNamespace(sentinel_ids=SENTINELS[:5], eos_id=1, pad_id=0)
    with pytest.raises(ValueError, match=r"has 5 sentinel tokens.*568 raw tokens.*28 noise spans.*sentinels >= 28"):
        SpanCorruptionBatches(_stream(5_000), few, input_length=512, batch_size=2, seed=0)
    none = SimpleNamespace(sentinel_ids=[], eos_id=1, pad_id=0)
    with pytest.raises(ValueError, match="has 0 sentinel tokens"):
        SpanCorruptionBatches(_stream(5_000), none, input_length=64, batch_size=2, seed=0)


@pytest.mark.parametrize("density", [0.0, 1.0, 1.5, -0.1])
def test_noise_density_outside_zero_one_is_refused(density):
    with pytest.raises(ValueError, match=f"noise_density={density}"):
        SpanCorruptionBatches(_stream(5_000), TOK, input_length=64, batch_size=2, seed=0,
                              noise_density=density)
    with pytest.raises(ValueError, match="noise_density"):
        random_spans_noise_mask(100, density, 3.0, np.random.default_rng(0))


@pytest.mark.parametrize("mean", [0.5, 0.0, float("nan")])
def test_mean_span_length_below_one_is_refused(mean):
    with pytest.raises(ValueError, match=f"mean_span_length={mean}"):
        SpanCorruptionBatches(_stream(5_000), TOK, input_length=64, batch_size=2, seed=0,
                              mean_span_length=mean)


def test_short_corpus_tiny_inputs_and_no_eos_are_refused():
    with pytest.raises(ValueError, match="has 100 tokens, fewer than one example needs"):
        SpanCorruptionBatches(_stream(100), TOK, input_length=512, batch_size=2, seed=0)
    with pytest.raises(ValueError, match="inputs_length=2"):
        input_and_target_lengths(2, 0.15, 3.0)
    no_eos = SimpleNamespace(sentinel_ids=SENTINELS, eos_id=None, pad_id=0)
    with pytest.raises(ValueError, match="no eos token"):
        SpanCorruptionBatches(_stream(5_000), no_eos, input_length=64, batch_size=2, seed=0)


def test_config_refuses_bad_span_settings():
    from zerolm.config import DataConfig, RunConfig, TaskConfig, TokenizerConfig
    from zerolm.errors import ConfigError

    def cfg(**kw):
        return RunConfig(data=DataConfig(train=["t.txt"]), **kw)

    with pytest.raises(ConfigError, match="task.noise_density"):
        cfg(task=TaskConfig(noise_density=1.5)).validate()
    with pytest.raises(ConfigError, match="task.mean_span_length"):
        cfg(task=TaskConfig(mean_span_length=0.5)).validate()
    with pytest.raises(ConfigError, match="tokenizer.sentinels"):
        cfg(tokenizer=TokenizerConfig(kind="wordpiece", sentinels=100)).validate()
