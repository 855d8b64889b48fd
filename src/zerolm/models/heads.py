"""Task heads on a pretrained body: the body keeps its module names, the head is new.

Shape letters: B batch, T sequence length, D d_model, C classes (or tags).
"""

from __future__ import annotations

import torch
from torch import nn

from zerolm.models.bert import Bert, BertForPreTraining
from zerolm.models.crf import CRF
from zerolm.models.gpt import GPT


def _encoder(body: nn.Module, head: str) -> nn.Module:
    """The body a head sits on: a Bert (without its pretraining heads) or a GPT."""
    if isinstance(body, BertForPreTraining):
        body = body.bert  # the MLM / NSP heads are not needed for fine-tuning
    if not isinstance(body, (Bert, GPT)):
        raise TypeError(f"{head} needs a Bert or GPT body, got {type(body).__name__}")
    return body


class SequenceClassifier(nn.Module):
    """Sentence (pair) classification: a pooled vector -> dropout -> linear.

    `pooling` "first": BERT's pooled [CLS] (tanh dense; the [CLS] state when the body has
    no pooler), or a GPT's state at the last real token (the only one that saw them all).
    "mean": the mean of the final states over real tokens, the pooling sentence-embedding
    models such as all-MiniLM-L6-v2 were trained with (their [CLS] pooler is untrained).
    """

    def __init__(self, body: nn.Module, num_labels: int, dropout: float | None = None,
                 pooling: str = "first"):
        super().__init__()
        if pooling not in ("first", "mean"):
            raise ValueError(f"pooling must be 'first' or 'mean', got {pooling!r}")
        self.body = body = _encoder(body, "SequenceClassifier")
        self.config = body.config
        self.pooling = pooling
        self.dropout = nn.Dropout(self.config.dropout if dropout is None else dropout)
        self.classifier = nn.Linear(self.config.d_model, num_labels)
        nn.init.normal_(self.classifier.weight, std=self.config.init_std)
        nn.init.zeros_(self.classifier.bias)

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T)
        token_type_ids: torch.Tensor | None = None,  # (B, T)
    ) -> torch.Tensor:  # logits (B, C)
        if isinstance(self.body, Bert):
            h = self.body(input_ids, attention_mask, token_type_ids)  # (B, T, D)
        else:
            h = self.body.hidden_states(input_ids, attention_mask=attention_mask)  # (B, T, D)
        if self.pooling == "mean":
            m = (attention_mask if attention_mask is not None else torch.ones_like(input_ids))
            m = m[:, :, None].to(h.dtype)  # (B, T, 1)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, D)
        elif isinstance(self.body, Bert):
            pooled = self.body.pool(h) if self.body.pooler is not None else h[:, 0]
        else:
            last = (attention_mask.sum(1) - 1 if attention_mask is not None
                    else torch.full((h.shape[0],), h.shape[1] - 1, device=h.device))
            pooled = h[torch.arange(h.shape[0], device=h.device), last]  # (B, D)
        return self.classifier(self.dropout(pooled))


class TokenClassifier(nn.Module):
    """Tagging: each token's final hidden state -> dropout -> linear, one score per tag.

    With a `crf`, the scores are the CRF's emissions: the task gathers those of each
    word's first sub-token and calls `self.crf` for the loss (`nll`) and the decoding
    (`decode`); `forward` stays the same either way. A GPT body sees only the left context
    of each token (causal attention), so it tags worse than a bidirectional Bert.
    """

    def __init__(self, body: nn.Module, num_labels: int, dropout: float | None = None,
                 crf: CRF | None = None):
        super().__init__()
        self.body = body = _encoder(body, "TokenClassifier")
        self.config = body.config
        self.dropout = nn.Dropout(self.config.dropout if dropout is None else dropout)
        self.classifier = nn.Linear(self.config.d_model, num_labels)
        nn.init.normal_(self.classifier.weight, std=self.config.init_std)
        nn.init.zeros_(self.classifier.bias)
        if crf is not None and crf.num_tags != num_labels:
            raise ValueError(f"the CRF has {crf.num_tags} tags but the head {num_labels} labels")
        self.crf = crf  # the strategies always train modules named `classifier` and `crf`

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T)
        token_type_ids: torch.Tensor | None = None,  # (B, T)
    ) -> torch.Tensor:  # per-token tag scores (B, T, C)
        if isinstance(self.body, Bert):
            h = self.body(input_ids, attention_mask, token_type_ids)  # (B, T, D)
        else:
            h = self.body.hidden_states(input_ids, attention_mask=attention_mask)  # (B, T, D)
        return self.classifier(self.dropout(h))
