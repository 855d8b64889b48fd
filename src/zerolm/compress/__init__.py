"""Compression transforms on a finished model: each changes the model in place from the
outside (module names and every other part of the model kept), records new per-layer
shapes in `model.config`, and returns a report. The model then saves and reloads as any
other (`zerolm.compress.save.save_compressed`, `zerolm.load`).

- `prune_heads`: remove attention heads (weight-norm or gradient importance);
- `prune_ffn`: remove feed-forward neurons (same rules);
- `low_rank`: SVD factorisation of chosen linears into `LowRankLinear`;
- `magnitude`: unstructured magnitude pruning (zeros stored dense: no speed-up);
- `int8_weight`: int8 weights + per-channel scales, dequantized per call (smaller, slower);
- `int8_dynamic`: int8 weights and per-token int8 activations (smaller and faster on CPU);
- `prune_vocab`: keep the token embedding rows of the word pieces a task's data uses, with a
  tokenizer of those tokens (returned: the model now reads its ids); before int8.

Then `recover` (compress.recover) trains a pruned / factorised model on its task's data,
distilling from the original, through the one training loop (handed in by the caller: compress
does not import train); `report` (compress.report) measures variants against the original
(dev metric, size, latency) in one table and plot.
"""

from __future__ import annotations

from zerolm.compress.importance import IMPORTANCE
from zerolm.compress.lowrank import factorise, low_rank
from zerolm.compress.magnitude import NO_SPEEDUP, magnitude
from zerolm.compress.prune import prune_ffn, prune_heads, remove_heads, remove_neurons
from zerolm.compress.quant import SLOWER, int8_dynamic, int8_weight
from zerolm.compress.save import save_compressed
from zerolm.compress.surgery import count_parameters
from zerolm.compress.vocab import prune_vocab

# the methods of `zerolm compress --method`
METHODS = ("prune-heads", "prune-ffn", "low-rank", "magnitude", "int8-weight", "int8-dynamic", "prune-vocab")

__all__ = ["IMPORTANCE", "METHODS", "NO_SPEEDUP", "SLOWER", "count_parameters", "factorise", "int8_dynamic",
           "int8_weight", "low_rank", "magnitude", "prune_ffn", "prune_heads", "prune_vocab", "remove_heads",
           "remove_neurons", "save_compressed"]
