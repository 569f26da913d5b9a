"""Torch reference backend: in-place and virtual perturbation modes.

In-place (MeZO semantics): the weights themselves are moved, θ → θ+εz → θ-εz → θ, each move one
sweep over the parameters with z regenerated from its seed. Floating-point addition is not
invertible: fl(fl(θ+εz) - εz) ≠ θ whenever the rounding of θ+εz lost bits of θ (measured: 46% of
elements of a N(0, 0.02²) fp32 weight differ after MeZO's +ε, -2ε, +ε sequence with ε=1e-3, and as
many in bf16/fp16). So in-place mode drifts by a few ulps per step, as the authors' code does.

Virtual (exact): the stored weights are never modified during an estimate. A forward pre-hook on
every module that owns trainable parameters swaps in θ + scale·z (computed with the same
arithmetic as in-place mode) for the duration of that module's forward and puts the original
tensor back afterwards. Restoration is exact in every dtype; the extra memory is one module's
parameters at a time (the largest is usually the embedding / LM head).
"""

from __future__ import annotations


import torch
from torch import nn

from .base import Engine, ZOParams
from .directions import Direction


def perturbed_value(p: torch.Tensor, pid: int, direction: Direction, scale: float) -> torch.Tensor:
    """θ + scale·z in θ's dtype: the one formula both modes use, so they agree bit for bit."""
    return torch.add(p, direction.sample(pid, p).to(p.dtype), alpha=scale)


class InPlaceEngine(Engine):
    """MeZO's in-place perturbation; usable without a model (any list of tensors)."""

    exact_restore = False

    def __init__(self) -> None:
        self._applied: dict[int, tuple[torch.Tensor, Direction, float]] = {}

    @torch.no_grad()
    def perturb(self, params: ZOParams, direction: Direction, scale: float) -> None:
        with self._timed():
            self._perturb(params, direction, scale)

    def _perturb(self, params: ZOParams, direction: Direction, scale: float) -> None:
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

    @torch.no_grad()
    def restore_and_update(self, params: ZOParams, direction: Direction, coeff: float, decay: float = 0.0) -> None:
        """One sweep, one z per parameter: the same operations in the same order as
        ``restore`` then ``update``, so the result is bit-identical to the unfused pair."""
        with self._timed():
            for pid, p in params:
                current = self._applied.pop(pid, None)
                if current is not None and current[1] is not direction:  # a different z: not fusable
                    self._move(pid, p, current[1], -current[2])
                    current = None
                undo = -current[2] if current is not None else 0.0
                if undo == 0.0 and decay == 0.0 and coeff == 0.0:
                    continue
                z = direction.sample(pid, p).to(p.dtype)
                if undo != 0.0:
                    p.add_(z, alpha=undo)
                if decay != 0.0:
                    p.mul_(1.0 - decay)
                if coeff != 0.0:
                    p.add_(z, alpha=coeff)

    @staticmethod
    def _move(pid: int, p: torch.Tensor, direction: Direction, delta: float) -> None:
        if delta != 0.0:
            p.add_(direction.sample(pid, p).to(p.dtype), alpha=delta)


class VirtualEngine(Engine):
    """Exact perturbation: weights are swapped for θ + scale·z only inside their module's forward."""

    exact_restore = True

    def __init__(self, model: nn.Module) -> None:
        # parameters are tracked by id(): holding the model keeps them alive, so an id can never
        # be reused by another tensor while this engine exists
        self.model = model
        self._active: dict[int, tuple[int, Direction, float]] = {}
        self._owned: set[int] = set()
        self._handles = []
        owners: dict[int, int] = {}
        for module in model.modules():
            own = list(module.parameters(recurse=False))
            if not own:
                continue
            for p in own:
                owners[id(p)] = owners.get(id(p), 0) + 1
            self._owned.update(id(p) for p in own)
            self._handles.append(module.register_forward_pre_hook(self._swap_in))
            self._handles.append(module.register_forward_hook(self._swap_out, always_call=True))
        self._saved: dict[int, list[tuple[nn.Parameter, torch.Tensor]]] = {}
        # tied parameters (embedding = LM head) are used by several modules in one forward: their
        # perturbed value is computed once per evaluation and reused (the same z, the same bits)
        self._tied = {pid for pid, count in owners.items() if count > 1}
        self._tied_cache: dict[int, torch.Tensor] = {}
        # parameters currently swapped in: a parameter owned by nested modules (RoBERTa's
        # lm_head.bias is lm_head.decoder.bias) must be perturbed once, by the outermost one
        self._swapped: set[int] = set()

    def perturb(self, params: ZOParams, direction: Direction, scale: float) -> None:
        missing = [pid for pid, p in params if id(p) not in self._owned]
        if missing:
            raise ValueError(
                f"engine.mode=virtual: parameters {missing[:5]} are not owned by any module of the "
                "model the engine was built for; use engine.mode=inplace or build the engine on that model"
            )
        self._active = {id(p): (pid, direction, scale) for pid, p in params}
        self._tied_cache = {}

    def restore(self, params: ZOParams) -> None:
        self._active = {}
        self._tied_cache = {}

    @torch.no_grad()
    def _swap_in(self, module: nn.Module, args) -> None:
        if not self._active:
            return
        with self._timed():
            self._swap_in_timed(module)

    def _swap_in_timed(self, module: nn.Module) -> None:
        saved = []
        for p in module.parameters(recurse=False):
            entry = self._active.get(id(p))
            if entry is not None and id(p) not in self._swapped:
                pid, direction, scale = entry
                saved.append((p, p.data))
                self._swapped.add(id(p))
                if id(p) in self._tied:
                    if id(p) not in self._tied_cache:
                        self._tied_cache[id(p)] = self._perturbed_value(p.data, pid, direction, scale)
                    p.data = self._tied_cache[id(p)]
                else:
                    p.data = self._perturbed_value(p.data, pid, direction, scale)
        if saved:
            self._saved.setdefault(id(module), []).append(saved)

    def _perturbed_value(self, p: torch.Tensor, pid: int, direction: Direction, scale: float) -> torch.Tensor:
        """The tensor swapped in for θ (other backends compute it with their own kernel)."""
        return perturbed_value(p, pid, direction, scale)

    def _swap_out(self, module: nn.Module, args, output) -> None:
        stack = self._saved.get(id(module))
        if stack:
            with self._timed():
                for p, original in stack.pop():
                    p.data = original
                    self._swapped.discard(id(p))

    def remove(self) -> None:
        """Detach the hooks (the model then runs exactly as before)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
