"""Low-rank perturbations of weight matrices, shared by TeZO, LOZO and SubZero.

A ``LowRankDirection`` gives every matrix parameter (ndim == 2) a perturbation Z = A Bᵀ of rank r
built by the method's ``factors(pid, like) -> (A, B)`` from seeded draws, and every other
parameter a plain Gaussian z. Factors are regenerated from seeds when needed, never stored, and
Z is formed a block of rows at a time, so the memory stays at inference (methods keep only
r-dimensional state). Each method scales Z as its reference does: SubZero's entries have unit
variance (√(mn)/r), LOZO's U Vᵀ and TeZO's U diag(τ) Vᵀ variance r (no 1/√r), so a paper's η and ε
mean what they mean there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..engine import Direction, mix_seed
from ..engine.torch_backend import row_block


def gaussian(seed: int, shape, like: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator(device=like.device)
    gen.manual_seed(seed)
    return torch.randn(shape, generator=gen, device=like.device, dtype=torch.float32)


@dataclass(frozen=True, eq=False)
class LowRankDirection(Direction):
    """Z = A Bᵀ for matrices, built block of rows by block of rows (Z[rows] = A[rows] Bᵀ, ~Z_CHUNK
    elements each), so that sweeps and the streamed forward never hold a matrix-sized Z. The
    blocks are fixed by the matrix's shape, whatever piece size a caller asks for, and ``sample``
    concatenates the same blocks: every use sees the same bits."""

    factors: Callable | None = field(default=None)
    #: ``(pid, like) -> (rows, cols)``: the matrix Z is formed in, row-major over ``like``'s elements
    #: (SubZero's near-square shape of an adapter tensor); None: ``like``'s own shape
    matrix_shape: Callable | None = field(default=None)

    def _blocks(self, pid: int, like: torch.Tensor):
        assert self.factors is not None  # sample / chunks fall back to Direction's z without factors
        for start, stop, compute in self.whole_blocks(pid, like) or ():
            yield start, stop, compute()

    def whole_blocks(self, pid: int, like: torch.Tensor):
        """``(start, stop, compute)`` over the flat elements of the whole ``like`` (a tensor of the
        whole parameter's shape; its values are not read), ``compute()`` giving the flat Z there
        as ``sample`` computes it; None where Z is the plain elementwise z (not a matrix). The
        factors are made now (once per call, as ``chunks`` makes them once per sweep), the blocks'
        products only when computed: how ``dist.mode=sharded`` forms just the rows of its shard
        (``engine/sharded.py`` ``z_range``; every rank makes the small factors, r·(m + n) numbers)."""
        if like.ndim != 2 or self.factors is None:
            return None
        a, b = self.factors(pid, like)
        rows, cols = like.shape if self.matrix_shape is None else self.matrix_shape(pid, like)
        step = row_block(cols, 64)  # a multiple of 64 elements: see TorchProvider.blocks
        return [
            (first * cols, min(rows, first + step) * cols, lambda f=first: (a[f : f + step] @ b.T).reshape(-1))
            for first in range(0, rows, step)
        ]

    def sample(self, pid: int, like: torch.Tensor) -> torch.Tensor:
        if like.ndim != 2 or self.factors is None:
            return super().sample(pid, like)
        return torch.cat([block for _, _, block in self._blocks(pid, like)]).view(like.shape)

    def chunks(self, pid: int, like: torch.Tensor, size: int | None = None):
        if like.ndim != 2 or self.factors is None or not like.is_contiguous():
            yield from super().chunks(pid, like, size)
            return
        yield from self._blocks(pid, like)


def rank_for(like: torch.Tensor, rank: int) -> int:
    return max(1, min(rank, *like.shape))


def near_square(numel: int) -> tuple[int, int]:
    """(a, b) with a·b = numel, a ≤ b and b - a least: SubZero's ``reshape_matrix``
    (zimingyy/SubZero @cf6effd, large_models/trainer.py:1207-1213)."""
    first = max(i for i in range(1, math.isqrt(numel) + 1) if numel % i == 0)
    return first, numel // first


def factor_seed(*parts: int) -> int:
    return mix_seed(0x10F4C7, *parts)
