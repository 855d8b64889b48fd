"""Masked-LM corruption (BERT): choose 15% of tokens to predict; replace 80% of those by
[MASK], 10% by a random token, leave 10% unchanged. Special tokens and padding are never
chosen. With whole-word masking, all pieces of a word are chosen together."""

from __future__ import annotations

import torch

IGNORE_INDEX = -100  # label of positions that carry no loss


def mask_tokens(
    input_ids: torch.Tensor,  # (B, T)
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: torch.Tensor,  # (K,) ids never masked (specials, padding)
    generator: torch.Generator,
    probability: float = 0.15,
    mask_replace: float = 0.8,
    random_replace: float = 0.1,
    word_starts: torch.Tensor | None = None,  # bool (B, T): True where a new word starts
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (corrupted ids, labels) with labels = IGNORE_INDEX where nothing is predicted."""
    labels = input_ids.clone()
    maskable = ~torch.isin(input_ids, special_ids)  # (B, T)
    if word_starts is None:
        chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & maskable
    else:
        # one draw per word; continuation pieces inherit their word's draw
        starts = word_starts & maskable
        word_idx = torch.cumsum(starts.long(), dim=1)  # (B, T): 1-based word number per token
        draws = torch.rand(input_ids.shape, generator=generator) < probability  # per word number
        chosen = torch.gather(draws, 1, (word_idx - 1).clamp(min=0)) & maskable & (word_idx > 0)
    labels[~chosen] = IGNORE_INDEX
    corrupted = input_ids.clone()
    r = torch.rand(input_ids.shape, generator=generator)
    to_mask = chosen & (r < mask_replace)
    to_random = chosen & (r >= mask_replace) & (r < mask_replace + random_replace)
    corrupted[to_mask] = mask_id
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator)
    corrupted[to_random] = random_ids[to_random]
    return corrupted, labels
