"""The Triton engines: the torch engines with z generated inside kernels.

In-place mode moves the weights with the fused sweeps of ``kernels.py`` (3 per SPSA step). Virtual
mode is ``VirtualEngine`` with a ``TritonProvider``: each module's θ + scale·z is written by the
copy kernel into a fresh tensor for the duration of its forward (z generated per layer, never
stored), two replicas of one direction come from one kernel (one z), and with
``fused_linear=True`` (``engine.fused_linear``) the linear maps and lookups of the 2-D weights
``fused.fusable`` accepts run ``fused.perturbed_linear`` / ``perturbed_gather`` instead: no
θ + scale·z is written at all.

Definition of z per backend (the Gaussian z differs; a run is reproducible on one backend): the
torch backend draws ``torch.randn`` from a generator seeded with ``mix_seed(step_seed, pid)``;
this backend draws Philox4x32-10 under that key (``primitives.py``, ``philox.py``). Rademacher z
is bit-exact on both. Arithmetic: every kernel computes in float32 and rounds once to θ's dtype,
where the torch backend casts z to θ's dtype and rounds after each sweep (so the fused
restore+update rounds once where the torch in-place engine rounds twice).

Directions that transform z (HiZOO's z/√Σ, Sparse-MeZO's mask, low-rank Z = ABᵀ) override
``Direction.sample``; the kernels only know the plain z. For those the engines fall back to
torch arithmetic on a materialised z but keep *this* backend's z: while they work,
``directions.z_source`` makes ``Direction.sample`` draw its base z with ``generate_z``, so a method
that perturbs with a transformed z and updates with the plain one (HiZOO) sees one z.

Kernels need CUDA tensors, or ``TRITON_INTERPRET=1`` set before ``zobench.engine.triton`` is
imported (then they run on CPU tensors through Triton's interpreter: slow, for tests).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager

import torch
from torch import nn

from ..directions import Direction, mix_seed, z_source
from ..inplace import InPlaceEngine
from ..launch import STREAM_BLOCK_ELEMENTS, stream_blocks
from ..provider import STREAM_ELEMENTS, Block, TorchProvider, perturbed_values
from ..virtual import VirtualEngine
from . import fused
from .kernels import generate_z, in_kernel, perturbed_copy, perturbed_pair, perturbed_rows, sweep
from .primitives import interpreted

__all__ = ["STREAM_BLOCK_ELEMENTS", "TritonInPlaceEngine", "TritonProvider", "TritonVirtualEngine"]


def check_device(p: torch.Tensor) -> None:
    """Refuse a parameter the kernels cannot read (CPU without the interpreter)."""
    if p.device.type != "cuda" and not interpreted():
        raise ValueError(
            f"engine.backend=triton: a parameter is on {p.device.type}; the kernels need CUDA "
            "(or TRITON_INTERPRET=1 set before zobench.engine.triton is imported)"
        )


def _key(direction: Direction, pid: int) -> int:
    return mix_seed(direction.seed, pid)


class TritonProvider(TorchProvider):
    """θ + s·z from the kernels for plain directions; torch arithmetic on this backend's z
    (``z_source``) for directions that transform z.

    Args:
        fused_linear: linear maps and lookups of ``fused.fusable`` weights run the fused kernels
            (the engine then treats those weights as streamed: never materialised whole).
    """

    def __init__(self, fused_linear: bool = False) -> None:
        self.fused_linear = bool(fused_linear)

    def streams(self, p: torch.Tensor) -> bool:
        return self.fused_linear and fused.fusable(p)

    def _fuses(self, weight: torch.Tensor, direction: Direction) -> bool:
        return self.fused_linear and in_kernel(direction) and fused.fusable(weight)

    def values(self, p: torch.Tensor, pid: int, direction: Direction, scales: Sequence[float]) -> list[torch.Tensor]:
        if not in_kernel(direction):
            with z_source(generate_z):
                return perturbed_values(p, pid, direction, scales)
        check_device(p)
        key = _key(direction, pid)
        if len(scales) == 2:  # one kernel, one z for both
            return list(perturbed_pair(p, key, direction.distribution, scales[0], scale2=scales[1]))
        return [perturbed_copy(p, key, direction.distribution, scale) for scale in scales]

    def blocks(self, p: torch.Tensor, pid: int, direction: Direction, scales: Sequence[float]) -> Iterator[Block]:
        if not in_kernel(direction):
            yield 0, p.shape[0], self.values(p, pid, direction, scales)
            return
        check_device(p)
        key, distribution = _key(direction, pid), direction.distribution
        for first, stop in stream_blocks(p.shape[0], p.shape[1], STREAM_BLOCK_ELEMENTS):
            if len(scales) == 2:
                yield first, stop, list(perturbed_pair(p, key, distribution, scales[0], first, stop, scales[1]))
            else:
                yield first, stop, [perturbed_rows(p, key, distribution, s, first, stop) for s in scales]

    def sample(self, p: torch.Tensor, pid: int, direction: Direction) -> torch.Tensor:
        """The Philox z of the kernels, for forward-mode (dual) evaluations: without it they would
        measure along torch's z while the update sweeps move along this backend's."""
        if in_kernel(direction):
            check_device(p)
            return generate_z(_key(direction, pid), p, direction.distribution)
        with z_source(generate_z):
            return direction.sample(pid, p)

    def linear(
        self,
        xs: Sequence[torch.Tensor],
        weight: torch.Tensor,
        biases: Sequence[torch.Tensor | None],
        pid: int,
        direction: Direction,
        scales: Sequence[float],
        outs: Sequence[torch.Tensor],
    ) -> bool:
        if not self._fuses(weight, direction) or any(x.dtype != weight.dtype for x in xs):
            return False
        check_device(weight)
        key, distribution = _key(direction, pid), direction.distribution
        if len(xs) == 2:  # the weight tiles and their z loaded once for both
            fused.perturbed_linear(
                xs[0], weight, biases[0], key, distribution, scales[0], x_minus=xs[1], bias_minus=biases[1],
                out=outs[0], out_minus=outs[1], scale_minus=scales[1],
            )  # fmt: skip
            return True
        for x, bias, scale, out in zip(xs, biases, scales, outs):
            fused.perturbed_linear(x, weight, bias, key, distribution, scale, out=out)
        return True

    def gather(
        self, ids: torch.Tensor, weight: torch.Tensor, pid: int, direction: Direction, scale: float
    ) -> torch.Tensor | None:
        if not self._fuses(weight, direction):
            return None
        check_device(weight)
        return fused.perturbed_gather(ids, weight, _key(direction, pid), direction.distribution, scale)

    def z_scope(self) -> AbstractContextManager[None]:
        return z_source(generate_z)

    def move(self, p: torch.Tensor, pid: int, direction: Direction, delta: float) -> None:
        if delta == 0.0:
            return
        if in_kernel(direction):
            check_device(p)
            sweep(p, _key(direction, pid), direction.distribution, coeff=delta)
        else:
            with z_source(generate_z):
                p.add_(direction.sample(pid, p).to(p.dtype), alpha=delta)

    def sweep(self, p: torch.Tensor, pid: int, direction: Direction, undo: float, decay: float, coeff: float) -> None:
        """One kernel, one rounding (float32 arithmetic); a direction that transforms z takes the
        torch arithmetic on this backend's z."""
        if not in_kernel(direction):
            with z_source(generate_z):
                return super().sweep(p, pid, direction, undo, decay, coeff)
        check_device(p)
        sweep(p, _key(direction, pid), direction.distribution, undo=undo, keep=1.0 - decay, coeff=coeff)


class TritonInPlaceEngine(InPlaceEngine):
    """MeZO's in-place perturbation with the fused Triton sweeps of ``TritonProvider`` (3 per SPSA
    step; the restore and the update fused in one)."""

    def __init__(self) -> None:
        super().__init__(provider=TritonProvider())


class TritonVirtualEngine(VirtualEngine):
    """``VirtualEngine`` with the kernels' θ + scale·z (``TritonProvider``); updates are sweeps.

    Args:
        model, stream_elements, paired: as for ``VirtualEngine``.
        fused_linear: ``engine.fused_linear`` (see ``TritonProvider``).
    """

    def __init__(
        self,
        model: nn.Module,
        stream_elements: int | None = STREAM_ELEMENTS,
        paired: bool = True,
        fused_linear: bool = False,
    ) -> None:
        super().__init__(model, stream_elements, paired, provider=TritonProvider(fused_linear))
        self.fused_linear = bool(fused_linear)
