"""Sentence embeddings from an encoder (or decoder): mean or [CLS] pooling, optional L2
normalisation, batches sorted by length so padding costs little."""

from __future__ import annotations

import logging

import numpy as np
import torch

from zerolm.models import body_of
from zerolm.models.body import input_room
from zerolm.progress import progress_bar

log = logging.getLogger(__name__)


def _encoder(model):
    """ids -> final hidden states, through the body of whatever model this is (a causal
    body's states still serve similarity)."""
    body = body_of(model)
    return lambda ids, mask, types: body(ids, attention_mask=mask, token_type_ids=types).last_hidden_state


@torch.no_grad()
def embed_texts(model, tokenizer, texts: list[str], *, batch_size: int = 32, pooling: str = "mean",
                normalize: bool = True, max_length: int | None = None, progress: bool | None = False) -> np.ndarray:
    """(N, D) float32 embeddings of `texts`, in the order given."""
    if pooling not in ("mean", "cls"):
        raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
    model.eval()
    device = next(model.parameters()).device
    # the positions a transform such as a soft prompt takes are not the input's to use
    limit = min(max_length or 10**9, tokenizer.model_max_length or 10**9, input_room(model))
    enc = tokenizer.encode_batch(texts, max_length=limit)["input_ids"]
    order = np.argsort([len(e) for e in enc], kind="stable")[::-1]  # longest first: OOM shows early
    forward = _encoder(model)
    out = np.zeros((len(texts), model.config.d_model), dtype=np.float32)
    # progress None: a bar on a terminal, else a log line every ~10 s; False: silent
    bar = progress_bar(len(texts), "embedding", unit="text", enabled=progress)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        b = tokenizer.pad([enc[i] for i in idx], token_type_ids=[[0] * len(enc[i]) for i in idx])
        mask = b["attention_mask"].to(device)
        h = forward(b["input_ids"].to(device), mask, b["token_type_ids"].to(device)).float()  # (B, T, D)
        if pooling == "mean":
            m = mask[..., None].float()
            v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        else:
            v = h[:, 0]
        if normalize:
            v = torch.nn.functional.normalize(v, p=2, dim=-1)
        out[idx] = v.cpu().numpy()
        bar.update(len(idx))
    bar.close()
    return out


def top_k(query: np.ndarray, corpus: np.ndarray, k: int) -> list[tuple[int, float]]:
    """Indices and cosine similarities of the k corpus rows closest to `query`."""
    q = query / max(float(np.linalg.norm(query)), 1e-12)
    c = corpus / np.clip(np.linalg.norm(corpus, axis=1, keepdims=True), 1e-12, None)
    sims = c @ q
    best = np.argsort(-sims, kind="stable")[:k]
    return [(int(i), float(sims[i])) for i in best]
