"""Length-bucketed batches for fine-tuning data, shared by every labelled task.

Examples are tokenized once; each epoch is a seeded shuffle in which every batch holds
examples of similar length (sorted within windows of 50 batches), so dynamic padding
wastes little. `batch(step, index)` is a pure function of (seed, step, index), which is
what the one training loop needs for exact resume and data parallelism.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch


class BucketedBatches:
    """Subclasses set `self.lengths` (tokens per example) and implement `collate(indices)`."""

    window_batches = 50  # batches sorted together: larger pads less, smaller mixes lengths more

    def __init__(self, lengths: Sequence[int], *, batch_size: int, seed: int, micro_per_step: int = 1):
        if not len(lengths):
            raise ValueError("no examples to batch")
        self.lengths = np.asarray(lengths)
        self.batch_size, self.seed = batch_size, seed
        self.micro_per_step = micro_per_step  # micro-batches per optimizer step over all processes
        self.n_batches = -(-len(self.lengths) // batch_size)
        self._epoch_cache: tuple[int, list[np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.lengths)

    def collate(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _epoch(self, epoch: int) -> list[np.ndarray]:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            perm = rng.permutation(len(self.lengths))
            lengths = self.lengths[perm]
            window = self.batch_size * self.window_batches
            batches = []
            for s in range(0, len(perm), window):
                chunk = perm[s:s + window][np.argsort(-lengths[s:s + window], kind="stable")]
                batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
            rng.shuffle(batches)
            self._epoch_cache = (epoch, batches)
        return self._epoch_cache[1]

    def steps_per_epoch(self) -> int:
        return max(self.n_batches // self.micro_per_step, 1)

    def batch(self, step: int, index: int) -> dict[str, torch.Tensor]:
        pos = step * self.micro_per_step + index
        epoch, j = divmod(pos, self.n_batches)
        return self.collate(self._epoch(epoch)[j])

    def eval_batches(self, max_batches: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Every example once, longest first; `index` holds each row's position in the data."""
        order = np.argsort(-self.lengths, kind="stable")
        for b, s in enumerate(range(0, len(order), self.batch_size)):
            if max_batches and b >= max_batches:
                return
            batch = self.collate(order[s:s + self.batch_size])
            batch["index"] = torch.as_tensor(order[s:s + self.batch_size])
            yield batch
