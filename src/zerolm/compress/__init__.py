"""Compression transforms on a finished model: each changes the model in place from the
outside (module names and every other part of the model kept), records new per-layer
shapes in `model.config`, and returns a report. The model then saves and reloads as any
other (`zerolm.compress.save.save_compressed`, `zerolm.load`).

- `prune_heads`: remove attention heads (weight-norm or gradient importance);
- `prune_ffn`: remove feed-forward neurons (same rules);
- `low_rank`: SVD factorisation of chosen linears into `LowRankLinear`;
- `magnitude`: unstructured magnitude pruning (zeros stored dense: no speed-up).
"""

from __future__ import annotations

from zerolm.compress.importance import IMPORTANCE
from zerolm.compress.lowrank import factorise, low_rank
from zerolm.compress.magnitude import NO_SPEEDUP, magnitude
from zerolm.compress.prune import prune_ffn, prune_heads, remove_heads, remove_neurons
from zerolm.compress.save import save_compressed
from zerolm.compress.surgery import count_parameters

# the methods of `zerolm compress --method`
METHODS = ("prune-heads", "prune-ffn", "low-rank", "magnitude")

__all__ = ["IMPORTANCE", "METHODS", "NO_SPEEDUP", "count_parameters", "factorise", "low_rank", "magnitude",
           "prune_ffn", "prune_heads", "remove_heads", "remove_neurons", "save_compressed"]
