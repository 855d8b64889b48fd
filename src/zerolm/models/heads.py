"""Task heads on a pretrained body: the body keeps its module names, the head is new.

A head takes any body (`zerolm.models.body.Body`), or a pretraining model whose body it
keeps (the MLM / LM heads are not needed for a task). It reads only the body interface:
`forward(...).last_hidden_state` and `pool`.

Shape letters: B batch, T sequence length, D d_model, C classes (or tags), I intents.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from zerolm.models import body_of
from zerolm.models.crf import CRF

IGNORE_INDEX = -100  # label of positions without a loss (other sub-tokens, special tokens, padding)



def head_linear(config, n_out: int) -> nn.Linear:
    """A task head's linear d_model -> n_out, initialised as the body's linears are."""
    lin = nn.Linear(config.d_model, n_out)
    nn.init.normal_(lin.weight, std=config.init_std)
    nn.init.zeros_(lin.bias)
    return lin

class SequenceClassifier(nn.Module):
    """Sentence (pair) classification: a pooled vector -> dropout -> linear.

    `pooling` "first": the body's own sentence vector (`Body.pool`: BERT's pooled [CLS],
    a GPT's state at the last real token). "mean": the mean of the final states over real
    tokens, the pooling sentence-embedding models such as all-MiniLM-L6-v2 were trained
    with (their [CLS] pooler is untrained).
    """

    def __init__(self, body: nn.Module, num_labels: int, dropout: float | None = None,
                 pooling: str = "first"):
        super().__init__()
        check_pooling(pooling)
        self.body = body = body_of(body)
        self.config = body.config
        self.pooling = pooling
        self.dropout = nn.Dropout(self.config.dropout if dropout is None else dropout)
        self.classifier = head_linear(self.config, num_labels)

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T)
        token_type_ids: torch.Tensor | None = None,  # (B, T)
    ) -> torch.Tensor:  # logits (B, C)
        h = self.body(input_ids, attention_mask=attention_mask,
                      token_type_ids=token_type_ids).last_hidden_state  # (B, T, D)
        return self.head(h, attention_mask)

    def head(self, h: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, C) from the body's final states (B, T, D): what forward adds to the body
        (callers that also need the body's other outputs run the body themselves)."""
        return self.classifier(self.dropout(pool_states(self.body, h, attention_mask, self.pooling)))


def check_pooling(pooling: str) -> None:
    if pooling not in ("first", "mean"):
        raise ValueError(f"pooling must be 'first' or 'mean', got {pooling!r}")


def pool_states(body: nn.Module, h: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """The sentence vector (B, D) of final states (B, T, D): "first" the body's own
    (`Body.pool`), "mean" the mean over real tokens."""
    if pooling == "mean":
        m = (attention_mask if attention_mask is not None else torch.ones(h.shape[:2], device=h.device))
        m = m[:, :, None].to(h.dtype)  # (B, T, 1)
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, D)
    return body.pool(h, attention_mask)  # (B, D)


class TokenClassifier(nn.Module):
    """Tagging: each token's final hidden state -> dropout -> linear, one score per tag.

    With a `crf`, the scores are the CRF's emissions: the task gathers those of each
    word's first sub-token and calls `self.crf` for the loss (`nll`) and the decoding
    (`decode`); `forward` stays the same either way. A causal body sees only the left
    context of each token, so it tags worse than a bidirectional one.
    """

    def __init__(self, body: nn.Module, num_labels: int, dropout: float | None = None,
                 crf: CRF | None = None):
        super().__init__()
        self.body = body = body_of(body)
        self.config = body.config
        self.dropout = nn.Dropout(self.config.dropout if dropout is None else dropout)
        self.classifier = head_linear(self.config, num_labels)
        if crf is not None and crf.num_tags != num_labels:
            raise ValueError(f"the CRF has {crf.num_tags} tags but the head {num_labels} labels")
        self.crf = crf  # the strategies always train modules named `classifier` and `crf`

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T)
        token_type_ids: torch.Tensor | None = None,  # (B, T)
        labels: torch.Tensor | None = None,  # (B, T) tag ids at first sub-tokens
        word_ids: torch.Tensor | None = None,  # (B, T) word index of each token, -1 elsewhere
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Per-token tag scores (B, T, C); with `labels` and `word_ids`, also the mean loss
        per word first: (loss, scores). The loss (the CRF's too) is computed here, inside
        forward, so that data parallelism sees every parameter it uses."""
        h = self.body(input_ids, attention_mask=attention_mask,
                      token_type_ids=token_type_ids).last_hidden_state  # (B, T, D)
        scores = self.head(h, attention_mask)
        if labels is None:
            return scores
        if word_ids is None:
            raise ValueError("a tagging loss needs word_ids beside labels")
        total, n = word_loss_sum(scores.float(), labels, word_ids, self.crf)
        return total / max(n, 1), scores

    def head(self, h: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Tag scores (B, T, C) from the body's final states (B, T, D)."""
        return self.classifier(self.dropout(h))


class JointOutput(NamedTuple):
    intent_logits: torch.Tensor  # (B, I)
    slot_scores: torch.Tensor  # (B, T, C): per-token tag scores (the CRF's emissions with a CRF)
    intent_loss: torch.Tensor | None = None  # mean cross-entropy over utterances with a known intent
    slot_loss: torch.Tensor | None = None  # mean per word (cross-entropy, or the CRF's NLL)


class IntentSlotClassifier(nn.Module):
    """Joint intent detection and slot filling (Chen et al., "BERT for Joint Intent
    Classification and Slot Filling", 2019): one body, whose pooled vector gives the
    intent logits (as SequenceClassifier, same `pooling`) and whose token states give the
    slot-tag scores (as TokenClassifier: read at each word's first sub-token, optionally
    scored as a sequence by a `crf`).

    Both linears live under `classifier` (`classifier.intent`, `classifier.slot`) and the
    CRF under `crf`: the names every fine-tuning strategy trains as the task head.
    """

    def __init__(self, body: nn.Module, num_intents: int, num_tags: int, dropout: float | None = None,
                 pooling: str = "first", crf: CRF | None = None):
        super().__init__()
        check_pooling(pooling)
        self.body = body = body_of(body)
        self.config = body.config
        self.pooling = pooling
        self.dropout = nn.Dropout(self.config.dropout if dropout is None else dropout)
        self.classifier = nn.ModuleDict({"intent": head_linear(self.config, num_intents),
                                         "slot": head_linear(self.config, num_tags)})
        if crf is not None and crf.num_tags != num_tags:
            raise ValueError(f"the CRF has {crf.num_tags} tags but the slot head {num_tags} labels")
        self.crf = crf

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T)
        token_type_ids: torch.Tensor | None = None,  # (B, T)
        intent_labels: torch.Tensor | None = None,  # (B,) intent ids; IGNORE_INDEX: no loss
        labels: torch.Tensor | None = None,  # (B, T) tag ids at first sub-tokens
        word_ids: torch.Tensor | None = None,  # (B, T) word index of each token, -1 elsewhere
    ) -> JointOutput:
        """The intent logits and slot scores; with `intent_labels`, `labels` and `word_ids`
        also both mean losses, computed here, inside forward, so that data parallelism sees
        every parameter they use (the task weighs them)."""
        h = self.body(input_ids, attention_mask=attention_mask,
                      token_type_ids=token_type_ids).last_hidden_state  # (B, T, D)
        intent, slots = self.head(h, attention_mask)
        if intent_labels is None and labels is None:
            return JointOutput(intent, slots)
        if intent_labels is None or labels is None or word_ids is None:
            raise ValueError("a joint loss needs intent_labels, labels and word_ids")
        n_intents = (intent_labels != IGNORE_INDEX).sum().clamp(min=1)
        intent_loss = F.cross_entropy(intent.float(), intent_labels, ignore_index=IGNORE_INDEX,
                                      reduction="sum") / n_intents
        total, n = word_loss_sum(slots.float(), labels, word_ids, self.crf)
        return JointOutput(intent, slots, intent_loss, total / max(n, 1))

    def head(self, h: torch.Tensor, attention_mask: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(intent logits (B, I), slot scores (B, T, C)) from the body's final states (B, T, D)."""
        pooled = pool_states(self.body, h, attention_mask, self.pooling)  # (B, D)
        return self.classifier["intent"](self.dropout(pooled)), self.classifier["slot"](self.dropout(h))


def first_subtokens(word_ids: torch.Tensor) -> torch.Tensor:
    """bool (B, T): the first token of each word, given each token's word index (-1 for
    special tokens and padding)."""
    prev = F.pad(word_ids[:, :-1], (1, 0), value=-1)  # (B, T): the word of the token before
    return (word_ids >= 0) & (word_ids != prev)


def pack_words(scores: torch.Tensor, word_ids: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather the first-sub-token rows of `scores` (B, T, C) into word-level sequences.

    Returns (packed (B, W, C), mask (B, W), words (B, W), positions (B, W)): a row's
    words come first, in order, then padding (mask False, words -1); `words` holds the
    word index of each packed position and `positions` the token it came from.
    """
    first = first_subtokens(word_ids)  # (B, T)
    counts = first.sum(1)  # (B,)
    W = max(int(counts.max()), 1) if counts.numel() else 1
    # a stable sort on "not first" moves the first sub-tokens to the front, in order
    positions = torch.sort((~first).to(torch.uint8), dim=1, stable=True).indices[:, :W]  # (B, W)
    mask = torch.arange(W, device=scores.device)[None] < counts[:, None]  # (B, W)
    packed = scores.gather(1, positions[:, :, None].expand(-1, -1, scores.shape[-1]))  # (B, W, C)
    words = word_ids.gather(1, positions).masked_fill(~mask, -1)  # (B, W)
    return packed, mask, words, positions


def word_loss_sum(scores: torch.Tensor, labels: torch.Tensor, word_ids: torch.Tensor,
                  crf: CRF | None = None) -> tuple[torch.Tensor, int]:
    """(summed loss, number of words it covers) of tag scores (B, T, C): cross-entropy at
    each word's first sub-token, or with a CRF the negative log-likelihood of each
    sentence's word-level tag sequence. `labels` (B, T) hold tag ids at first sub-tokens,
    IGNORE_INDEX elsewhere."""
    if crf is None:
        loss = F.cross_entropy(scores.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX,
                               reduction="sum")
        return loss, int((labels != IGNORE_INDEX).sum())
    packed, mask, _, positions = pack_words(scores, word_ids)
    tags = labels.gather(1, positions).masked_fill(~mask, 0)  # (B, W)
    keep = mask[:, 0]  # sentences with at least one word that has a token
    if not bool(keep.any()):
        # zero, but through every CRF parameter: each one takes part in backward
        return scores.sum() * 0.0 + sum(p.sum() for p in crf.parameters()) * 0.0, 0
    nll = crf.nll(packed[keep], tags[keep], mask[keep])  # (B',)
    return nll.sum(), int(mask.sum())
