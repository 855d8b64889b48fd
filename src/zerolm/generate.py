"""Text generation from a causal LM: greedy or sampled, with a KV cache.

Sampling controls follow common practice: temperature, top-k, nucleus (top-p),
CTRL's repetition penalty, stop sequences and a seed for reproducible samples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)


@dataclass
class GenerationConfig:
    max_new_tokens: int = 100  # tokens to generate at most
    temperature: float = 1.0  # < 1 sharpens, > 1 flattens; 0 means greedy
    top_k: int = 0  # keep the k most likely tokens (0: all)
    top_p: float = 1.0  # keep the smallest set with this much probability (1: all)
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the text (CTRL)
    greedy: bool = False  # always take the most likely token
    stop: list[str] = field(default_factory=list)  # stop when the text contains one of these
    stop_at_eos: bool = True  # stop at the tokenizer's end-of-text token
    seed: int | None = None  # seed for sampling
    use_cache: bool = True  # KV cache: each new token costs one position of work


def _filter_logits(logits: torch.Tensor, cfg: GenerationConfig, history: torch.Tensor) -> torch.Tensor:
    """logits (B, V) -> processed logits (B, V)."""
    if cfg.repetition_penalty != 1.0:
        seen = torch.gather(logits, 1, history)
        seen = torch.where(seen > 0, seen / cfg.repetition_penalty, seen * cfg.repetition_penalty)
        logits = logits.scatter(1, history, seen)
    if cfg.greedy or cfg.temperature == 0:
        return logits
    logits = logits / cfg.temperature
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


@torch.no_grad()
def input_room(model) -> int:
    """Positions left for tokens: max_seq_len, less any that a transform such as a soft
    prompt (zerolm.peft) has taken (it records them as `reserved_positions`)."""
    return model.config.max_seq_len - getattr(model, "reserved_positions", 0)


def generate_ids(model, input_ids: torch.Tensor, cfg: GenerationConfig, *, eos_id: int | None = None,
                 tokenizer=None) -> torch.Tensor:
    """Continue `input_ids` (B, T); returns the new tokens (B, N), N <= max_new_tokens."""
    model.eval()
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    B, T = ids.shape
    limit = input_room(model)
    n_new = cfg.max_new_tokens
    if cfg.use_cache and T + n_new > limit:
        n_new = max(limit - T, 0)
        log.warning("max_new_tokens cut to %d: the model sees at most %d tokens", n_new, limit)
    gen = torch.Generator(device=device)
    if cfg.seed is not None:
        gen.manual_seed(cfg.seed)
    else:
        gen.seed()
    cache = model.new_cache(B, T + n_new) if cfg.use_cache else None
    out = torch.empty(B, 0, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    step_input = ids
    for _ in range(n_new):
        if cache is None:
            step_input = torch.cat([ids, out], dim=1)[:, -limit:]  # a sliding window without a cache
        logits = model(step_input, cache=cache)[:, -1, :].float()  # (B, V)
        logits = _filter_logits(logits, cfg, torch.cat([ids, out], dim=1))
        if cfg.greedy or cfg.temperature == 0:
            nxt = logits.argmax(dim=-1)
        else:
            nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen).squeeze(1)
        if eos_id is not None and cfg.stop_at_eos:
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            done |= nxt == eos_id
        out = torch.cat([out, nxt[:, None]], dim=1)
        step_input = nxt[:, None]
        if done.all():
            break
        if cfg.stop and tokenizer is not None and B == 1:
            tail = tokenizer.decode(out[0, -16:].tolist(), skip_special_tokens=False)
            if any(s in tail for s in cfg.stop):
                break
    return out


def generate_text(model, tokenizer, prompt: str, cfg: GenerationConfig) -> str:
    """The text generated after `prompt` (the prompt itself not repeated)."""
    ids = tokenizer.encode(prompt, add_special_tokens=False) if prompt else []
    if not ids:
        start = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.bos_id
        if start is None:
            raise ValueError("an empty prompt needs a tokenizer with an end-of-text token")
        ids = [start]
    new = generate_ids(model, torch.tensor([ids]), cfg, eos_id=tokenizer.eos_id, tokenizer=tokenizer)[0]
    if tokenizer.eos_id is not None and cfg.stop_at_eos:
        hits = (new == tokenizer.eos_id).nonzero()
        if len(hits):
            new = new[: int(hits[0])]
    text = tokenizer.decode(new.tolist(), skip_special_tokens=True)
    for s in cfg.stop:
        if s in text:
            text = text[: text.index(s)]
    return text
