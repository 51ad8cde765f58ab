"""Sample order as a pure function of (seed, global sample index).

Global sample ``g`` is example ``perm(seed, g // N)[g % N]``: each epoch is a fresh permutation.
An optimizer step consumes the next B global samples ``[consumed, consumed + B)`` whatever the
number of processes; rank ``r`` of ``W`` takes every W-th of them. A run resumed at any world size
or batch size therefore continues with exactly the next samples, none lost or repeated.
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
