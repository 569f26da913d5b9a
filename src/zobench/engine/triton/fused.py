"""Perturbation inside the matmul: ``y = x·fl(W + s·Z)ᵀ + b`` with Z generated in the weight
tiles of a Triton GEMM, and ``fl(W + s·Z)[ids]`` gathered row by row (``engine.fused_linear``).

Why: the virtual engine otherwise writes θ + εz for each module (or each streamed block) into
a fresh tensor and hands it to cuBLAS: per weight element that is a read of θ, a write and a
second read of the copy, on top of generating z (on large models, most of a step). Here each
tile of W is loaded once, its z drawn in registers from the Philox counters of its elements,
``fl(W + s·Z)`` rounded to W's dtype exactly as ``kernels.perturbed_copy`` rounds it, and fed to
``tl.dot``: the perturbed matrix never exists in memory, the weights are read once per output
column block, and nothing is written but the output. Two replicas of one direction (the mirrored
± pair of ``VirtualEngine.mirrored``) share the tile's load and its z: two accumulators,
``x₊·fl(W + s·Z)ᵀ`` and ``x₋·fl(W + s₂·Z)ᵀ`` (s₂ = -s for the pair).

Embedding lookups never need the whole matrix: ``perturbed_gather`` reads only the looked-up rows
and draws only their z (Philox is random access: element e's z is word e mod 4 of counter e div 4,
whatever else is drawn), where streaming sweeps every row of the vocabulary to find them.

Same z and same perturbed weights as the unfused Triton virtual engine (the definition in
``philox.py``): the gather is bit-identical to gathering from ``perturbed_copy``; the matmul equals
``F.linear(x, perturbed_copy(W), b)`` up to the order of the float32 accumulation (tested under
the interpreter). fp32 inputs use IEEE fp32 products (no TF32), as torch does by default.

Constraints (otherwise the engine takes the unfused path): W 2-D, contiguous, its row length a
multiple of 4 (a tile row then starts on a Philox counter), x and W of one dtype among fp32, fp16,
bf16. Tile sizes are fixed, not autotuned: they have not been measured on a GPU yet. Each program
draws the z of its own weight tiles, so an element's z is drawn once per block of BLOCK_M rows of
x (``launch.block_m``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launch import BLOCK_K, BLOCK_N, GATHER_COLS, GATHER_ROWS, gather_launch, linear_launch
from ..launch import block_m as _block_m
from .primitives import draw_rows, gaussian, interpreted, manual_bf16, rounded, store_rounded

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def fusable(weight: torch.Tensor) -> bool:
    """Whether ``weight``'s linear map / lookup can take the fused kernels."""
    return (
        weight.dim() == 2
        and weight.is_contiguous()
        and weight.shape[1] % 4 == 0
        and weight.dtype in DTYPES
        and weight.numel() > 0
    )


@triton.jit
def _perturbed_product(
    x,
    w,
    z,
    w_mask,
    scale,
    dtype: tl.constexpr,
    MANUAL_BF16: tl.constexpr,
    DOT_F32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """x · fl(w + scale·z)ᵀ for one tile (float32), the perturbed tile rounded to ``dtype`` as
    the copy kernel rounds it; masked weights count as 0."""
    perturbed = tl.where(w_mask, rounded(w + scale * z, dtype, MANUAL_BF16), 0.0)
    if DOT_F32:  # the interpreter's dot: see perturbed_linear
        return tl.dot(x.to(tl.float32), tl.trans(perturbed.to(tl.float32)), input_precision=PRECISION)
    return tl.dot(x, tl.trans(perturbed.to(dtype)), input_precision=PRECISION)


@triton.jit
def _perturbed_linear_kernel(
    x_ptr,
    x2_ptr,
    w_ptr,
    b_ptr,
    b2_ptr,
    out_ptr,
    out2_ptr,
    M,
    N,
    K,
    key,
    scale,
    scale2,
    HAS_BIAS: tl.constexpr,
    PAIR: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GAUSSIAN: tl.constexpr,
    WIDE: tl.constexpr,
    MANUAL_BF16: tl.constexpr,
    DOT_F32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """out = x·fl(W + scale·Z)ᵀ (+ b); with PAIR also out2 = x2·fl(W + scale2·Z)ᵀ (+ b2), from the
    same tiles of W and Z. x, x2: [M, K]; W: [N, K] row-major; out, out2: [M, N]."""
    # row offsets of x and out in 64 bits: M·N passes 2³¹ for full-vocabulary logits of long batches
    rm = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    if WIDE:
        rn = rn.to(tl.int64)
    m_mask, n_mask = rm < M, rn < N
    dtype = w_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_mask = rk < K
        x_mask = m_mask[:, None] & k_mask[None, :]
        w_mask = n_mask[:, None] & k_mask[None, :]
        row_start = rn[:, None] * K + k0  # element index of the tile row's first element
        w = tl.load(w_ptr + row_start + tl.arange(0, BLOCK_K)[None, :], mask=w_mask, other=0.0).to(tl.float32)
        # K and k0 are multiples of 4: each tile row starts on a Gaussian Philox counter
        z = draw_rows(key, row_start, BLOCK_K, GAUSSIAN)
        x = tl.load(x_ptr + rm[:, None] * K + rk[None, :], mask=x_mask, other=0.0)
        acc += _perturbed_product(x, w, z, w_mask, scale, dtype, MANUAL_BF16, DOT_F32, PRECISION)
        if PAIR:
            x2 = tl.load(x2_ptr + rm[:, None] * K + rk[None, :], mask=x_mask, other=0.0)
            acc2 += _perturbed_product(x2, w, z, w_mask, scale2, dtype, MANUAL_BF16, DOT_F32, PRECISION)
    out_mask = m_mask[:, None] & n_mask[None, :]
    out_offsets = rm[:, None] * N + rn[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    store_rounded(out_ptr + out_offsets, acc, out_mask, MANUAL_BF16)
    if PAIR:
        if HAS_BIAS:
            acc2 += tl.load(b2_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        store_rounded(out2_ptr + out_offsets, acc2, out_mask, MANUAL_BF16)


@triton.jit
def _perturbed_gather_kernel(
    ids_ptr,
    w_ptr,
    out_ptr,
    T,
    COLS,
    key,
    scale,
    BLOCK_T: tl.constexpr,
    BLOCK_C: tl.constexpr,
    GAUSSIAN: tl.constexpr,
    MANUAL_BF16: tl.constexpr,
):
    """out[t] = fl(W[ids[t]] + scale·Z[ids[t]]): only the looked-up rows are read and drawn."""
    rt = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    c0 = tl.program_id(1) * BLOCK_C
    rc = c0 + tl.arange(0, BLOCK_C)
    t_mask = rt < T
    mask = t_mask[:, None] & (rc < COLS)[None, :]
    row_start = tl.load(ids_ptr + rt, mask=t_mask, other=0).to(tl.int64)[:, None] * COLS + c0
    w = tl.load(w_ptr + row_start + tl.arange(0, BLOCK_C)[None, :], mask=mask, other=0.0).to(tl.float32)
    z = draw_rows(key, row_start, BLOCK_C, GAUSSIAN)
    store_rounded(out_ptr + rt.to(tl.int64)[:, None] * COLS + rc[None, :], w + scale * z, mask, MANUAL_BF16)


def _check(weight: torch.Tensor, distribution: str) -> bool:
    """Refuse what the kernels cannot take; the GAUSSIAN flag for ``distribution``."""
    flag = gaussian(distribution)
    if not fusable(weight):
        raise ValueError(
            f"fused kernels need a contiguous 2-D fp32/fp16/bf16 weight with a row length "
            f"divisible by 4; got {tuple(weight.shape)} {weight.dtype}"
        )
    return flag


def _linear_outputs(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    x_minus: torch.Tensor | None,
    bias_minus: torch.Tensor | None,
    outs: tuple[torch.Tensor | None, torch.Tensor | None],
) -> list[torch.Tensor]:
    """Check ``perturbed_linear``'s operands; the output tensors (the given ones, else new)."""
    n, k = weight.shape
    if x.shape[-1] != k or x.dtype != weight.dtype:
        raise ValueError(
            f"perturbed_linear: x is {tuple(x.shape)} {x.dtype}, weight {tuple(weight.shape)} {weight.dtype}"
        )
    if x_minus is not None and (x_minus.shape != x.shape or x_minus.dtype != x.dtype):
        raise ValueError("perturbed_linear: x and x_minus differ in shape or dtype")
    if x_minus is not None and bias is not None and bias_minus is None:
        raise ValueError("perturbed_linear: a pair with a bias needs bias_minus")
    shape = (*x.shape[:-1], n)
    given = outs if x_minus is not None else outs[:1]
    result = [o if o is not None else torch.empty(shape, dtype=x.dtype, device=x.device) for o in given]
    if any(o.shape != shape or o.dtype != x.dtype or not o.is_contiguous() for o in result):
        raise ValueError(f"perturbed_linear: out must be contiguous {x.dtype} of shape {shape}")
    return result


def _tile_options(weight: torch.Tensor, block_m: int, wide: bool) -> dict:
    """The compile-time options of ``_perturbed_linear_kernel`` that follow from the weight and
    the tile: tile sizes, index width, bf16 rounding, dot precision, warps and pipeline stages."""
    return dict(
        BLOCK_M=block_m,
        BLOCK_N=BLOCK_N,
        BLOCK_K=BLOCK_K,
        WIDE=wide,
        MANUAL_BF16=manual_bf16(weight),
        # the interpreter multiplies bf16 operands through numpy, which has no bfloat16:
        # there both operands are widened (exactly) to float32 first
        DOT_F32=interpreted(),
        # fp32 products as torch computes them (no TF32); other dtypes: the default
        PRECISION="ieee" if weight.dtype == torch.float32 else None,
        num_warps=8 if block_m == 128 else 4,
        # pipeline stages hold x, x₋ and W tiles in shared memory: fewer for the big ones
        num_stages=2 if block_m == 128 or weight.dtype == torch.float32 else 3,
    )


def perturbed_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    key: int,
    distribution: str,
    scale: float,
    x_minus: torch.Tensor | None = None,
    bias_minus: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    out_minus: torch.Tensor | None = None,
    scale_minus: float | None = None,
):
    """``F.linear(x, fl(W + scale·Z), bias)`` without forming ``fl(W + scale·Z)``; given
    ``x_minus``, also ``F.linear(x_minus, fl(W + scale_minus·Z), bias_minus)`` (``scale_minus``
    default -scale: the mirrored pair) from the same tiles (returns the pair). ``key`` =
    mix_seed(step_seed, pid), Z the Triton backend's z of W. ``out`` / ``out_minus``: contiguous
    tensors to write the results into (e.g. two slices of one batch), else new ones."""
    is_gaussian = _check(weight, distribution)
    outs = _linear_outputs(x, weight, bias, x_minus, bias_minus, (out, out_minus))
    n, k = weight.shape
    flat = [t.reshape(-1, k).contiguous() for t in ([x] if x_minus is None else [x, x_minus])]
    m = flat[0].shape[0]
    if m:
        block_m, plan = _block_m(m), linear_launch(m, n, k)  # grid and index width: launch.py
        _perturbed_linear_kernel[plan.grid](
            flat[0],
            flat[-1],
            weight,
            bias if bias is not None else weight,
            bias_minus if x_minus is not None and bias is not None else weight,
            outs[0],
            outs[-1],
            m,
            n,
            k,
            key,
            float(scale),
            float(-scale if scale_minus is None else scale_minus),
            HAS_BIAS=bias is not None,
            PAIR=x_minus is not None,
            GAUSSIAN=is_gaussian,
            **_tile_options(weight, block_m, plan.wide),
        )
    return (outs[0], outs[1]) if x_minus is not None else outs[0]


def perturbed_gather(
    ids: torch.Tensor, weight: torch.Tensor, key: int, distribution: str, scale: float
) -> torch.Tensor:
    """``F.embedding(ids, fl(W + scale·Z))``, reading and drawing only the rows in ``ids``."""
    is_gaussian = _check(weight, distribution)
    flat = ids.reshape(-1).contiguous()
    rows, cols = weight.shape
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= rows):
        raise IndexError(
            f"index out of range in self: ids in [{int(flat.min())}, {int(flat.max())}], embedding of {rows} rows"
        )
    out = torch.empty(flat.shape[0], cols, dtype=weight.dtype, device=weight.device)
    if flat.numel():
        _perturbed_gather_kernel[gather_launch(flat.numel(), cols).grid](
            flat,
            weight,
            out,
            flat.numel(),
            cols,
            key,
            float(scale),
            BLOCK_T=GATHER_ROWS,
            BLOCK_C=GATHER_COLS,
            GAUSSIAN=is_gaussian,
            MANUAL_BF16=manual_bf16(weight),
        )
    return out.view(*ids.shape, cols)
