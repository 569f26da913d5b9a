"""Triton backend: z generated inside fused kernels, never materialised (zobench issue 3).

Every sweep over a parameter is one kernel that reads θ, draws z for its block from a
counter-based generator and writes the result: no z tensor exists in memory, and a MeZO step
(Malladi et al. 2023, Alg. 1) costs three sweeps, +εz, -2εz, and one fused restore+update

    θ ← (1 - decay)·(θ + undo·z) + coeff·z        (undo = +ε, coeff = -η·g, decay = η·λ)

instead of four (restore, then update). In virtual mode the weights are never written during the
estimate: the forward pre-hook of each module runs a kernel that writes θ + scale·z into a fresh
tensor swapped in for that module's forward, so z is generated per layer, on the fly, and the
only memory beyond inference is one module's perturbed weights.

Definition of z per backend (the Gaussian z differs; a run is reproducible on one backend):

* torch backend: Gaussian ``torch.randn`` from a ``torch.Generator`` seeded with
  ``mix_seed(step_seed, pid)`` (``directions.py``); mt19937 on CPU, Philox on CUDA.
* triton backend: Philox4x32-10 keyed by ``mix_seed(step_seed, pid)``; element e takes word
  e mod 4 of counter e div 4, through Triton's uniform and Box-Muller transforms on word pairs
  (``tl.randn4x``: 4 normals per Philox evaluation). ``philox.philox_z`` is the same definition
  in pure torch; the kernels match it bit for bit under ``TRITON_INTERPRET=1`` (tested), and to
  a few ulps of float32 log/cos/sin on CUDA.
* Rademacher, both backends: the sign bits of Philox4x32-10 under the same key, 128 elements per
  Philox call (element e: bit e mod 32 of word (e mod 128) div 32 of counter e div 128;
  ``philox.rademacher_z``), bit-exact everywhere.

Arithmetic: every kernel computes in float32 (θ upcast, z float32) and rounds once to θ's dtype;
the torch backend casts z to θ's dtype first and rounds after each sweep. So the fused
restore+update rounds once where the torch in-place engine rounds twice.

Directions that transform z (HiZOO's z/√Σ, Sparse-MeZO's mask, low-rank Z = ABᵀ) override
``Direction.sample``; the kernels only know the plain Gaussian / Rademacher z. For those the
engine falls back to torch arithmetic on a materialised z, but keeps *this* backend's definition
of z: while the engine works, ``directions.z_source`` makes ``Direction.sample`` draw its base z
with the same Philox kernel, so a method that perturbs with a transformed z and updates with the
plain one (HiZOO) sees one z, not two.

Kernels need CUDA tensors, or ``TRITON_INTERPRET=1`` set before this module is imported (then
they run on CPU tensors through Triton's interpreter: slow, for tests).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .directions import Direction, mix_seed, z_source
from .launch import BLOCK, STREAM_BLOCK_ELEMENTS, stream_blocks, sweep_launch
from .torch_backend import STREAM_ELEMENTS, InPlaceEngine, VirtualEngine, perturbed_value, row_block  # noqa: F401


def interpreted() -> bool:
    """Whether the kernels were compiled for Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


# --- kernels -------------------------------------------------------------------------------------


@triton.jit
def _block(numel, BLOCK: tl.constexpr, WIDE: tl.constexpr, first_block=0):
    """Element indices of this program's block (int64 when the tensor needs it), their mask, and
    the block's first element index; the grid starts at ``first_block``."""
    start = tl.program_id(0) + first_block
    if WIDE:
        start = start.to(tl.int64)
    offsets = start * BLOCK + tl.arange(0, BLOCK)
    return offsets, offsets < numel, start * BLOCK


@triton.jit
def _signs(key, first, WIDTH: tl.constexpr, ALIGNED: tl.constexpr):
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
def _draw(key, first, BLOCK: tl.constexpr, GAUSSIAN: tl.constexpr):
    """z of the BLOCK elements from element ``first`` on (a multiple of 4; of 128 for
    Rademacher, BLOCK too). Gaussian: Philox4x32-10 at counters first/4 + 0..BLOCK/4-1, each
    counter's 4 words serving 4 consecutive elements (Box-Muller on word pairs). Rademacher: one
    Philox call per 128 elements, its bits (``_signs``). philox.py is the same definition in
    torch."""
    if GAUSSIAN:
        a, b, c, d = tl.randn4x(key, first // 4 + tl.arange(0, BLOCK // 4))
        # [a0, b0, c0, d0, a1, b1, ...]: element 4k + j is word j of counter k
        return tl.interleave(tl.interleave(a, c), tl.interleave(b, d))
    rows = first + tl.arange(0, BLOCK // 128)[:, None] * 128
    return tl.reshape(_signs(key, rows, 128, True), (BLOCK,))


@triton.jit
def _draw_rows(key, first, WIDTH: tl.constexpr, GAUSSIAN: tl.constexpr):
    """z of rows of WIDTH consecutive elements from the element indices ``first`` ([R, 1],
    multiples of 4; WIDTH ≤ 128 for Rademacher): [R, WIDTH], the elements' z of ``_draw``."""
    if GAUSSIAN:
        a, b, c, d = tl.randn4x(key, first // 4 + tl.arange(0, WIDTH // 4)[None, :])
        return tl.interleave(tl.interleave(a, c), tl.interleave(b, d))
    return _signs(key, first, WIDTH, False)


@triton.jit
def _rounded(x, dtype: tl.constexpr, MANUAL_BF16: tl.constexpr):
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
def _store_rounded(ptrs, x, mask, MANUAL_BF16: tl.constexpr):
    """Store float32 ``x`` rounded to nearest even in the pointer's dtype (``_rounded``)."""
    tl.store(ptrs, _rounded(x, ptrs.dtype.element_ty, MANUAL_BF16), mask=mask)


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
    offsets, mask, first = _block(numel, BLOCK, WIDE)
    z = _draw(key, first, BLOCK, GAUSSIAN)
    theta = tl.load(theta_ptr + offsets, mask=mask).to(tl.float32)
    _store_rounded(theta_ptr + offsets, keep * (theta + undo * z) + coeff * z, mask, MANUAL_BF16)


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
    offsets, mask, first = _block(numel, BLOCK, WIDE, first_block)
    z = _draw(key, first, BLOCK, GAUSSIAN)
    theta = tl.load(theta_ptr + offsets, mask=mask).to(tl.float32)
    _store_rounded(out_ptr + (offsets - first_block * BLOCK), theta + scale * z, mask, MANUAL_BF16)


@triton.jit
def _perturbed_pair_kernel(
    theta_ptr,
    plus_ptr,
    minus_ptr,
    numel,
    key,
    scale,
    first_block,
    BLOCK: tl.constexpr,
    GAUSSIAN: tl.constexpr,
    WIDE: tl.constexpr,
    MANUAL_BF16: tl.constexpr,
):
    """plus ← θ + scale·z, minus ← θ - scale·z from one draw of z (mirrored evaluation), over θ's
    elements [first_block·BLOCK, numel)."""
    offsets, mask, first = _block(numel, BLOCK, WIDE, first_block)
    z = _draw(key, first, BLOCK, GAUSSIAN)
    theta = tl.load(theta_ptr + offsets, mask=mask).to(tl.float32)
    _store_rounded(plus_ptr + (offsets - first_block * BLOCK), theta + scale * z, mask, MANUAL_BF16)
    _store_rounded(minus_ptr + (offsets - first_block * BLOCK), theta + (-scale) * z, mask, MANUAL_BF16)


@triton.jit
def _z_kernel(out_ptr, numel, key, BLOCK: tl.constexpr, GAUSSIAN: tl.constexpr, WIDE: tl.constexpr):
    """out ← z (float32): for stateful updates (``foreach``), transforming directions, and tests."""
    offsets, mask, first = _block(numel, BLOCK, WIDE)
    tl.store(out_ptr + offsets, _draw(key, first, BLOCK, GAUSSIAN), mask=mask)


# --- launchers -----------------------------------------------------------------------------------


def _gaussian(distribution: str) -> bool:
    """The kernels' GAUSSIAN flag for ``distribution`` (checked: gaussian or rademacher)."""
    if distribution not in ("gaussian", "rademacher"):
        raise ValueError(f"distribution={distribution!r}: allowed gaussian, rademacher")
    return distribution == "gaussian"


def _launch(kernel, numel: int, *args, distribution: str, first: int = 0, **constants) -> None:
    """Run ``kernel`` over elements [first, numel) (``first`` a multiple of BLOCK); the grid and
    the index width are ``launch.sweep_launch``'s (int64 once the padded last block passes 2³¹)."""
    gaussian = _gaussian(distribution)
    plan = sweep_launch(numel, first)
    kernel[plan.grid](*args, BLOCK=BLOCK, GAUSSIAN=gaussian, WIDE=plan.wide, **constants)


def _manual_bf16(out: torch.Tensor) -> bool:
    return out.dtype == torch.bfloat16 and interpreted()


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
            MANUAL_BF16=_manual_bf16(target),
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
            MANUAL_BF16=_manual_bf16(out),
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
            MANUAL_BF16=_manual_bf16(out),
        )
    return out


def perturbed_pair(
    p: torch.Tensor, key: int, distribution: str, scale: float, first: int = 0, stop: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [first, stop) (default: all of ``p``, any shape) of ``perturbed_copy`` at +scale and
    at -scale, z generated once for both."""
    source = p.contiguous()
    if first or stop is not None:
        cols = p.shape[1]
        stop = p.shape[0] if stop is None else stop
        start, end, shape = first * cols, stop * cols, (stop - first, cols)
        if start % BLOCK:
            raise ValueError(f"perturbed_pair: row {first} does not start a kernel block of {BLOCK} elements")
    else:
        start, end, shape = 0, p.numel(), p.shape
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
            start // BLOCK,
            first=start,
            distribution=distribution,
            MANUAL_BF16=_manual_bf16(plus),
        )
    return plus, minus


def in_kernel(direction: Direction) -> bool:
    """Whether the kernels generate this direction's z (a plain Gaussian / Rademacher z);
    subclasses transform z in ``sample`` and take the torch path on a materialised z."""
    return type(direction) is Direction


# --- engines -------------------------------------------------------------------------------------


class _TritonSweeps:
    """What both Triton engines share: the update sweep, ``foreach``, and this backend's z for
    every ``Direction.sample`` made while the engine works."""

    @staticmethod
    def check_device(p: torch.Tensor) -> None:
        if p.device.type != "cuda" and not interpreted():
            raise ValueError(
                f"engine.backend=triton: a parameter is on {p.device.type}; the kernels need CUDA "
                "(or TRITON_INTERPRET=1 set before zobench.engine.triton_backend is imported)"
            )

    @torch.no_grad()
    def update(self, params, direction: Direction, coeff: float, decay: float = 0.0) -> None:
        """θ ← (1 - decay)·θ + coeff·z in one sweep; lr=0 (nothing to do) writes nothing."""
        if coeff == 0.0 and decay == 0.0:
            return
        if not in_kernel(direction):
            with z_source(generate_z):
                return super().update(params, direction, coeff, decay)
        with self._timed():
            for pid, p in params:
                self.check_device(p)
                sweep(p, mix_seed(direction.seed, pid), direction.distribution, keep=1.0 - decay, coeff=coeff)

    def foreach(self, params, direction: Direction, fn) -> None:
        with z_source(generate_z):
            super().foreach(params, direction, fn)


class TritonInPlaceEngine(_TritonSweeps, InPlaceEngine):
    """MeZO's in-place perturbation with fused Triton sweeps (3 per SPSA step)."""

    exact_restore = False

    def perturb(self, params, direction: Direction, scale: float) -> None:
        with z_source(generate_z):
            super().perturb(params, direction, scale)

    def restore(self, params) -> None:
        with z_source(generate_z):
            super().restore(params)

    def _move(self, pid: int, p: torch.Tensor, direction: Direction, delta: float) -> None:
        if delta == 0.0:
            return
        if in_kernel(direction):
            self.check_device(p)
            sweep(p, mix_seed(direction.seed, pid), direction.distribution, coeff=delta)
        else:
            p.add_(direction.sample(pid, p).to(p.dtype), alpha=delta)

    @torch.no_grad()
    def restore_and_update(self, params, direction: Direction, coeff: float, decay: float = 0.0) -> None:
        """θ ← (1 - decay)·(θ - s·z) + coeff·z in one sweep, s the scale currently applied."""
        if not in_kernel(direction):
            with z_source(generate_z):
                return super().restore_and_update(params, direction, coeff, decay)
        with self._timed(), z_source(generate_z):
            for pid, p in params:
                undo = self._take_undo(pid, p, direction)
                if undo == 0.0 and decay == 0.0 and coeff == 0.0:
                    continue
                self.check_device(p)
                sweep(
                    p, mix_seed(direction.seed, pid), direction.distribution, undo=undo, keep=1.0 - decay, coeff=coeff
                )


class TritonVirtualEngine(_TritonSweeps, VirtualEngine):
    """Exact perturbation: each module's θ + scale·z is written by a kernel into a fresh tensor
    for the duration of that module's forward (z generated per layer, never stored).

    ``fused_linear=True`` (``engine.fused_linear``): no θ + scale·z is written for 2-D weights
    that ``triton_fused.fusable`` accepts; their ``F.linear`` calls run a GEMM that perturbs the
    weight tiles in registers, their ``F.embedding`` calls gather only the looked-up rows
    (``triton_fused``), for single, mirrored (±) and replica evaluations alike. Such weights are
    handled like streamed ones: any other use of them gets the whole θ + scale·z."""

    exact_restore = True

    def __init__(self, model, stream_elements=STREAM_ELEMENTS, paired: bool = True, fused_linear: bool = False) -> None:
        super().__init__(model, stream_elements=stream_elements, paired=paired)
        from . import triton_fused  # it builds on this module's kernels

        self._fused_kernels = triton_fused
        self.fused_linear = bool(fused_linear)

    # -- fused linear / embedding (engine.fused_linear) -----------------------------------------
    def _fuses(self, weight: torch.Tensor, direction: Direction) -> bool:
        return self.fused_linear and in_kernel(direction) and self._fused_kernels.fusable(weight)

    def _streams(self, p: torch.Tensor) -> bool:
        return super()._streams(p) or (self.fused_linear and self._fused_kernels.fusable(p))

    def _streamed_linear(self, x, weight, bias, blocks=None, out=None):
        if blocks is None:
            pid, direction, scale = self._active[id(weight)]
            if self._fuses(weight, direction) and x.dtype == weight.dtype:
                self.check_device(weight)
                return self._fused_kernels.perturbed_linear(
                    x, weight.detach(), bias, mix_seed(direction.seed, pid), direction.distribution, scale, out=out
                )
        return super()._streamed_linear(x, weight, bias, blocks, out)

    def _streamed_embedding(self, ids, weight, blocks=None):
        if blocks is None:
            pid, direction, scale = self._active[id(weight)]
            if self._fuses(weight, direction):
                self.check_device(weight)
                return self._fused_kernels.perturbed_gather(
                    ids, weight.detach(), mix_seed(direction.seed, pid), direction.distribution, scale
                )
        return super()._streamed_embedding(ids, weight, blocks)

    def _mirrored_linear(self, x, weight, bias):
        entry = self._mirror.get(id(weight))
        if entry is None or not self._fuses(weight, entry[1]) or x.dtype != weight.dtype:
            return super()._mirrored_linear(x, weight, bias)
        pid, direction, scale = entry
        self.check_device(weight)
        n = self._halves(x)
        plus_bias, minus_bias = self._pair(bias) if bias is not None else (None, None)
        out = x.new_empty(*x.shape[:-1], weight.shape[0])
        self._fused_kernels.perturbed_linear(
            x[:n],
            weight.detach(),
            plus_bias,
            mix_seed(direction.seed, pid),
            direction.distribution,
            scale,
            x_minus=x[n:],
            bias_minus=minus_bias,
            out=out[:n],
            out_minus=out[n:],
        )
        return out

    def _mirrored_embedding(self, ids, weight):
        entry = self._mirror.get(id(weight))
        if entry is None or not self._fuses(weight, entry[1]):
            return super()._mirrored_embedding(ids, weight)
        pid, direction, scale = entry
        self.check_device(weight)
        n, key = self._halves(ids), mix_seed(direction.seed, pid)
        gather = self._fused_kernels.perturbed_gather
        return torch.cat(
            [
                gather(ids[:n], weight.detach(), key, direction.distribution, scale),
                gather(ids[n:], weight.detach(), key, direction.distribution, -scale),
            ]
        )

    def _replica_split_linear(self, x, weight, bias):
        entry = self._replica.get(id(weight))
        if (
            entry is None
            or x.dtype != weight.dtype
            or not all(self._fuses(weight, direction) for direction in entry[1])
        ):
            return super()._replica_split_linear(x, weight, bias)
        pid, directions, scale = entry
        self.check_device(weight)
        n = self._replica_rows(x)
        out = x.new_empty(*x.shape[:-1], weight.shape[0])
        for i, (xi, oi) in enumerate(zip(x.chunk(n), out.chunk(n))):
            b = None if bias is None else self._replica_value(bias, i)
            self._fused_kernels.perturbed_linear(
                xi, weight.detach(), b, mix_seed(directions[i].seed, pid), directions[i].distribution, scale, out=oi
            )
        return out

    def _replica_split_embedding(self, ids, weight):
        entry = self._replica.get(id(weight))
        if entry is None or not all(self._fuses(weight, direction) for direction in entry[1]):
            return super()._replica_split_embedding(ids, weight)
        pid, directions, scale = entry
        self.check_device(weight)
        n = self._replica_rows(ids)
        return torch.cat(
            [
                self._fused_kernels.perturbed_gather(
                    ids_i, weight.detach(), mix_seed(d.seed, pid), d.distribution, scale
                )
                for ids_i, d in zip(ids.chunk(n), directions)
            ]
        )

    def _perturbed_value(self, p: torch.Tensor, pid: int, direction: Direction, scale: float) -> torch.Tensor:
        if in_kernel(direction):
            self.check_device(p)
            return perturbed_copy(p, mix_seed(direction.seed, pid), direction.distribution, scale)
        with z_source(generate_z):
            return perturbed_value(p, pid, direction, scale)

    def _perturbed_blocks(self, p: torch.Tensor, pid: int, direction: Direction, scale: float):
        if not in_kernel(direction):
            yield 0, p.shape[0], self._perturbed_value(p, pid, direction, scale)
            return
        self.check_device(p)
        key = mix_seed(direction.seed, pid)
        for first, stop in stream_blocks(*p.shape, STREAM_BLOCK_ELEMENTS):
            yield first, stop, perturbed_rows(p, key, direction.distribution, scale, first, stop)

    def _perturbed_pair(self, p: torch.Tensor, pid: int, direction: Direction, scale: float):
        if not in_kernel(direction):
            return self._perturbed_value(p, pid, direction, scale), self._perturbed_value(p, pid, direction, -scale)
        self.check_device(p)
        return perturbed_pair(p, mix_seed(direction.seed, pid), direction.distribution, scale)

    def _perturbed_pair_blocks(self, p: torch.Tensor, pid: int, direction: Direction, scale: float):
        if not in_kernel(direction):
            yield (0, p.shape[0], *self._perturbed_pair(p, pid, direction, scale))
            return
        self.check_device(p)
        key = mix_seed(direction.seed, pid)
        for first, stop in stream_blocks(*p.shape, STREAM_BLOCK_ELEMENTS):
            yield (first, stop, *perturbed_pair(p, key, direction.distribution, scale, first, stop))

    def _sample(self, direction: Direction, pid: int, p: torch.Tensor) -> torch.Tensor:
        """The Philox z of the kernels, for forward-mode (dual) and batched-replica evaluations:
        without it those evaluations would measure along torch's z while the update sweeps move
        along this backend's (batched FZOO and the forward gradient silently not learning)."""
        if in_kernel(direction):
            self.check_device(p)
            return generate_z(mix_seed(direction.seed, pid), p, direction.distribution)
        with z_source(generate_z):
            return direction.sample(pid, p)
