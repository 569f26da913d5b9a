"""Launch plans of the Triton kernels: grids, index widths and streamed blocks as pure functions.

Every Triton launcher (``triton.kernels``, ``triton.fused``) takes its grid, its int32/int64
choice and its blocks of rows from here, so that what decides whether a launch terminates and
stays in range is plain Python, checked for every weight shape of every ``conf/model`` config
without a GPU (``tests/engine/test_launch.py``). What must hold, and why:

* every grid dimension is ≥ 1 and within CUDA's limits (x < 2³¹, y and z ≤ 65535): a launch
  beyond them fails (or, for some drivers, misbehaves) instead of computing;
* the largest element index a kernel *computes*, masked lanes of the last block included, fits
  the integer width it computes in. A kernel's offsets are ``program·BLOCK + lane``: with
  ``numel`` just under 2³¹ the last block's padded lanes pass 2³¹ - 1, wrap negative in int32
  and pass the ``offset < numel`` mask. So the int64 switch (``wide``) is taken on the padded
  extent, not on ``numel`` alone;
* streamed blocks have at least one row, start on a kernel block (their z is the whole
  tensor's), cover the rows exactly once, and their loop advances (no zero step).

Sizes (elements per block, tile shapes) are constants of this module, shared with the kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: elements per program of the one-dimensional kernels (sweep, perturbed copy / pair, z)
BLOCK = 1024
#: elements per block of a streamed weight (virtual mode): 32 MB in fp16, few launches per matrix
STREAM_BLOCK_ELEMENTS = 1 << 24
#: the fused GEMM's weight tile (rows of W × elements of a row) and the gather's tile
BLOCK_N, BLOCK_K = 64, 64
GATHER_ROWS, GATHER_COLS = 16, 128
#: CUDA's grid limits: x up to 2³¹ - 1, y and z up to 65535 blocks
GRID_X_MAX, GRID_YZ_MAX = 2**31 - 1, 65535
INT32_EXTENT = 2**31  # indices 0 .. 2³¹ - 1 fit int32


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Launch:
    """A kernel launch: its grid, whether indices are computed in int64 (``wide``) and the
    padded extent (largest element index computed, masked lanes included, + 1)."""

    grid: tuple[int, ...]
    wide: bool
    extent: int

    def check(self, what: str) -> Launch:
        """Refuse a grid CUDA cannot launch (a clear error instead of a failed launch)."""
        if any(g < 1 for g in self.grid) or self.grid[0] > GRID_X_MAX or any(g > GRID_YZ_MAX for g in self.grid[1:]):
            raise ValueError(f"{what}: grid {self.grid} is outside CUDA's limits (x < 2^31, y, z <= 65535)")
        return self


def sweep_launch(numel: int, first: int = 0) -> Launch:
    """The one-dimensional kernels over elements [first, numel), ``first`` a multiple of BLOCK:
    program p covers first + p·BLOCK + [0, BLOCK)."""
    if first % BLOCK or not 0 <= first < numel:
        raise ValueError(f"sweep_launch: first={first} must be a multiple of {BLOCK} below numel={numel}")
    programs = cdiv(numel - first, BLOCK)
    extent = first + programs * BLOCK
    return Launch((programs,), extent > INT32_EXTENT, extent).check("sweep")


def block_m(rows: int) -> int:
    """Rows of x per program of the fused GEMM. Each program draws the z of its weight tiles
    itself, so z is drawn cdiv(rows, BLOCK_M) times per element: tall tiles for many rows (a
    training batch's tokens), small ones for few (the last positions' logits), at least 16
    (tl.dot's minimum)."""
    return 16 if rows <= 16 else 32 if rows <= 32 else 64 if rows <= 64 else 128


def linear_launch(m: int, n: int, k: int) -> Launch:
    """The fused GEMM ``x[m, k] · W[n, k]ᵀ``: programs over (row blocks of x, BLOCK_N rows of W),
    each looping over ⌈k / BLOCK_K⌉ tiles; W's element indices rn·k + k0 + [0, BLOCK_K) reach
    (n_padded - 1)·k + k_padded - 1. (x and the output are indexed in int64 always.)"""
    if m < 1 or n < 1 or k < 1:
        raise ValueError(f"linear_launch: empty product {m}x{k} · {n}x{k}")
    grid = (cdiv(m, block_m(m)), cdiv(n, BLOCK_N))
    extent = (grid[1] * BLOCK_N - 1) * k + cdiv(k, BLOCK_K) * BLOCK_K
    return Launch(grid, extent > INT32_EXTENT, extent).check("fused linear")


def gather_launch(tokens: int, cols: int) -> Launch:
    """The fused embedding gather: programs over (GATHER_ROWS ids, GATHER_COLS columns); the
    looked-up rows are indexed in int64 always (id·cols passes 2³¹ for large vocabularies)."""
    if tokens < 1 or cols < 1:
        raise ValueError(f"gather_launch: empty lookup of {tokens} ids x {cols} columns")
    return Launch((cdiv(tokens, GATHER_ROWS), cdiv(cols, GATHER_COLS)), True, tokens * cols).check("gather")


def row_block(cols: int, multiple: int = 16, target: int = 1 << 20) -> int:
    """Rows per streamed block: about ``target`` elements, rows·cols a multiple of ``multiple``
    (16 for torch's CPU generator, see ``Direction.chunks``; BLOCK for the kernels); never 0."""
    if cols < 1 or multiple < 1:
        raise ValueError(f"row_block: cols={cols}, multiple={multiple} must be positive")
    step = multiple // math.gcd(cols, multiple)
    return max(step, target // cols // step * step)


def stream_blocks(rows: int, cols: int, target: int = STREAM_BLOCK_ELEMENTS) -> list[tuple[int, int]]:
    """The kernels' streamed blocks of a [rows, cols] weight, about ``target`` elements each:
    (first row, stop row), in order, each starting on a kernel block (first·cols a multiple of
    BLOCK)."""
    step = row_block(cols, BLOCK, target)
    return [(first, min(first + step, rows)) for first in range(0, rows, step)]
