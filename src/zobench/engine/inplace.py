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
from .directions import Direction
from .provider import Provider, TorchProvider


class InPlaceEngine(Engine):
    """MeZO's in-place perturbation; usable without a model (any list of tensors).

    This class decides which moves a step makes; its provider makes them: ``move``
    (θ ← θ + delta·z) and ``sweep`` (the fused restore+update θ ← (1 - decay)·(θ + undo·z) + coeff·z).

    Args:
        provider: the backend's arithmetic (default: ``TorchProvider``; Triton's sweeps are
            ``engine/triton/engines.py::TritonProvider``).
    """

    exact_restore = False

    def __init__(self, provider: Provider | None = None) -> None:
        self.provider = TorchProvider() if provider is None else provider
        self._applied: dict[int, tuple[torch.Tensor, Direction, float]] = {}  # pid -> (p, z's direction, scale)

    @torch.no_grad()
    def perturb(self, params: ZOParams, direction: Direction, scale: float) -> None:
        with self.timed(), self.provider.z_scope():
            for pid, p in params:
                current = self._applied.get(pid)
                if current is not None and current[1] is not direction:
                    self.provider.move(p, pid, current[1], -current[2])
                    current = None
                delta = scale - (current[2] if current is not None else 0.0)
                # +ε then -ε costs one sweep of -2ε, as in MeZO (3 sweeps per estimate, not 4)
                self.provider.move(p, pid, direction, delta)
                self._applied[pid] = (p, direction, scale)

    @torch.no_grad()
    def restore(self, params: ZOParams) -> None:
        with self.timed(), self.provider.z_scope():
            for pid, _ in params:
                current = self._applied.pop(pid, None)
                if current is not None:
                    p, direction, scale = current
                    self.provider.move(p, pid, direction, -scale)

    def _take_undo(self, pid: int, p: torch.Tensor, direction: Direction) -> float:
        """Forget parameter ``pid``'s applied perturbation and return the scale that removes it
        within a fused sweep along ``direction`` (a perturbation along another z is removed
        here, by its own sweep: it cannot be fused)."""
        current = self._applied.pop(pid, None)
        if current is not None and current[1] is not direction:
            self.provider.move(p, pid, current[1], -current[2])
            current = None
        return -current[2] if current is not None else 0.0

    @torch.no_grad()
    def restore_and_update(self, params: ZOParams, direction: Direction, coeff: float, decay: float = 0.0) -> None:
        """One sweep, one z per parameter: the same operations in the same order as
        ``restore`` then ``update``, so the result is bit-identical to the unfused pair (on the
        torch provider; Triton's sweep rounds once where the pair rounds twice)."""
        with self.timed(), self.provider.z_scope():
            for pid, p in params:
                undo = self._take_undo(pid, p, direction)
                if undo != 0.0 or decay != 0.0 or coeff != 0.0:
                    self.provider.sweep(p, pid, direction, undo, decay, coeff)
