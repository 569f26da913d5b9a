"""The perturbation provider: what a backend supplies to the engines.

The engines decide *when* weights are perturbed: the virtual engine (``virtual.py``) when a module
sees perturbed weights (its hooks, streaming, the replicas of a batched forward, forward-mode
duals), the in-place engine (``inplace.py``) when the weights themselves move and back. A provider
decides *how*: θ + s·z for one parameter, its products, and the in-place moves and update
sweeps. Torch computes them with ``torch.add`` on z drawn by ``Direction.chunks``
(``TorchProvider``); Triton draws z inside its kernels (``engine/triton/engines.py``). Every
method takes the parameter ``p``, its stable id ``pid`` (which seeds z with the direction's seed)
and a ``Direction``; ``scales`` is the list of scales that share one draw of z (SPSA's ± pair is
``[ε, -ε]``; a replica of its own direction is ``[ε]``), so z is drawn once per distinct
direction however many replicas use it.

See docs/design.md ("Engine") for the contract and MeZO (Malladi et al. 2023, Alg. 1) for the
perturbation θ + εz itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

import torch

from . import directions as _directions
from . import launch
from .directions import Direction, add_z_, z_pieces

#: virtual mode streams 2-D weights of at least this many elements (``virtual.py``): 16 MB in
#: float32, so a language model's embedding and LM head, and the layers of large models
STREAM_ELEMENTS = 1 << 22

#: ``(first row, stop row, [θ[rows] + s·z[rows] for each scale])``: one block of a streamed weight
Block = tuple[int, int, list[torch.Tensor]]


class Provider(Protocol):
    """The perturbed weights and products of one parameter, as a backend computes them."""

    def streams(self, p: torch.Tensor) -> bool:
        """Whether ``p`` is never materialised whole by this provider (besides the engine's size
        threshold): its linear maps and lookups go to ``linear`` / ``gather`` / ``blocks``."""
        ...

    def values(self, p: torch.Tensor, pid: int, direction: Direction, scales: Sequence[float]) -> list[torch.Tensor]:
        """[θ + s·z for s in scales] in θ's dtype, z drawn once."""
        ...

    def blocks(self, p: torch.Tensor, pid: int, direction: Direction, scales: Sequence[float]) -> Iterator[Block]:
        """The rows of ``values`` for a contiguous 2-D ``p``, block by block, in order."""
        ...

    def sample(self, p: torch.Tensor, pid: int, direction: Direction) -> torch.Tensor:
        """z itself (forward-mode duals): the z this backend's updates move along."""
        ...

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
        """outs[j] ← F.linear(xs[j], θ + scales[j]·z, biases[j]) without forming θ + s·z, or
        False (nothing written) when this provider has no such product for ``weight``."""
        ...

    def gather(
        self, ids: torch.Tensor, weight: torch.Tensor, pid: int, direction: Direction, scale: float
    ) -> torch.Tensor | None:
        """F.embedding(ids, θ + scale·z) reading only the looked-up rows, or None."""
        ...

    def z_scope(self) -> AbstractContextManager[None]:
        """While open, ``Direction.sample`` draws this backend's z: directions that transform z
        (HiZOO's, Sparse-MeZO's, low-rank) and the pieces of stateful updates (``Engine.foreach``)
        then see the z the kernels perturb and update along."""
        ...

    def move(self, p: torch.Tensor, pid: int, direction: Direction, delta: float) -> None:
        """In place: θ ← θ + delta·z (one rounding); delta = 0 writes nothing."""
        ...

    def sweep(self, p: torch.Tensor, pid: int, direction: Direction, undo: float, decay: float, coeff: float) -> None:
        """In place: θ ← (1 - decay)·(θ + undo·z) + coeff·z, z drawn once. ``undo`` removes an
        applied perturbation in the same sweep (in-place mode's fused restore+update); the update
        alone is ``undo = 0``. Callers skip the call when all three are zero (lr=0 writes nothing)."""
        ...


def perturbed_values(p: torch.Tensor, pid: int, direction: Direction, scales: Sequence[float]) -> list[torch.Tensor]:
    """[θ + s·z for s in scales] in θ's dtype from one draw of z: per piece of z, one
    ``torch.add(θ, z, alpha=s)`` per scale, the kernel of ``θ.add_(z, alpha=s)``, so each value has
    the bits in-place mode's sweep gives."""
    if not p.is_contiguous():
        outs = []
        for scale in scales:  # rare (transposed views): z drawn per scale
            out = p.clone(memory_format=torch.contiguous_format)
            add_z_(out, pid, direction, scale)
            outs.append(out)
        return outs
    outs = [torch.empty_like(p) for _ in scales]
    flat = p.view(-1)
    for start, stop, z in direction.chunks(pid, p):
        z = z.to(p.dtype)
        for scale, out in zip(scales, outs):
            torch.add(flat[start:stop], z, alpha=scale, out=out.view(-1)[start:stop])
    return outs


def perturbed_value(p: torch.Tensor, pid: int, direction: Direction, scale: float) -> torch.Tensor:
    """θ + scale·z in θ's dtype: the one formula both modes use, so they agree bit for bit."""
    return perturbed_values(p, pid, direction, [scale])[0]


def row_block(cols: int, multiple: int = 16, target: int | None = None) -> int:
    """Rows per streamed block: about ``target`` elements (default Z_CHUNK), rows·cols a multiple
    of ``multiple`` (16 for torch's CPU generator, see ``Direction.chunks``; the kernels' block
    for Triton)."""
    return launch.row_block(cols, multiple, _directions.Z_CHUNK if target is None else target)


class TorchProvider:
    """θ + s·z with torch arithmetic on z drawn by ``Direction.chunks`` (the torch backend)."""

    def streams(self, p: torch.Tensor) -> bool:
        return False

    def values(self, p: torch.Tensor, pid: int, direction: Direction, scales: Sequence[float]) -> list[torch.Tensor]:
        return perturbed_values(p, pid, direction, scales)

    def blocks(self, p: torch.Tensor, pid: int, direction: Direction, scales: Sequence[float]) -> Iterator[Block]:
        cols = p.shape[1]
        flat = p.view(-1)
        # blocks of a multiple of 64 elements: torch's elementwise kernels round their scalar
        # tail (bf16) differently from their vector loop, so this keeps every element's path
        for start, stop, z in direction.chunks(pid, p, size=row_block(cols, 64) * cols):
            z = z.to(p.dtype)
            rows = [torch.add(flat[start:stop], z, alpha=scale).view(-1, cols) for scale in scales]
            yield start // cols, stop // cols, rows

    def sample(self, p: torch.Tensor, pid: int, direction: Direction) -> torch.Tensor:
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
        return False  # torch has no GEMM that perturbs its operand: streamed blocks instead

    def gather(
        self, ids: torch.Tensor, weight: torch.Tensor, pid: int, direction: Direction, scale: float
    ) -> torch.Tensor | None:
        return None

    def z_scope(self) -> AbstractContextManager[None]:
        return contextlib.nullcontext()  # torch's generator is Direction.sample's own

    def move(self, p: torch.Tensor, pid: int, direction: Direction, delta: float) -> None:
        if delta != 0.0:
            add_z_(p, pid, direction, delta)

    def sweep(self, p: torch.Tensor, pid: int, direction: Direction, undo: float, decay: float, coeff: float) -> None:
        """Piece by piece (elementwise: the pieces give the whole-tensor bits), each term skipped
        when zero (x + 0·z would turn a stored -0.0 into +0.0)."""
        for target, z in z_pieces(p, pid, direction):
            if undo != 0.0:
                target.add_(z, alpha=undo)
            if decay != 0.0:
                target.mul_(1.0 - decay)
            if coeff != 0.0:
                target.add_(z, alpha=coeff)
