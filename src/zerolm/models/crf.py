"""Linear-chain conditional random field over tag sequences (Lafferty et al., 2001), as
used on top of neural taggers by Lample et al., "Neural Architectures for Named Entity
Recognition" (2016).

The score of a tag sequence y_1..y_n for emissions e (one score per position and tag) is

    start[y_1] + sum_t e[t, y_t] + sum_{t>1} transitions[y_{t-1}, y_t] + end[y_n]

and p(y | x) = exp(score(y)) / Z, where log Z sums over every tag sequence. The loss is
the negative log-likelihood log Z - score(gold), with log Z from the forward algorithm
(dynamic programming in log space, O(n C^2) instead of C^n); decoding is Viterbi (the
same recursion with max instead of logsumexp).

BIO constraints: an `I-X` may only follow `B-X` or `I-X`. `bio_constraints` turns label
names into masks of allowed transitions; a CRF built with them gives forbidden moves a
score of -10000, so they never win the Viterbi search and carry no probability mass in
the loss (exp(-10000) is exactly 0 in float32, while gradients stay finite, unlike -inf).

Shape letters: B batch, T positions (words), C tags.
"""

from __future__ import annotations

import torch
from torch import nn

IMPOSSIBLE = -1e4  # the score of a forbidden transition: never chosen, no probability mass


def bio_constraints(labels: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Allowed moves between IOB2 tags: (transitions (C, C) [from, to], start (C,), end (C,)),
    all bool. Forbidden: O -> I-X, B-X -> I-Y and I-X -> I-Y for X != Y, and starting with
    I-X. Every tag may end a sequence."""
    C = len(labels)
    kind = [lab[:2] if lab[:2] in ("B-", "I-") else "O" for lab in labels]
    etype = [lab[2:] if k != "O" else "" for lab, k in zip(labels, kind)]
    trans = torch.ones(C, C, dtype=torch.bool)
    for j in range(C):
        if kind[j] == "I-":
            for i in range(C):  # I-X continues only an entity of the same type
                trans[i, j] = kind[i] != "O" and etype[i] == etype[j]
    start = torch.tensor([k != "I-" for k in kind], dtype=torch.bool)
    end = torch.ones(C, dtype=torch.bool)
    return trans, start, end


class CRF(nn.Module):
    """Transition scores and start / end scores for `num_tags` tags.

    Both `nll` and `decode` take a mask (B, T) that is a left-aligned prefix of ones (a
    sequence's positions come first, then padding) with at least one position per row.
    """

    def __init__(self, num_tags: int,
                 constraints: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        if num_tags < 1:
            raise ValueError(f"a CRF needs at least one tag, got {num_tags}")
        self.num_tags = num_tags
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))  # [from, to]
        self.start = nn.Parameter(torch.empty(num_tags))
        self.end = nn.Parameter(torch.empty(num_tags))
        # small random scores, as pytorch-crf: the emissions dominate at first
        for p in (self.transitions, self.start, self.end):
            nn.init.uniform_(p, -0.1, 0.1)
        if constraints is None:
            constraints = (torch.ones(num_tags, num_tags, dtype=torch.bool),
                           torch.ones(num_tags, dtype=torch.bool), torch.ones(num_tags, dtype=torch.bool))
        trans_ok, start_ok, end_ok = constraints
        if trans_ok.shape != (num_tags, num_tags) or start_ok.shape != (num_tags,) or end_ok.shape != (num_tags,):
            raise ValueError(f"constraints must be ({num_tags}, {num_tags}), ({num_tags},), ({num_tags},) masks")
        # derived from the label names, not learnt: kept out of the state dict
        self.register_buffer("trans_ok", trans_ok.bool(), persistent=False)
        self.register_buffer("start_ok", start_ok.bool(), persistent=False)
        self.register_buffer("end_ok", end_ok.bool(), persistent=False)

    def _scores(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(transitions, start, end) in float32 with forbidden moves set to IMPOSSIBLE."""
        trans = self.transitions.float().masked_fill(~self.trans_ok, IMPOSSIBLE)  # (C, C)
        start = self.start.float().masked_fill(~self.start_ok, IMPOSSIBLE)  # (C,)
        end = self.end.float().masked_fill(~self.end_ok, IMPOSSIBLE)  # (C,)
        return trans, start, end

    def _check(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if emissions.dim() != 3 or emissions.shape[-1] != self.num_tags:
            raise ValueError(f"emissions must be (B, T, {self.num_tags}), got {tuple(emissions.shape)}")
        if mask.shape != emissions.shape[:2]:
            raise ValueError(f"mask {tuple(mask.shape)} does not match emissions {tuple(emissions.shape[:2])}")
        mask = mask.bool()
        if emissions.shape[1] == 0 or not bool(mask[:, 0].all()):
            raise ValueError("every sequence needs at least one position (mask[:, 0] all true)")
        return mask

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log Z (B,): the log of the summed exp-scores of every tag sequence (forward algorithm)."""
        mask = self._check(emissions, mask)
        trans, start, end = self._scores()
        em = emissions.float()
        alpha = start + em[:, 0]  # (B, C): log-sum of the scores of all prefixes ending in each tag
        for t in range(1, em.shape[1]):
            # (B, C_from, 1) + (C_from, C_to) -> sum out the previous tag -> (B, C_to)
            nxt = torch.logsumexp(alpha[:, :, None] + trans, dim=1) + em[:, t]
            alpha = torch.where(mask[:, t, None], nxt, alpha)  # padding carries the last value on
        return torch.logsumexp(alpha + end, dim=1)  # (B,)

    def score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The score (B,) of the given tag sequences (B, T); tags under padding are ignored."""
        mask = self._check(emissions, mask)
        trans, start, end = self._scores()
        em = emissions.float()
        tags = tags.masked_fill(~mask, 0)  # padding may hold -100
        at = em.gather(2, tags[:, :, None]).squeeze(2)  # (B, T): emission of each chosen tag
        s = start[tags[:, 0]] + at[:, 0]  # (B,)
        if tags.shape[1] > 1:
            steps = trans[tags[:, :-1], tags[:, 1:]] + at[:, 1:]  # (B, T - 1)
            s = s + (steps * mask[:, 1:]).sum(1)
        last = tags.gather(1, (mask.sum(1, keepdim=True) - 1)).squeeze(1)  # (B,): final tag
        return s + end[last]

    def nll(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood (B,) of `tags` (B, T) given `emissions` (B, T, C)."""
        return self.log_partition(emissions, mask) - self.score(emissions, tags, mask)

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """The highest-scoring tag sequence of each row (Viterbi), as many tags as the row
        has positions; with BIO constraints the result never contains a forbidden move."""
        mask = self._check(emissions, mask)
        trans, start, end = self._scores()
        em = emissions.float()
        best = start + em[:, 0]  # (B, C): best score of a prefix ending in each tag
        back = []  # per step t >= 1: (B, C) the best previous tag for each current tag
        for t in range(1, em.shape[1]):
            cand = best[:, :, None] + trans  # (B, C_from, C_to)
            # amax + argmax, not max(dim): on a multi-threaded CPU max(dim) of a small tensor
            # costs milliseconds (torch 2.x), two orders of magnitude more
            top, arg = cand.amax(1), cand.argmax(1)  # (B, C_to)
            best = torch.where(mask[:, t, None], top + em[:, t], best)
            back.append(arg)
        best = best + end
        lengths = mask.sum(1).tolist()
        last = best.argmax(1).tolist()
        back_rows = torch.stack(back, 1).tolist() if back else None  # (B, T - 1, C)
        out = []
        for b, (n, tag) in enumerate(zip(lengths, last)):
            path = [tag]
            for t in range(n - 2, -1, -1):  # back[t] links position t + 1 to position t
                tag = back_rows[b][t][tag]
                path.append(tag)
            out.append(path[::-1])
        return out
