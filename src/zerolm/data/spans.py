"""T5's span corruption: the pretraining objective of the encoder-decoder family.

Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer", section 3.1.4: of a segment of raw tokens, `noise_density` (15%) are
dropped in spans of mean length `mean_span_length` (3). The input keeps the other tokens
and puts one sentinel where each span was; the target lists each sentinel followed by the
tokens it stands for. Both end with eos:

    raw     Thank you for inviting me to your party last week .
    input   Thank you <extra_id_0> me to your party <extra_id_1> week . </s>
    target  <extra_id_0> for inviting <extra_id_1> last </s>

The mask follows `random_spans_noise_mask` of T5 (t5.data.preprocessors) and Hugging
Face's run_t5_mlm_flax.py: the noise and the other tokens are each cut into the same number
of segments at random, interleaved starting with a non-noise one, so every example of a
given length has exactly the same number of noise tokens and spans, and the input and
target lengths are fixed (`input_and_target_lengths`).

Letters: B batch rows, Ti input length (eos included), Tt target length (eos included).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from zerolm.data.masking import IGNORE_INDEX


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in key])


def _check_noise(noise_density: float, mean_span_length: float) -> None:
    if not 0 < noise_density < 1:
        raise ValueError(f"noise_density={noise_density}: it is the share of tokens corrupted and must "
                         f"be in (0, 1) (T5 uses 0.15)")
    if not mean_span_length >= 1:
        raise ValueError(f"mean_span_length={mean_span_length}: a corrupted span has at least one "
                         f"token, so its mean length must be >= 1 (T5 uses 3)")


def span_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a segment of `length` raw tokens, as T5 counts them:
    round(length x density) noise tokens, kept within [1, length - 1], in
    round(noise / mean_span_length) spans, at least 1. So that every span has a token
    of its own and a kept token before it, the spans are also at most the kept tokens
    (T5 leaves that case undefined; it arises only with noise_density >= 0.5)."""
    if length < 2:
        raise ValueError(f"a segment of {length} token(s) cannot be corrupted: it needs a kept and "
                         f"a corrupted token")
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = min(max(round(num_noise / mean_span_length), 1), length - num_noise)
    return num_noise, num_spans


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths (each >= 1) of `num_segments` segments of `num_items` items, cut at random:
    every choice of cut points is equally likely (T5's `_random_segmentation`)."""
    # a shuffled row of num_segments - 1 ones among the gaps between items marks the cuts
    first_in_segment = np.zeros(num_items, dtype=np.int64)
    first_in_segment[1:] = rng.permutation(np.arange(num_items - 1) < num_segments - 1)
    return np.bincount(np.cumsum(first_in_segment), minlength=num_segments)


def random_spans_noise_mask(length: int, noise_density: float, mean_span_length: float,
                            rng: np.random.Generator) -> np.ndarray:
    """(length,) bool, True on the corrupted tokens: `span_counts` noise tokens in that
    many spans, the segments of kept and corrupted tokens interleaved, kept first."""
    _check_noise(noise_density, mean_span_length)
    num_noise, num_spans = span_counts(length, noise_density, mean_span_length)
    noise_lengths = _random_segmentation(num_noise, num_spans, rng)
    kept_lengths = _random_segmentation(length - num_noise, num_spans, rng)
    interleaved = np.stack([kept_lengths, noise_lengths], axis=1).reshape(-1)  # (2 x spans,)
    return np.repeat(np.tile([False, True], num_spans), interleaved)


def input_and_target_lengths(inputs_length: int, noise_density: float,
                             mean_span_length: float) -> tuple[int, int]:
    """(raw tokens per example, target length): the longest segment whose corrupted input
    (kept tokens, a sentinel per span, eos) is at most `inputs_length`, and the length
    of its target (a sentinel per span, the corrupted tokens, eos). As T5's
    `random_spans_helper` (Hugging Face: `compute_input_and_target_lengths`):
    inputs_length 512 at 0.15 / 3 gives (568, 114).

    The input is then exactly `inputs_length` long for every noise_density below 0.5;
    above, the count of spans can step by two and the input may fall one token short
    (SpanCorruptionBatches pads it). T5's helper also shortens the segment by one at
    noise_density 0.5 to make the target fit the input length; this one does not.
    """
    _check_noise(noise_density, mean_span_length)
    if inputs_length < 3:
        raise ValueError(f"inputs_length={inputs_length}: an input holds at least a kept token, a "
                         f"sentinel and eos, so it must be >= 3")

    def lengths(tokens_length: int) -> tuple[int, int]:
        num_noise, num_spans = span_counts(tokens_length, noise_density, mean_span_length)
        return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1

    # the input grows with the segment, by at most one token per raw token while spans <= kept
    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    return tokens_length, lengths(tokens_length)[1]


def corrupt_spans(tokens: np.ndarray, noise_mask: np.ndarray, sentinel_ids: Sequence[int],
                  eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input, target) of one segment: the input is the kept tokens with the k-th noise span
    replaced by `sentinel_ids[k]`, then eos; the target is, for each span k in order,
    `sentinel_ids[k]` and the span's tokens, then eos (T5's noise_span_to_unique_sentinel and
    nonnoise_span_to_unique_sentinel, for a mask that starts with kept tokens)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    mask = np.asarray(noise_mask, dtype=bool)
    starts = mask & ~np.concatenate([[False], mask[:-1]])  # first token of each noise span
    n_spans = int(starts.sum())
    if n_spans > len(sentinel_ids):
        raise ValueError(f"{n_spans} noise spans but only {len(sentinel_ids)} sentinel tokens")
    table = np.asarray(list(sentinel_ids) or [-1], dtype=np.int64)  # (-1: never used, no spans)
    sentinels = table[np.maximum(np.cumsum(starts) - 1, 0)]  # (T,) the sentinel of each token's span
    eos = np.array([eos_id], dtype=np.int64)
    # input: a kept token stays, a span's first token becomes its sentinel, the rest go
    inputs = np.where(starts, sentinels, tokens)[~mask | starts]
    # target: each noise token, preceded at a span's start by the span's sentinel
    with_sentinels = np.stack([np.where(starts, sentinels, -1), tokens], axis=1)  # (T, 2)
    keep = np.stack([starts, mask], axis=1)  # (T, 2): the sentinel slot, the token slot
    targets = with_sentinels[keep]
    return np.concatenate([inputs, eos]), np.concatenate([targets, eos])


class SpanCorruptionBatches:
    """Span-corruption examples from a token stream (the flat corpus): it is cut into
    consecutive segments of `tokens_length` raw tokens (`input_and_target_lengths`), and
    each training batch takes the next segments of a seeded shuffle (a new one each
    epoch) and corrupts them with a generator seeded by (seed, step, index). So any batch
    is a pure function of (seed, step, index): resuming equals running on.

    A batch holds "input_ids" and "attention_mask" (B, Ti), and "labels" (B, Tt) with
    IGNORE_INDEX (-100) on padding; training inputs are exactly `input_length` long and
    unpadded (below noise_density 0.5). The decoder's inputs are the model's to make: the
    labels shifted right behind the decoder start token (pad, id 0, in T5).
    """

    def __init__(self, tokens: np.ndarray, tokenizer, *, input_length: int, batch_size: int,
                 seed: int, noise_density: float = 0.15, mean_span_length: float = 3.0,
                 micro_per_step: int = 1):
        """`tokens`: the flat token stream (`TokenCorpus.flat()`); its boundaries between
        lines and documents are not marked, as in T5's packed pretraining. `tokenizer`
        gives the sentinels (`sentinel_ids`), eos and pad. `micro_per_step`: micro-batches
        per optimizer step over all processes (train.grad_accum x processes), so that
        consecutive steps read consecutive segments."""
        _check_noise(noise_density, mean_span_length)
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: need at least one example per batch")
        self.tokens = tokens
        self.input_length = input_length
        self.noise_density, self.mean_span_length = noise_density, mean_span_length
        self.batch_size, self.seed, self.micro_per_step = batch_size, seed, micro_per_step
        self.tokens_length, self.target_length = input_and_target_lengths(
            input_length, noise_density, mean_span_length)
        self.n_segments = len(tokens) // self.tokens_length
        if self.n_segments < 1:
            raise ValueError(f"the corpus has {len(tokens)} tokens, fewer than one example needs "
                             f"({self.tokens_length} raw tokens for input_length={input_length}); "
                             f"give more text or a smaller input length")
        self.eos_id, self.pad_id = tokenizer.eos_id, tokenizer.pad_id
        if self.eos_id is None:
            raise ValueError("span corruption ends inputs and targets with eos: this tokenizer has no "
                             "eos token (train a unigram tokenizer, whose eos is </s>)")
        if self.pad_id is None:
            self.pad_id = self.eos_id  # hidden by the attention mask
        self.sentinel_ids = list(tokenizer.sentinel_ids)
        _, spans = span_counts(self.tokens_length, noise_density, mean_span_length)
        if len(self.sentinel_ids) < spans:
            raise ValueError(
                f"the tokenizer has {len(self.sentinel_ids)} sentinel tokens (<extra_id_N>), but an "
                f"example of {self.tokens_length} raw tokens (input_length={input_length}, "
                f"noise_density={noise_density}, mean_span_length={mean_span_length}) has {spans} "
                f"noise spans, each needing its own: train the tokenizer with sentinels >= {spans} "
                f"(`zerolm tokenizer train --sentinels 100`; tokenizer.sentinels in a config)")
        self._perm: tuple[int, np.ndarray] | None = None  # (epoch, its order of segments)

    def steps_per_epoch(self) -> int:
        """Optimizer steps that read every segment once."""
        return max(self.n_segments // (self.batch_size * self.micro_per_step), 1)

    def _order(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, _rng(self.seed, 0xE90C, epoch).permutation(self.n_segments))
        return self._perm[1]

    def _segment(self, k: int) -> np.ndarray:
        return np.asarray(self.tokens[k * self.tokens_length:(k + 1) * self.tokens_length], dtype=np.int64)

    def _collate(self, segments: list[np.ndarray], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        pairs = [corrupt_spans(s, random_spans_noise_mask(len(s), self.noise_density,
                                                          self.mean_span_length, rng),
                               self.sentinel_ids, self.eos_id) for s in segments]
        Ti = max(len(x) for x, _ in pairs)
        Tt = max(len(y) for _, y in pairs)
        ids = torch.full((len(pairs), Ti), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(pairs), Ti), dtype=torch.long)
        labels = torch.full((len(pairs), Tt), IGNORE_INDEX, dtype=torch.long)
        for r, (x, y) in enumerate(pairs):
            ids[r, :len(x)] = torch.from_numpy(x)
            attn[r, :len(x)] = 1
            labels[r, :len(y)] = torch.from_numpy(y)
        return {"input_ids": ids, "attention_mask": attn, "labels": labels}

    def batch(self, step: int, index: int) -> dict[str, torch.Tensor]:
        """Micro-batch `index` of optimizer step `step`: the next `batch_size` segments of
        the shuffled stream, corrupted at random (by seed, step and index)."""
        first = (step * self.micro_per_step + index) * self.batch_size  # rows before this batch
        segments = []
        for row in range(first, first + self.batch_size):
            epoch, k = divmod(row, self.n_segments)
            segments.append(self._segment(int(self._order(epoch)[k])))
        return self._collate(segments, _rng(self.seed, step, index))

    def eval_batches(self, max_batches: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Every segment once, in order (the last, shorter one too when it has two tokens or
        more), corrupted with a fixed generator: the same batches every time."""
        n = len(self.tokens)
        starts = list(range(0, n - 1, self.tokens_length))  # a last segment of 1 token is dropped
        for b, first in enumerate(range(0, len(starts), self.batch_size)):
            if max_batches and b >= max_batches:
                return
            segments = [np.asarray(self.tokens[s:s + self.tokens_length], dtype=np.int64)
                        for s in starts[first:first + self.batch_size]]
            yield self._collate(segments, _rng(self.seed, 0x5EED, b))


__all__ = ["SpanCorruptionBatches", "corrupt_spans", "input_and_target_lengths",
           "random_spans_noise_mask", "span_counts"]
