"""Text generation from a causal LM: greedy or sampled, batched, with a KV cache.

Several prompts run as one batch: they are left-padded, an attention mask hides the
padding, each row's positions count its own tokens, and a row that stops (end-of-text
or a stop sequence) leaves the batch, so the others go on at the cost of fewer rows.
Greedy output of a batch equals each prompt generated alone.

A request longer than the context window keeps going with a sliding window over the
last max_seq_len tokens, as nanoGPT crops its context: once the cache is full, each new
token is computed from the window without a cache.

Sampling controls follow common practice: temperature, top-k, nucleus (top-p), CTRL's
repetition penalty, stop sequences and a seed for reproducible samples.

An encoder-decoder (T5) writes its target from the start token with `generate_seq2seq`:
the source is encoded once, the decoder keeps a cache of its own keys and values and of
the source's, and decoding is greedy, sampled, or a beam search (beam size, length
penalty, no-repeat n-grams, minimum and maximum new tokens), all batched.

Shape letters: B batch (active rows), T tokens, V vocabulary, N new tokens, K beams.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from zerolm.errors import ConfigError
from zerolm.models.body import input_room

log = logging.getLogger(__name__)


@dataclass
class GenerationConfig:
    max_new_tokens: int = 100  # tokens to generate at most (>= 0)
    temperature: float = 1.0  # < 1 sharpens, > 1 flattens; 0 means greedy (>= 0)
    top_k: int = 0  # keep the k most likely tokens (0: all)
    top_p: float = 1.0  # keep the smallest set with this much probability, in (0, 1] (1: all)
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the text (CTRL); > 0
    greedy: bool = False  # always take the most likely token
    stop: list[str] = field(default_factory=list)  # stop a row when its text contains one of these
    stop_at_eos: bool = True  # stop a row at the tokenizer's end-of-text token
    seed: int | None = None  # seed for sampling
    use_cache: bool = True  # KV cache: each new token costs one position of work
    num_beams: int = 1  # encoder-decoders: beam search with this many beams (1: greedy or sampling)
    length_penalty: float = 1.0  # beam search: a hypothesis scores log p / length ** this (> 0 favours longer)
    no_repeat_ngram_size: int = 0  # never repeat an n-gram of this size (0: off)
    min_new_tokens: int = 0  # end-of-text is not allowed before this many new tokens

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> ConfigError:
            return ConfigError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 0:
            raise bad("max_new_tokens", "an integer >= 0")
        if not self.temperature >= 0:  # also catches NaN
            raise bad("temperature", ">= 0 (0: greedy)")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad("top_k", "an integer >= 0 (0: no top-k filter)")
        if not 0 < self.top_p <= 1:
            raise bad("top_p", "in (0, 1] (1: no nucleus filter)")
        if not self.repetition_penalty > 0:
            raise bad("repetition_penalty", "> 0 (1: none)")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2**63):
            raise bad("seed", "an integer in [0, 2**63)")
        for name in ("num_beams", "no_repeat_ngram_size", "min_new_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "num_beams" else 0):
                raise bad(name, "an integer >= 1" if name == "num_beams" else "an integer >= 0")
        if not math.isfinite(self.length_penalty):
            raise bad("length_penalty", "a finite number")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ConfigError(f"stop sequences must be non-empty strings, got {self.stop!r}")

    @property
    def is_greedy(self) -> bool:
        # a temperature below float32's smallest normal number divides logits by zero: the
        # limit of sampling as the temperature falls is the greedy choice
        return self.greedy or self.temperature < 1.2e-38


def _filter_logits(logits: torch.Tensor, cfg: GenerationConfig, seen: torch.Tensor | None) -> torch.Tensor:
    """logits (B, V) -> processed logits (B, V); `seen` bool (B, V) marks tokens in the text."""
    if cfg.repetition_penalty != 1.0 and seen is not None:
        pen = torch.where(logits > 0, logits / cfg.repetition_penalty, logits * cfg.repetition_penalty)
        big = torch.finfo(logits.dtype).max  # an extreme penalty must not make +-inf (inf - inf is NaN)
        logits = torch.where(seen, pen, logits).clamp(-big, big)
    if cfg.is_greedy:
        return logits
    # shifting each row to a maximum of 0 changes no probability, and keeps a tiny
    # temperature from overflowing to inf (the best token stays at 0, the rest -> -inf)
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / cfg.temperature
    if cfg.top_k and cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already hold top_p probability
        drop = (torch.cumsum(probs, dim=-1) - probs) > cfg.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    return logits


def _next_tokens(logits: torch.Tensor, cfg: GenerationConfig, n: int, eos_id: int | None,
                 gen: torch.Generator, seqs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The next token (B,) of each row from its logits (B, V), after the rules of `cfg`:
    no end-of-text before min_new_tokens (this is new token `n`), no repeated n-gram and
    the repetition penalty over each row's text so far `seqs` (B, T) where `mask` is 1,
    then greedy or sampled."""
    if eos_id is not None and n < cfg.min_new_tokens:
        logits[:, eos_id] = float("-inf")
    if cfg.no_repeat_ngram_size:
        real = [[t for t, m in zip(row, ms) if m] for row, ms in zip(seqs.tolist(), mask.tolist())]
        logits = _ban_repeats(logits, real, cfg.no_repeat_ngram_size)
    seen = None
    if cfg.repetition_penalty != 1.0:
        seen = torch.zeros_like(logits).scatter_reduce(1, seqs, mask.float(), "amax").bool()
    logits = _filter_logits(logits, cfg, seen)
    if cfg.is_greedy:
        return logits.argmax(dim=-1)
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen).squeeze(1)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) position of each token among its row's real tokens (padding: 0)."""
    return (mask.cumsum(1) - 1).clamp(min=0)


@torch.no_grad()
def generate_ids(model, input_ids: torch.Tensor, cfg: GenerationConfig, *,
                 attention_mask: torch.Tensor | None = None, eos_id: int | None = None,
                 pad_id: int = 0, tokenizer=None,
                 on_step: Callable[[list[int], list[int], list[bool]], None] | None = None) -> torch.Tensor:
    """Continue the left-padded prompts `input_ids` (B, T); returns the new tokens (B, N),
    N <= max_new_tokens. A row that stopped early is filled with `eos_id` (or `pad_id`).

    `on_step(rows, tokens, done)`, when given, is called after every step with the batch
    rows still generating, the token each just got and whether that row stopped there
    (a server streams tokens from it; rows still going when the loop ends stopped at
    max_new_tokens)."""
    if cfg.num_beams > 1:
        raise ConfigError("beam search (num_beams > 1) is implemented for encoder-decoders (T5); "
                          "a causal LM decodes greedily or by sampling")
    model.eval()
    device = next(model.parameters()).device
    seqs = input_ids.to(device)
    B, T = seqs.shape
    mask = (torch.ones_like(seqs) if attention_mask is None else attention_mask.to(device)).long()
    if B and bool((mask.sum(1) == 0).any()):
        raise ValueError("every prompt needs at least one token")
    limit = input_room(model)
    if limit < 1:
        raise ValueError(f"the model has no room for tokens (model.max_seq_len {model.config.max_seq_len})")
    fill = eos_id if eos_id is not None else pad_id
    out = torch.full((B, cfg.max_new_tokens), fill, dtype=torch.long, device=device)
    gen = torch.Generator(device=device)
    if cfg.seed is not None:
        gen.manual_seed(cfg.seed)
    else:
        gen.seed()
    active = torch.arange(B, device=device)  # rows still generating, in batch order
    cache, cache_mask, windowed = None, None, not cfg.use_cache
    n = 0
    for n in range(cfg.max_new_tokens):
        if not len(active):
            break
        rows_ids, rows_mask = seqs[active], mask[active]
        if not windowed and cache is not None and cache_mask.shape[1] >= limit:
            windowed = True  # the window is full: from now on, crop and recompute
            log.info("generation passed the %d-token context window: continuing with a sliding window",
                     limit)
        if windowed:
            ids, m = rows_ids[:, -limit:], rows_mask[:, -limit:]
            logits = model(ids, attention_mask=m, position_ids=_positions(m))[:, -1]
            cache = None
        elif cache is None:  # prefill: the prompts (cropped to the window) in one pass
            ids, m = rows_ids[:, -limit:], rows_mask[:, -limit:]
            room = min(ids.shape[1] + cfg.max_new_tokens, limit) + (model.config.max_seq_len - limit)
            cache = model.new_cache(len(active), room)
            logits = model(ids, attention_mask=m, position_ids=_positions(m), cache=cache)[:, -1]
            cache_mask = m
        else:
            cache_mask = torch.cat([cache_mask, cache_mask.new_ones(len(active), 1)], dim=1)
            pos = cache_mask.sum(1, keepdim=True) - 1  # (B, 1)
            logits = model(rows_ids[:, -1:], attention_mask=cache_mask, position_ids=pos, cache=cache)[:, -1]
        # the prompt and what follows it count for repeats, as in Hugging Face
        nxt = _next_tokens(logits.float(), cfg, n, eos_id, gen, rows_ids, rows_mask)
        out[active, n] = nxt
        new_col = torch.full((B, 1), pad_id, dtype=torch.long, device=device)
        new_col[active, 0] = nxt
        seqs = torch.cat([seqs, new_col], dim=1)
        mask = torch.cat([mask, torch.zeros_like(new_col).index_fill_(0, active, 1)], dim=1)
        done = _stopped(nxt, out, active, n, cfg, eos_id, tokenizer)
        if on_step is not None:
            on_step(active.tolist(), nxt.tolist(), done.tolist())
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            active = active[keep]
            if cache is not None:
                cache.reorder(keep)
                cache_mask = cache_mask[keep]
    used = n + 1 if cfg.max_new_tokens else 0
    return out[:, :used]


def _stopped(nxt: torch.Tensor, out: torch.Tensor, active: torch.Tensor, n: int, cfg: GenerationConfig,
             eos_id: int | None, tokenizer) -> torch.Tensor:
    """(N,) bool: which active rows stop after their token `nxt` (step `n`, written in
    `out`): at end-of-text, or when their last tokens' text holds a stop sequence."""
    done = torch.zeros(len(active), dtype=torch.bool, device=nxt.device)
    if eos_id is not None and cfg.stop_at_eos:
        done |= nxt == eos_id
    if cfg.stop and tokenizer is not None:
        for j, row in enumerate(active.tolist()):
            tail = tokenizer.decode(out[row, max(0, n - 15):n + 1].tolist(), skip_special_tokens=False)
            done[j] |= any(s in tail for s in cfg.stop)
    return done


def encode_prompts(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask (B, T) of the prompts (an empty prompt starts
    from the end-of-text token)."""
    rows = []
    for p in prompts:
        ids = tokenizer.encode(p, add_special_tokens=False) if p else []
        if not ids:
            start = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.bos_id
            if start is None:
                raise ValueError("an empty prompt needs a tokenizer with an end-of-text token")
            ids = [start]
        rows.append(ids)
    T = max(len(r) for r in rows)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    ids = torch.tensor([[pad] * (T - len(r)) + r for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    return ids, mask


def decode_new(tokenizer, new: list[int], cfg: GenerationConfig) -> str:
    """The text of generated ids, cut at end-of-text and at the first stop sequence."""
    if tokenizer.eos_id is not None and cfg.stop_at_eos and tokenizer.eos_id in new:
        new = new[: new.index(tokenizer.eos_id)]
    text = tokenizer.decode(new, skip_special_tokens=True)
    for s in cfg.stop:
        if s in text:
            text = text[: text.index(s)]
    return text


def generate_texts(model, tokenizer, prompts: list[str], cfg: GenerationConfig) -> list[str]:
    """The text generated after each prompt (the prompts themselves not repeated), in order."""
    if not prompts:
        return []
    ids, mask = encode_prompts(tokenizer, prompts)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    new = generate_ids(model, ids, cfg, attention_mask=mask, eos_id=tokenizer.eos_id, pad_id=pad,
                       tokenizer=tokenizer)
    return [decode_new(tokenizer, row.tolist(), cfg) for row in new]


def generate_text(model, tokenizer, prompt: str, cfg: GenerationConfig) -> str:
    """The text generated after `prompt` (the prompt itself not repeated)."""
    return generate_texts(model, tokenizer, [prompt], cfg)[0]


# ---------------------------------------------------------------- encoder-decoder
def _ban_repeats(logp: torch.Tensor, rows: list[list[int]], n: int) -> torch.Tensor:
    """Set to -inf, in each row of logp (N, V), the tokens that would complete an n-gram
    already in that row's tokens `rows[i]`."""
    for r, toks in enumerate(rows):
        if n <= 0 or len(toks) < n:
            continue
        head = tuple(toks[len(toks) - n + 1:]) if n > 1 else ()
        banned = [toks[i + n - 1] for i in range(len(toks) - n + 1) if tuple(toks[i:i + n - 1]) == head]
        if banned:
            logp[r, banned] = float("-inf")
    return logp


@torch.no_grad()
def generate_seq2seq(model, input_ids: torch.Tensor, cfg: GenerationConfig, *,
                     attention_mask: torch.Tensor | None = None, eos_id: int | None = None,
                     pad_id: int = 0, tokenizer=None,
                     on_step: Callable[[list[int], list[int], list[bool]], None] | None = None) -> torch.Tensor:
    """The targets (B, N) an encoder-decoder writes for the sources `input_ids` (B, S)
    (right-padded, `attention_mask` 1 = real token), N <= max_new_tokens, padded with
    `pad_id` after each row's end-of-text. Greedy, sampled, or a beam search when
    `cfg.num_beams` > 1 (the best finished hypothesis of each source).

    `tokenizer` and `on_step` as in `generate_ids`: with a tokenizer, greedy and sampled
    rows also stop at `cfg.stop`; `on_step` hears each step's tokens. A beam search only
    knows its targets at the end, so there `on_step` hears them replayed step by step
    once the search is over."""
    model.eval()
    device = next(model.parameters()).device
    src = input_ids.to(device)
    mask = (torch.ones_like(src) if attention_mask is None else attention_mask.to(device)).long()
    B = src.shape[0]
    if B == 0 or cfg.max_new_tokens == 0:
        return torch.full((B, 0), pad_id, dtype=torch.long, device=device)
    enc = model.encode(src, mask)  # (B, S, D): once per source
    if cfg.num_beams == 1:
        return _sample_seq2seq(model, enc, mask, cfg, eos_id, pad_id, tokenizer, on_step)
    out = _beam_search(model, enc, mask, cfg, eos_id, pad_id)
    if on_step is not None:
        _replay(out, eos_id, pad_id, on_step)
    return out


@torch.no_grad()
def beam_search(model, input_ids: torch.Tensor, cfg: GenerationConfig, *,
                attention_mask: torch.Tensor | None = None, eos_id: int | None = None,
                pad_id: int = 0) -> torch.Tensor:
    """`generate_seq2seq`'s beam search, run for any `cfg.num_beams` (with one beam it
    must find what greedy decoding finds)."""
    model.eval()
    device = next(model.parameters()).device
    src = input_ids.to(device)
    mask = (torch.ones_like(src) if attention_mask is None else attention_mask.to(device)).long()
    if src.shape[0] == 0 or cfg.max_new_tokens == 0:
        return torch.full((src.shape[0], 0), pad_id, dtype=torch.long, device=device)
    return _beam_search(model, model.encode(src, mask), mask, cfg, eos_id, pad_id)


def _replay(out: torch.Tensor, eos_id: int | None, pad_id: int, on_step) -> None:
    """Hand finished targets (B, N) to `on_step` one step at a time, as if decoded so."""
    rows = out.tolist()
    # a row runs through its end-of-text; a row without one ran to max_new_tokens (the
    # width), or is all padding (a source that found no hypothesis)
    ends = [row.index(eos_id) + 1 if eos_id is not None and eos_id in row
            else (0 if all(t == pad_id for t in row) else len(row)) for row in rows]
    for n in range(out.shape[1]):
        live = [b for b in range(len(rows)) if ends[b] > n]
        if not live:
            break
        on_step(live, [rows[b][n] for b in live], [rows[b][n] == eos_id for b in live])


def _sample_seq2seq(model, enc, mask, cfg: GenerationConfig, eos_id, pad_id, tokenizer=None,
                    on_step=None) -> torch.Tensor:
    """Greedy or sampled decoding; a row that ends leaves the batch."""
    B, device = enc.shape[0], enc.device
    out = torch.full((B, cfg.max_new_tokens), pad_id, dtype=torch.long, device=device)
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed) if cfg.seed is not None else gen.seed()
    cache = model.new_cache(B, cfg.max_new_tokens + 1)
    seqs = torch.full((B, 1), model.start_id, dtype=torch.long, device=device)  # (N, t)
    active = torch.arange(B, device=device)
    first = True
    n = 0
    for n in range(cfg.max_new_tokens):
        if first:
            logits = model(decoder_input_ids=seqs[:, -1:], encoder_states=enc, attention_mask=mask,
                           cache=cache)[:, -1].float()
            first = False
        else:
            logits = model(decoder_input_ids=seqs[:, -1:], cache=cache)[:, -1].float()  # (N, V)
        nxt = _next_tokens(logits, cfg, n, eos_id, gen, seqs[:, 1:], torch.ones_like(seqs[:, 1:]))
        out[active, n] = nxt
        seqs = torch.cat([seqs, nxt[:, None]], dim=1)
        done = _stopped(nxt, out, active, n, cfg, eos_id, tokenizer)
        if on_step is not None:
            on_step(active.tolist(), nxt.tolist(), done.tolist())
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            if not len(keep):
                break
            active, seqs = active[keep], seqs[keep]
            cache.reorder(keep)
    return out[:, :n + 1]


def _beam_search(model, enc, mask, cfg: GenerationConfig, eos_id, pad_id) -> torch.Tensor:
    """Beam search over K beams per source, all sources in one batch.

    Each step extends every live beam by every token, keeps the 2K best continuations of
    each source, files those ending in end-of-text as finished hypotheses (scored
    sum log p / length ** length_penalty, length counting the end-of-text) and goes on
    with the K best others. A source is done once it has K finished hypotheses and no
    live beam can still beat the worst of them, or at max_new_tokens, where its K best
    candidates finish as they stand. These are the rules of Hugging Face's beam search
    (with early_stopping=False), so both return the same targets. Done sources leave the
    batch, so a batch costs what its longest search costs, not its longest row times K.
    """
    K, B, device = cfg.num_beams, enc.shape[0], enc.device
    V = model.config.vocab_size
    lp = cfg.length_penalty
    enc = enc.repeat_interleave(K, dim=0)  # (B K, S, D)
    mask = mask.repeat_interleave(K, dim=0)
    cache = model.new_cache(B * K, cfg.max_new_tokens + 1)
    seqs = torch.full((B * K, 1), model.start_id, dtype=torch.long, device=device)  # (N K, t)
    scores = torch.zeros(B, K, device=device)
    scores[:, 1:] = float("-inf")  # every beam starts equal: keep one until they differ
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    live = torch.arange(B, device=device)  # sources still searching
    for n in range(cfg.max_new_tokens):
        if n == 0:
            logp = model(decoder_input_ids=seqs[:, -1:], encoder_states=enc, attention_mask=mask,
                         cache=cache)[:, -1].float()
        else:
            logp = model(decoder_input_ids=seqs[:, -1:], cache=cache)[:, -1].float()
        logp = torch.log_softmax(logp, dim=-1)  # (N K, V)
        if eos_id is not None and n < cfg.min_new_tokens:
            logp[:, eos_id] = float("-inf")
        if cfg.no_repeat_ngram_size:
            logp = _ban_repeats(logp, seqs[:, 1:].tolist(), cfg.no_repeat_ngram_size)
        N = len(live)
        cand = (scores.view(N, K, 1) + logp.view(N, K, V)).view(N, K * V)
        top, idx = cand.topk(2 * K, dim=1)  # (N, 2K)
        parent, token = idx // V, idx % V
        last = n == cfg.max_new_tokens - 1
        next_rows, next_tokens, next_scores, keep_src = [], [], [], []
        top_l, parent_l, token_l = top.tolist(), parent.tolist(), token.tolist()
        seq_l = seqs[:, 1:].tolist()
        for j in range(N):
            b = int(live[j])
            if last:  # out of room: the K best candidates finish as they are
                for r in range(K):
                    if top_l[j][r] > float("-inf"):
                        _add_hyp(finished[b], K, top_l[j][r] / ((n + 1) ** lp),
                                 seq_l[j * K + parent_l[j][r]] + [token_l[j][r]])
                continue
            rows, toks, scs = [], [], []
            for r in range(2 * K):
                s, p, t = top_l[j][r], parent_l[j][r], token_l[j][r]
                if s == float("-inf"):
                    break
                if eos_id is not None and t == eos_id:
                    if r < K:  # an end-of-text outside the K best is not a hypothesis yet
                        _add_hyp(finished[b], K, s / ((n + 1) ** lp), seq_l[j * K + p] + [t])
                    continue
                rows.append(j * K + p)
                toks.append(t)
                scs.append(s)
                if len(rows) == K:
                    break
            # the score the best live beam has now: Hugging Face's default heuristic (its log p
            # can only fall; with length_penalty > 0 a longer beam could still score higher)
            reach = scs[0] / ((n + 1) ** lp) if scs else float("-inf")
            if not rows or (len(finished[b]) >= K and finished[b][-1][0] >= reach):
                continue  # this source is done
            while len(rows) < K:  # fewer than K live continuations: pad with a dead beam
                rows.append(rows[0])
                toks.append(toks[0])
                scs.append(float("-inf"))
            keep_src.append(j)
            next_rows += rows
            next_tokens += toks
            next_scores.append(scs)
        if not keep_src:
            break
        sel = torch.tensor(next_rows, device=device)
        cache.self_kv.reorder(sel)
        if len(keep_src) < N:  # a source left: its beams' source keys and values go too
            cache.reorder_memory(torch.tensor([j * K + r for j in keep_src for r in range(K)], device=device))
        seqs = torch.cat([seqs[sel], torch.tensor(next_tokens, device=device)[:, None]], dim=1)
        scores = torch.tensor(next_scores, device=device)
        live = live[torch.tensor(keep_src, device=device)]
    best = [max(f, key=lambda h: h[0])[1] if f else [] for f in finished]
    width = max((len(x) for x in best), default=0)
    out = torch.full((B, width), pad_id, dtype=torch.long, device=device)
    for b, toks in enumerate(best):
        if toks:
            out[b, :len(toks)] = torch.tensor(toks, device=device)
    return out


def _add_hyp(hyps: list[tuple[float, list[int]]], k: int, score: float, tokens: list[int]) -> None:
    """Keep the k best finished hypotheses, sorted best first."""
    if len(hyps) >= k and score <= hyps[-1][0]:
        return
    hyps.append((score, tokens))
    hyps.sort(key=lambda h: -h[0])
    del hyps[k:]


def generate_seq2seq_ids(model, tokenizer, sources: list[str], cfg: GenerationConfig, *,
                         max_source_length: int | None = None,
                         on_step: Callable[[list[int], list[int], list[bool]], None] | None = None) -> torch.Tensor:
    """The target ids (B, N) an encoder-decoder writes for source texts (each cut to
    `max_source_length` tokens, its end-of-text kept), batched; `on_step` as in
    `generate_seq2seq`."""
    from zerolm.data.pairs import encode_sources

    enc, _ = encode_sources(tokenizer, sources, max_source_length or model.config.max_seq_len)
    b = tokenizer.pad(enc)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    return generate_seq2seq(model, b["input_ids"], cfg, attention_mask=b["attention_mask"],
                            eos_id=tokenizer.eos_id, pad_id=pad, tokenizer=tokenizer, on_step=on_step)


def generate_seq2seq_texts(model, tokenizer, sources: list[str], cfg: GenerationConfig, *,
                           max_source_length: int | None = None) -> list[str]:
    """The target text an encoder-decoder writes for each source, in order."""
    if not sources:
        return []
    new = generate_seq2seq_ids(model, tokenizer, sources, cfg, max_source_length=max_source_length)
    return [decode_new(tokenizer, row.tolist(), cfg) for row in new]
