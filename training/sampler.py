"""Sample order as a pure function of (seed, global sample index), and batches built from it.

Global sample ``g`` is example ``perm(seed, g // N)[g % N]``: each epoch is a fresh permutation.
Optimizer step ``s`` consumes global samples ``[s*B, (s+1)*B)`` whatever the number of processes;
rank ``r`` of ``W`` takes every W-th of them. A run resumed at any world size therefore continues
with exactly the next samples, none lost or repeated.
"""

from __future__ import annotations

import numpy as np


class GlobalOrder:
    def __init__(self, num_examples: int, seed: int):
        if num_examples <= 0:
            raise ValueError("no training examples")
        self.n, self.seed = num_examples, seed
        self._epoch, self._perm = -1, np.arange(0)

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
            self._epoch, self._perm = epoch, rng.permutation(self.n)
        return self._perm

    def example(self, g: int) -> int:
        return int(self.permutation(g // self.n)[g % self.n])

    def step_examples(self, step: int, global_batch: int, rank: int, world: int) -> list[int]:
        """The examples rank ``rank`` trains on at optimizer step ``step``."""
        start = step * global_batch
        return [self.example(g) for g in range(start + rank, start + global_batch, world)]


def micro_batches(examples: list[int], lengths: np.ndarray, count: int) -> list[list[int]]:
    """Split a rank's examples into ``count`` micro-batches of similar lengths (less padding).

    Sorted by length, then cut into contiguous groups; every rank makes the same number of
    micro-batches so their gradient synchronisations line up (a group may be empty).
    """
    order = sorted(examples, key=lambda i: (int(lengths[i]), i))
    size = -(-len(order) // count) if order else 0
    return [order[k * size : (k + 1) * size] for k in range(count)]
