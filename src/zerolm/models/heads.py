"""Task heads on a pretrained body: the body keeps its module names, the head is new.

Shape letters: B batch, T sequence length, D d_model, C classes.
"""

from __future__ import annotations

import torch
from torch import nn

from zerolm.models.bert import Bert, BertForPreTraining
from zerolm.models.gpt import GPT


class SequenceClassifier(nn.Module):
    """Sentence (pair) classification: BERT's pooled [CLS] (or the [CLS] state when the
    body has no pooler), or a GPT's state at the last real token, -> dropout -> linear."""

    def __init__(self, body: nn.Module, num_labels: int, dropout: float | None = None):
        super().__init__()
        if isinstance(body, BertForPreTraining):
            body = body.bert  # the MLM / NSP heads are not needed for classification
        if not isinstance(body, (Bert, GPT)):
            raise TypeError(f"SequenceClassifier needs a Bert or GPT body, got {type(body).__name__}")
        self.body = body
        self.config = body.config
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
            pooled = self.body.pool(h) if self.body.pooler is not None else h[:, 0]
        else:
            h = self.body.hidden_states(input_ids, attention_mask=attention_mask)  # (B, T, D)
            last = (attention_mask.sum(1) - 1 if attention_mask is not None
                    else torch.full((h.shape[0],), h.shape[1] - 1, device=h.device))
            pooled = h[torch.arange(h.shape[0], device=h.device), last]  # (B, D)
        return self.classifier(self.dropout(pooled))
