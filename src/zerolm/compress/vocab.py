"""Vocabulary pruning (as TextPruner does): keep only the token embedding rows of the word
pieces a fine-tuned model's data uses, and a tokenizer of those tokens alone.

A classifier fine-tuned on English movie reviews never looks up most of a general
vocabulary (MiniLM: 30522 pieces, 11.7M of its 22.7M weights), yet the token embedding is
the largest tensor of a small encoder, int8 or not. Kept: every id seen in the data, every
special token, and (`keep_chars`) every single-character piece, with and without the
WordPiece continuation prefix "##", so that a word never seen still splits into pieces
(at worst characters) instead of becoming [UNK].

Predictions do not change on the data the ids came from: the new tokenizer splits every
word of it into the same pieces (`Tokenizer.subset`), and each piece reads the same
embedding row under its new id. Only unseen words may split differently.

Refused, before anything changes: a model with an output layer over the vocabulary (an MLM
or causal LM head, tied or not: it could no longer predict a dropped token), an int8 model
(prune first, then quantize), and a BPE tokenizer (its merges would change).

Shape letters: V vocabulary size before, V' after, D d_model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from zerolm.compress.quant import is_quantized
from zerolm.errors import ConfigError
from zerolm.models import body_of
from zerolm.tokenizers import Tokenizer

log = logging.getLogger(__name__)

IdBatch = torch.Tensor | Mapping[str, torch.Tensor]  # input_ids (B, T), or a batch holding "input_ids"


def check_vocab_prunable(model: nn.Module, tokenizer: Tokenizer) -> nn.Embedding:
    """The token embedding `prune_vocab` would slice; every refusal is raised here (before
    any data is read or anything changes)."""
    if is_quantized(model):
        raise ConfigError("prune-vocab: this model is already int8; prune the vocabulary of the fp32 model "
                          "first, then quantize the result (--method prune-vocab, then --method int8-dynamic "
                          "on its output)")
    emb = body_of(model).tok_emb
    if not isinstance(emb, nn.Embedding):
        raise ConfigError(f"prune-vocab: the token embedding is a {type(emb).__name__}, not an nn.Embedding; "
                          "prune the vocabulary of a fully fine-tuned model")
    outputs = _vocabulary_outputs(model, emb)
    if outputs:
        raise ConfigError(f"prune-vocab: {outputs[0]} is an output layer over the vocabulary; pruning the "
                          "vocabulary would change what the model predicts (it could never produce a dropped "
                          "token). Vocabulary pruning is for encoders fine-tuned on a task (a classifier or a "
                          "tagger), not for masked or causal language models")
    if emb.num_embeddings < tokenizer.vocab_size:
        raise ConfigError(f"prune-vocab: the tokenizer has {tokenizer.vocab_size} tokens but the token embedding "
                          f"only {emb.num_embeddings} rows: they do not belong together")
    beyond = [p for p in (emb.padding_idx, model.config.pad_id) if p is not None and p >= tokenizer.vocab_size]
    if beyond:
        raise ConfigError(f"prune-vocab: the model pads with id {beyond[0]}, which the tokenizer's "
                          f"{tokenizer.vocab_size} tokens do not reach; set the model's pad_id to the tokenizer's")
    tokenizer.check_subset()
    return emb


def _vocabulary_outputs(model: nn.Module, emb: nn.Embedding) -> list[str]:
    """Names of the parts of `model` that predict tokens: a parameter tied to the token
    embedding, an `lm_head`, or a linear outside the body as wide as the vocabulary (an MLM
    decoder under another name)."""
    V = emb.num_embeddings
    tied = [n for n, p in model.named_parameters(remove_duplicate=False)
            if p is emb.weight and not n.endswith("tok_emb.weight")]
    in_body = {id(m) for m in body_of(model).modules()}
    heads = [n for n, m in model.named_modules() if id(m) not in in_body and
             (n.split(".")[-1] == "lm_head" or (isinstance(m, nn.Linear) and m.out_features == V))]
    return [f"{n} (tied to the token embedding)" for n in tied] + heads


def seen_ids(batches: Iterable[IdBatch]) -> set[int]:
    """Every id of the batches' input_ids (padding included: the pad id is special anyway)."""
    seen: set[int] = set()
    for b in batches:
        ids = b["input_ids"] if isinstance(b, Mapping) else b
        seen.update(torch.unique(ids).tolist())
    return seen


def char_ids(tokenizer: Tokenizer) -> set[int]:
    """Ids of the single-character pieces ("e", and WordPiece's "##e"), special tokens aside."""
    return {i for i in range(tokenizer.vocab_size)
            if i not in tokenizer.special_ids and len(tokenizer.piece_text(i)) == 1}


def prune_vocab(model: nn.Module, tokenizer: Tokenizer, id_batches: Iterable[IdBatch], *,
                keep_chars: bool = True) -> tuple[Tokenizer, dict]:
    """Keep only the token embedding rows of the ids in `id_batches` (input_ids tensors, or
    batches holding them: pass every batch the model will see), the special tokens and,
    with `keep_chars`, the single-character pieces. `model` changes in place (its
    `body.tok_emb` keeps its name and type, `model.config.vocab_size` and `pad_id` follow);
    it now reads the ids of the returned tokenizer, not of `tokenizer`.

    Returns (the new tokenizer, report): report holds "vocab_before", "vocab_after" (=
    "seen_in_data", the distinct ids of the data, + "kept_chars", the single-character
    pieces not seen, + "kept_special", the special tokens not seen), "keep_chars",
    "embedding_params_before" and "embedding_params_after".
    """
    emb = check_vocab_prunable(model, tokenizer)
    cfg = model.config
    V = emb.num_embeddings
    seen = seen_ids(id_batches)
    unknown = sorted(i for i in seen if not 0 <= i < tokenizer.vocab_size)
    if unknown:
        raise ConfigError(f"prune-vocab: the data holds ids {unknown[:5]} outside the tokenizer's "
                          f"{tokenizer.vocab_size} tokens; were the batches made by another tokenizer?")
    chars = char_ids(tokenizer) - seen if keep_chars else set()
    keep = seen | chars
    # the model's padding row is what padded positions read: keep it even if the tokenizer
    # pads with another id (it is normally the tokenizer's [PAD], kept as special anyway)
    pads = {p for p in (emb.padding_idx, cfg.pad_id) if p is not None}  # below vocab_size: checked
    new_tokenizer, old_ids = tokenizer.subset(keep | pads)
    new_id = {old: i for i, old in enumerate(old_ids)}

    # rows of the kept ids, in their old order: new id i reads the row old id old_ids[i] read.
    # A new Parameter in the same module: the key stays body.tok_emb.weight.
    index = torch.tensor(old_ids, dtype=torch.long, device=emb.weight.device)
    emb.weight = nn.Parameter(emb.weight.detach()[index].clone(), requires_grad=emb.weight.requires_grad)  # (V', D)
    emb.num_embeddings = len(old_ids)
    if emb.padding_idx is not None:
        emb.padding_idx = new_id[emb.padding_idx]
    # the config object is shared by the head and the body: mutate it, never replace it
    cfg.vocab_size = len(old_ids)
    cfg.pad_id = new_id[cfg.pad_id]
    special = len(old_ids) - len(seen) - len(chars)  # what the tokenizer kept unasked: specials not seen
    report = {"method": "prune-vocab", "vocab_before": V, "vocab_after": len(old_ids),
              "seen_in_data": len(seen), "kept_chars": len(chars), "kept_special": special,
              "keep_chars": keep_chars, "embedding_params_before": V * emb.embedding_dim,
              "embedding_params_after": emb.weight.numel()}
    log.info("prune-vocab: kept %d of %d tokens (%d seen in the data, %d single characters, %d special)",
             len(old_ids), V, len(seen), len(chars), special)
    return new_tokenizer, report
