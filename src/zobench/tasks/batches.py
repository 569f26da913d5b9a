"""The order in which a run visits its examples: training batches (``BatchStream``) and the
length-sorted evaluation batches every evaluator uses (``eval_batches``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..engine.directions import mix_seed


class BatchStream:
    """Training batches: consecutive slices of epoch permutations; epoch e is
    ``RandomState(mix_seed(seed, e)).permutation(n)``, a pure function of (seed, epoch), so the
    position (epoch, offset) is all a checkpoint needs. A batch that runs past the end of an epoch
    is completed from the next one."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int = 0, offset: int = 0) -> None:
        if n <= 0:
            raise ValueError("a batch stream needs at least one example")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.offset = epoch, offset
        self._perm = self._permutation(epoch)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.RandomState(mix_seed(self.seed, epoch) % 2**32).permutation(self.n)

    def next(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.batch_size:
            if self.offset == self.n:
                self.epoch, self.offset = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
            take = min(self.batch_size - len(out), self.n - self.offset)
            out.extend(self._perm[self.offset : self.offset + take].tolist())
            self.offset += take
        return out


def eval_batches(examples: Sequence, batch_size: int) -> list[list[int]]:
    """The evaluation batches (example indices) of one process: examples sorted by ``length``
    (stable, so ties keep their order; less padding per batch), cut into runs of ``batch_size``.
    The single-process evaluators (``models/causal.py::evaluate_accuracy``,
    ``GenerationObjective.evaluate``) and the sharded one (``dist/evaluation.py``) all batch by
    this one function, so a sharded evaluation pads every batch as one process does and gives
    the same predictions, to the bit."""
    order = sorted(range(len(examples)), key=lambda i: examples[i].length)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
