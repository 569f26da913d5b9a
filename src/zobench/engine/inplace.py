"""In-place perturbation (MeZO's semantics): the weights themselves are moved.

θ → θ+εz → θ-εz → θ, each move one sweep over the parameters with z regenerated from its seed
(Malladi et al. 2023, Alg. 1). Floating-point addition is not invertible: fl(fl(θ+εz) - εz) ≠ θ
whenever the rounding of θ+εz lost bits of θ (about half the elements of a N(0, 0.02²) fp32 weight
after MeZO's +ε, -2ε, +ε sequence with ε=1e-3, and as many in bf16/fp16). So in-place mode drifts
by a few ulps per step, as the authors' code does; ``virtual.py`` is the exact alternative.
"""

from __future__ import annotations

import torch

from .base import Engine, ZOParams
from .directions import Direction, add_z_, z_pieces


class InPlaceEngine(Engine):
    """MeZO's in-place perturbation; usable without a model (any list of tensors).

    Backends supply two primitives: ``_move`` (θ ← θ + delta·z) and ``_sweep`` (the fused
    restore+update θ ← (1 - decay)·(θ + undo·z) + coeff·z)."""

    exact_restore = False

    def __init__(self) -> None:
        self._applied: dict[int, tuple[torch.Tensor, Direction, float]] = {}  # pid -> (p, z's direction, scale)

    @torch.no_grad()
    def perturb(self, params: ZOParams, direction: Direction, scale: float) -> None:
        with self._timed():
            for pid, p in params:
                current = self._applied.get(pid)
                if current is not None and current[1] is not direction:
                    self._move(pid, p, current[1], -current[2])
                    current = None
                delta = scale - (current[2] if current is not None else 0.0)
                # +ε then -ε costs one sweep of -2ε, as in MeZO (3 sweeps per estimate, not 4)
                self._move(pid, p, direction, delta)
                self._applied[pid] = (p, direction, scale)

    @torch.no_grad()
    def restore(self, params: ZOParams) -> None:
        with self._timed():
            for pid, _ in params:
                current = self._applied.pop(pid, None)
                if current is not None:
                    p, direction, scale = current
                    self._move(pid, p, direction, -scale)

    def _take_undo(self, pid: int, p: torch.Tensor, direction: Direction) -> float:
        """Forget parameter ``pid``'s applied perturbation and return the scale that removes it
        within a fused sweep along ``direction`` (a perturbation along another z is removed
        here, by its own sweep: it cannot be fused)."""
        current = self._applied.pop(pid, None)
        if current is not None and current[1] is not direction:
            self._move(pid, p, current[1], -current[2])
            current = None
        return -current[2] if current is not None else 0.0

    @torch.no_grad()
    def restore_and_update(self, params: ZOParams, direction: Direction, coeff: float, decay: float = 0.0) -> None:
        """One sweep, one z per parameter: the same operations in the same order as
        ``restore`` then ``update``, so the result is bit-identical to the unfused pair."""
        with self._timed():
            for pid, p in params:
                undo = self._take_undo(pid, p, direction)
                if undo != 0.0 or decay != 0.0 or coeff != 0.0:
                    self._sweep(pid, p, direction, undo, decay, coeff)

    def _move(self, pid: int, p: torch.Tensor, direction: Direction, delta: float) -> None:
        """θ ← θ + delta·z (z cast to θ's dtype, one rounding)."""
        if delta != 0.0:
            add_z_(p, pid, direction, delta)

    def _sweep(self, pid: int, p: torch.Tensor, direction: Direction, undo: float, decay: float, coeff: float) -> None:
        """θ ← (1 - decay)·(θ + undo·z) + coeff·z, piece by piece (elementwise: the pieces give the
        whole-tensor bits), each term skipped when zero so lr=0 writes nothing."""
        for target, z in z_pieces(p, pid, direction):
            if undo != 0.0:
                target.add_(z, alpha=undo)
            if decay != 0.0:
                target.mul_(1.0 - decay)
            if coeff != 0.0:
                target.add_(z, alpha=coeff)
