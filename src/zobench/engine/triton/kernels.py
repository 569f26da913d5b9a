"""The Triton sweeps: z generated inside the kernel, never materialised.

Every sweep over a parameter is one kernel that reads θ, draws z for its block from the
counter-based generator (``primitives.py``) and writes the result. A MeZO step (Malladi et al.
2023, Alg. 1) costs three sweeps, +εz, -2εz, and one fused restore+update

    θ ← (1 - decay)·(θ + undo·z) + coeff·z        (undo = +ε, coeff = -η·g, decay = η·λ)

instead of four. The virtual engine's θ + scale·z is the copy kernel writing a fresh tensor (whole
or one streamed block of rows), and two scales that share z (the mirrored ± pair) are one kernel.
Grids and index widths come from ``launch.py``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..directions import Direction
from ..launch import BLOCK, sweep_launch
from .primitives import block, draw, gaussian, manual_bf16, store_rounded


@triton.jit
def _sweep_kernel(
    theta_ptr,
    numel,
    key,
    undo,
    keep,
    coeff,
    BLOCK: tl.constexpr,
    GAUSSIAN: tl.constexpr,
    WIDE: tl.constexpr,
    MANUAL_BF16: tl.constexpr,
):
    """θ ← keep·(θ + undo·z) + coeff·z in float32, one rounding to θ's dtype."""
    offsets, mask, first = block(numel, BLOCK, WIDE)
    z = draw(key, first, BLOCK, GAUSSIAN)
    theta = tl.load(theta_ptr + offsets, mask=mask).to(tl.float32)
    store_rounded(theta_ptr + offsets, keep * (theta + undo * z) + coeff * z, mask, MANUAL_BF16)


@triton.jit
def _perturbed_copy_kernel(
    theta_ptr,
    out_ptr,
    numel,
    key,
    scale,
    first_block,
    BLOCK: tl.constexpr,
    GAUSSIAN: tl.constexpr,
    WIDE: tl.constexpr,
    MANUAL_BF16: tl.constexpr,
):
    """out ← θ + scale·z over θ's elements [first_block·BLOCK, numel) (virtual mode's swap, whole
    or one streamed block of rows: θ is only read)."""
    offsets, mask, first = block(numel, BLOCK, WIDE, first_block)
    z = draw(key, first, BLOCK, GAUSSIAN)
    theta = tl.load(theta_ptr + offsets, mask=mask).to(tl.float32)
    store_rounded(out_ptr + (offsets - first_block * BLOCK), theta + scale * z, mask, MANUAL_BF16)


@triton.jit
def _perturbed_pair_kernel(
    theta_ptr,
    plus_ptr,
    minus_ptr,
    numel,
    key,
    scale,
    scale2,
    first_block,
    BLOCK: tl.constexpr,
    GAUSSIAN: tl.constexpr,
    WIDE: tl.constexpr,
    MANUAL_BF16: tl.constexpr,
):
    """plus ← θ + scale·z, minus ← θ + scale2·z from one draw of z (two replicas of one direction:
    the mirrored pair has scale2 = -scale), over θ's elements [first_block·BLOCK, numel)."""
    offsets, mask, first = block(numel, BLOCK, WIDE, first_block)
    z = draw(key, first, BLOCK, GAUSSIAN)
    theta = tl.load(theta_ptr + offsets, mask=mask).to(tl.float32)
    store_rounded(plus_ptr + (offsets - first_block * BLOCK), theta + scale * z, mask, MANUAL_BF16)
    store_rounded(minus_ptr + (offsets - first_block * BLOCK), theta + scale2 * z, mask, MANUAL_BF16)


@triton.jit
def _z_kernel(out_ptr, numel, key, BLOCK: tl.constexpr, GAUSSIAN: tl.constexpr, WIDE: tl.constexpr):
    """out ← z (float32): for stateful updates (``foreach``), transforming directions, and tests."""
    offsets, mask, first = block(numel, BLOCK, WIDE)
    tl.store(out_ptr + offsets, draw(key, first, BLOCK, GAUSSIAN), mask=mask)


# --- launchers -----------------------------------------------------------------------------------


def _launch(kernel, numel: int, *args, distribution: str, first: int = 0, **constants) -> None:
    """Run ``kernel`` over elements [first, numel) (``first`` a multiple of BLOCK); the grid and
    the index width are ``launch.sweep_launch``'s (int64 once the padded last block passes 2³¹)."""
    plan = sweep_launch(numel, first)
    kernel[plan.grid](*args, BLOCK=BLOCK, GAUSSIAN=gaussian(distribution), WIDE=plan.wide, **constants)


def generate_z(key: int, like: torch.Tensor, distribution: str = "gaussian") -> torch.Tensor:
    """z (float32, shaped like ``like``) for the Philox key ``key`` = mix_seed(step_seed, pid)."""
    out = torch.empty(like.shape, dtype=torch.float32, device=like.device)
    if out.numel():
        _launch(_z_kernel, out.numel(), out, out.numel(), key, distribution=distribution)
    return out


def sweep(
    p: torch.Tensor, key: int, distribution: str, undo: float = 0.0, keep: float = 1.0, coeff: float = 0.0
) -> None:
    """In place: p ← keep·(p + undo·z) + coeff·z (float32 arithmetic, one rounding)."""
    target = p if p.is_contiguous() else p.contiguous()
    if target.numel():
        _launch(
            _sweep_kernel,
            target.numel(),
            target,
            target.numel(),
            key,
            float(undo),
            float(keep),
            float(coeff),
            distribution=distribution,
            MANUAL_BF16=manual_bf16(target),
        )
    if target is not p:
        p.copy_(target)


def perturbed_copy(p: torch.Tensor, key: int, distribution: str, scale: float) -> torch.Tensor:
    """A new tensor θ + scale·z; ``p`` is not written."""
    source = p.contiguous()
    out = torch.empty(p.shape, dtype=p.dtype, device=p.device)
    if out.numel():
        _launch(
            _perturbed_copy_kernel,
            out.numel(),
            source,
            out,
            out.numel(),
            key,
            float(scale),
            0,
            distribution=distribution,
            MANUAL_BF16=manual_bf16(out),
        )
    return out


def perturbed_rows(p: torch.Tensor, key: int, distribution: str, scale: float, first: int, stop: int) -> torch.Tensor:
    """Rows [first, stop) of ``perturbed_copy(p, ...)`` for a contiguous 2-D ``p``, computed alone
    (first·cols a multiple of BLOCK: the z of an element depends only on its index)."""
    cols = p.shape[1]
    start, end = first * cols, stop * cols
    if start % BLOCK:
        raise ValueError(f"perturbed_rows: row {first} does not start a kernel block of {BLOCK} elements")
    out = torch.empty((stop - first, cols), dtype=p.dtype, device=p.device)
    if out.numel():
        _launch(
            _perturbed_copy_kernel,
            end,
            p,
            out,
            end,
            key,
            float(scale),
            start // BLOCK,
            first=start,
            distribution=distribution,
            MANUAL_BF16=manual_bf16(out),
        )
    return out


def perturbed_pair(
    p: torch.Tensor,
    key: int,
    distribution: str,
    scale: float,
    first: int = 0,
    stop: int | None = None,
    scale2: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [first, stop) (default: all of ``p``, any shape) of ``perturbed_copy`` at ``scale``
    and at ``scale2`` (default -scale), z generated once for both."""
    source = p.contiguous()
    shape: tuple[int, ...]
    if first or stop is not None:
        cols = p.shape[1]
        stop = p.shape[0] if stop is None else stop
        start, end, shape = first * cols, stop * cols, (stop - first, cols)
        if start % BLOCK:
            raise ValueError(f"perturbed_pair: row {first} does not start a kernel block of {BLOCK} elements")
    else:
        start, end, shape = 0, p.numel(), tuple(p.shape)
    plus = torch.empty(shape, dtype=p.dtype, device=p.device)
    minus = torch.empty_like(plus)
    if plus.numel():
        _launch(
            _perturbed_pair_kernel,
            end,
            source,
            plus,
            minus,
            end,
            key,
            float(scale),
            float(-scale if scale2 is None else scale2),
            start // BLOCK,
            first=start,
            distribution=distribution,
            MANUAL_BF16=manual_bf16(plus),
        )
    return plus, minus


def in_kernel(direction: Direction) -> bool:
    """Whether the kernels generate this direction's z (a plain Gaussian / Rademacher z);
    subclasses transform z in ``sample`` and take the torch path on a materialised z."""
    return type(direction) is Direction
