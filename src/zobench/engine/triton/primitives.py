"""Triton device functions shared by every kernel: the Philox z of a block or of rows, and the
rounding to the weight's dtype; plus the host-side flags they take.

z (``philox.py`` is the same definition in pure torch, matched bit for bit under
``TRITON_INTERPRET=1``): Gaussian, Philox4x32-10 keyed by ``mix_seed(step_seed, pid)``, element e
word e mod 4 of counter e div 4, through Triton's uniform and Box-Muller transforms on word pairs
(``tl.randn4x``); Rademacher, the sign bits of Philox under the same key, 128 elements per call.
Every kernel computes in float32 and rounds once to θ's dtype (``rounded``).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def interpreted() -> bool:
    """Whether the kernels were compiled for Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def gaussian(distribution: str) -> bool:
    """The kernels' GAUSSIAN flag for ``distribution`` (checked: gaussian or rademacher)."""
    if distribution not in ("gaussian", "rademacher"):
        raise ValueError(f"distribution={distribution!r}: allowed gaussian, rademacher")
    return distribution == "gaussian"


def manual_bf16(out: torch.Tensor) -> bool:
    """The kernels' MANUAL_BF16 flag: bfloat16 output under the interpreter (see ``rounded``)."""
    return out.dtype == torch.bfloat16 and interpreted()


@triton.jit
def block(numel, BLOCK: tl.constexpr, WIDE: tl.constexpr, first_block=0):
    """Element indices of this program's block (int64 when the tensor needs it), their mask, and
    the block's first element index; the grid starts at ``first_block``."""
    start = tl.program_id(0) + first_block
    if WIDE:
        start = start.to(tl.int64)
    offsets = start * BLOCK + tl.arange(0, BLOCK)
    return offsets, offsets < numel, start * BLOCK


@triton.jit
def signs(key, first, WIDTH: tl.constexpr, ALIGNED: tl.constexpr):
    """Rademacher z of rows of WIDTH (≤ 128) consecutive elements starting at the element indices
    ``first`` ([R, 1]): element e is the sign of bit e mod 32 of word (e mod 128) div 32 of
    Philox at counter e div 128 (philox.rademacher_z). A row spans at most two counters, both
    drawn; ALIGNED: every row lies within one counter (first mod 128 + WIDTH ≤ 128)."""
    local = first % 128 + tl.arange(0, WIDTH)[None, :]  # [R, WIDTH], in [0, 256)
    counter = first // 128
    a0, a1, a2, a3 = tl.randint4x(key, counter)
    if ALIGNED:
        w0, w1, w2, w3 = a0, a1, a2, a3
    else:
        b0, b1, b2, b3 = tl.randint4x(key, counter + 1)
        second = local >= 128
        w0, w1 = tl.where(second, b0, a0), tl.where(second, b1, a1)
        w2, w3 = tl.where(second, b2, a2), tl.where(second, b3, a3)
        local = local % 128
    lane = local // 32
    word = tl.where(lane < 2, tl.where(lane == 0, w0, w1), tl.where(lane == 2, w2, w3))
    bit = (word >> (local % 32).to(tl.uint32)) & 1
    return tl.where(bit != 0, -1.0, 1.0)


@triton.jit
def draw(key, first, BLOCK: tl.constexpr, GAUSSIAN: tl.constexpr):
    """z of the BLOCK elements from element ``first`` on (a multiple of 4; of 128 for
    Rademacher, BLOCK too). Gaussian: Philox4x32-10 at counters first/4 + 0..BLOCK/4-1, each
    counter's 4 words serving 4 consecutive elements (Box-Muller on word pairs). Rademacher: one
    Philox call per 128 elements, its bits (``signs``). philox.py is the same definition in
    torch."""
    if GAUSSIAN:
        a, b, c, d = tl.randn4x(key, first // 4 + tl.arange(0, BLOCK // 4))
        # [a0, b0, c0, d0, a1, b1, ...]: element 4k + j is word j of counter k
        return tl.interleave(tl.interleave(a, c), tl.interleave(b, d))
    rows = first + tl.arange(0, BLOCK // 128)[:, None] * 128
    return tl.reshape(signs(key, rows, 128, True), (BLOCK,))


@triton.jit
def draw_rows(key, first, WIDTH: tl.constexpr, GAUSSIAN: tl.constexpr):
    """z of rows of WIDTH consecutive elements from the element indices ``first`` ([R, 1],
    multiples of 4; WIDTH ≤ 128 for Rademacher): [R, WIDTH], the elements' z of ``draw``."""
    if GAUSSIAN:
        a, b, c, d = tl.randn4x(key, first // 4 + tl.arange(0, WIDTH // 4)[None, :])
        return tl.interleave(tl.interleave(a, c), tl.interleave(b, d))
    return signs(key, first, WIDTH, False)


@triton.jit
def rounded(x, dtype: tl.constexpr, MANUAL_BF16: tl.constexpr):
    """float32 ``x`` rounded to nearest even in ``dtype``.

    Triton 3.9's interpreter truncates float32 → bfloat16 (``cast_impl`` ignores the rounding
    mode) where compiled kernels and torch round to nearest even; under the interpreter the
    bfloat16 rounding is done on the bits instead, so tests see what the GPU computes.
    """
    if MANUAL_BF16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return x.to(dtype)


@triton.jit
def store_rounded(ptrs, x, mask, MANUAL_BF16: tl.constexpr):
    """Store float32 ``x`` rounded to nearest even in the pointer's dtype (``rounded``)."""
    tl.store(ptrs, rounded(x, ptrs.dtype.element_ty, MANUAL_BF16), mask=mask)
