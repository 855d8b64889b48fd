"""Task heads on a pretrained body: the body keeps its module names, the head is new.

A head takes any body (`zerolm.models.body.Body`), or a pretraining model whose body it
keeps (the MLM / LM heads are not needed for a task). It reads only the body interface:
`forward(...).last_hidden_state` and `pool`.

Shape letters: B batch, T sequence length, D d_model, C classes (or tags).
"""

from __future__ import annotations

import torch
from torch import nn

from zerolm.models import body_of
from zerolm.models.crf import CRF


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
        if pooling not in ("first", "mean"):
            raise ValueError(f"pooling must be 'first' or 'mean', got {pooling!r}")
        self.body = body = body_of(body)
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
        h = self.body(input_ids, attention_mask=attention_mask,
                      token_type_ids=token_type_ids).last_hidden_state  # (B, T, D)
        if self.pooling == "mean":
            m = (attention_mask if attention_mask is not None else torch.ones_like(input_ids))
            m = m[:, :, None].to(h.dtype)  # (B, T, 1)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, D)
        else:
            pooled = self.body.pool(h, attention_mask)  # (B, D)
        return self.classifier(self.dropout(pooled))


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
        h = self.body(input_ids, attention_mask=attention_mask,
                      token_type_ids=token_type_ids).last_hidden_state  # (B, T, D)
        return self.classifier(self.dropout(h))
