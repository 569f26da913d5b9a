"""The start-up check of the Triton engine: its kernels against the torch reference, on this machine.

A miscompiled or mis-launched kernel does not crash: it trains on wrong perturbations and reports
plausible numbers. So before the first step on a CUDA device (``engine.self_check=auto``; ``true``
forces it, e.g. on CPU under ``TRITON_INTERPRET=1`` in the tests), for each distinct (weight shape
class, dtype, engine feature in use) the Triton path and the torch reference run on a small slice
of that shape with the same key, and are compared:

* ``z``: the kernels' z (``TritonProvider.sample``) against its definition in pure torch
  (``philox.py``), and, once per distribution on 16384 draws, its statistics: mean 0, variance 1,
  and for Rademacher the balance of signs (each within 6 standard errors);
* ``update``: the fused restore+update sweep θ ← (1 - λ)·(θ + u·z) + c·z against that formula in
  float32, rounded once to θ's dtype (every Triton engine updates, and perturbs in place, by it);
* ``virtual``: θ + s·z (the perturbed copy a module's forward sees) and the layer output on it;
* ``paired``: θ ± s·z from one kernel (the mirrored pair of ``engine.paired``);
* ``streamed``: a block of rows of a streamed weight (an embedding / LM head in virtual mode),
  starting inside the matrix;
* ``fused_linear``: the GEMM that perturbs its tiles (single and ± pair) against ``F.linear`` on
  the reference θ + s·z, and the perturbed embedding gather.

Tolerance (``TOLERANCE``, the contracts the engine tests assert): under the interpreter everything
but a matmul is bit-exact (tests/engine/test_triton_backend.py); compiled, the Rademacher z is
bit-exact, the Gaussian z within 1e-5·(1 + |z|) (the device's log/cos/sin against numpy's), a
perturbed or updated weight within 2 units in the last place of its dtype at the operands'
magnitude (FMA contraction; tests/engine/test_triton_cuda.py), and a layer output within one
rounding of its dtype plus 4·K float32 epsilons of Σ|x·w| (float32 accumulation in another order;
tests/engine/test_triton_fused.py). A kernel off by more is broken on this machine.

On a mismatch: ``engine.backend=triton`` stops with one line naming the shape, dtype, feature and
the largest difference, and how to run with ``engine=torch``; ``engine.backend=auto`` falls back to
the torch engine with a warning that says so (``checked_engine``). The check costs a few kernel
launches per shape class (tiny slices); its time is in the summary (``engine_used.check``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ...errors import ConfigError
from ..directions import Direction, mix_seed
from ..launch import BLOCK, row_block
from ..philox import philox_z_at

log = logging.getLogger(__name__)

FEATURES = ("update", "virtual", "paired", "streamed", "fused_linear")
CHECK_CHOICES = ("auto", True, False)
SLICE_ROWS = 64  # rows of a 2-D weight's slice (compiled); the interpreter takes 8
Z_SAMPLE = 2048  # elements at each end of a slice whose z is compared with the reference
STAT_DRAWS = 16384  # z statistics: standard errors 0.008 (mean), 0.011 (variance)
CHECK_SEED = 20260  # the check's step seed: any fixed value (the key of slice i is mix_seed(seed, i))
TOLERANCE = {
    "z (gaussian, compiled)": "1e-5 * (1 + |z|)",
    "z (rademacher), and everything under the interpreter but a matmul": "bit-exact",
    "weights (compiled)": "2 ulp of the dtype at the operands' magnitude",
    "layer output": "1 ulp of the dtype + 4*K float32 eps of sum|x*w|",
}


class EngineCheckError(ConfigError):
    """The Triton engine disagrees with the torch reference on this machine (one line)."""


@dataclass(frozen=True)
class Case:
    """One comparison: a weight shape class (its full shape), its dtype and an engine feature."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    feature: str


@dataclass
class Mismatch:
    case: Case
    what: str  # which output: z, θ+s·z, layer output, ...
    largest: float  # largest |triton - reference|
    allowed: float  # the tolerance at that element

    def line(self) -> str:
        dtype = str(self.case.dtype).removeprefix("torch.")
        return (
            f"the Triton engine's {self.case.feature} ({self.what}) disagrees with the torch reference on this "
            f"machine for weight shape {tuple(self.case.shape)} {dtype}: largest difference {self.largest:.3g} "
            f"(allowed {self.allowed:.3g}); run with engine=torch to use the torch reference engine"
        )


@dataclass
class Report:
    cases: list[Case] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def summary(self) -> dict:
        """What summary.json records under ``engine_used.check``."""
        return {
            "passed": self.ok,
            "cases": len(self.cases),
            "seconds": round(self.seconds, 4),
            **({"failure": self.mismatches[0].line()} if self.mismatches else {}),
        }


# --- which cases a run needs ---------------------------------------------------------------------


def cases_for(engine, params: Iterable[torch.Tensor]) -> list[Case]:
    """The (shape class, dtype, feature) triples ``engine`` exercises on ``params``: every engine
    updates by the sweep; the virtual engine perturbs copies (paired: ± pairs), streams large
    2-D weights and, with ``fused_linear``, runs the fused GEMM / gather on the weights it fuses."""
    from ..triton import fused
    from ..virtual import VirtualEngine

    virtual = isinstance(engine, VirtualEngine)
    paired = virtual and bool(getattr(engine, "paired", False))
    fusing = virtual and bool(getattr(engine, "fused_linear", False))
    out: dict[Case, None] = {}
    for p in params:
        shape, dtype = tuple(p.shape), p.dtype
        wanted = ["update"]
        if virtual:
            wanted.append("virtual")
            wanted += ["paired"] if paired else []
            if len(shape) == 2 and engine.streams(p):
                wanted.append("streamed")
            if fusing and fused.fusable(p):
                wanted.append("fused_linear")
        out.update({Case(shape, dtype, f): None for f in wanted})
    return list(out)


def slice_shape(shape: tuple[int, ...], interpreted: bool) -> tuple[int, ...]:
    """The small slice a case runs on: a few rows, the whole row length when compiled (the GEMM's
    K loop, the streamed blocks' alignment are those of the real weight); under the interpreter
    rows of at most 255 elements, keeping the row length mod 128 (the kernels' Rademacher word,
    GEMM tile and Philox-counter alignment depend on it)."""
    rows_max = 8 if interpreted else SLICE_ROWS
    cols = shape[-1] if shape else 1
    if interpreted and cols > 255:
        cols = 128 + cols % 128
    if len(shape) <= 1:
        return (cols,)
    return (min(shape[0], rows_max), cols)


# --- the comparisons -----------------------------------------------------------------------------


_ULP_OF_ONE = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def _ulp(magnitude: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One unit in the last place of ``dtype`` at ``magnitude`` (float32 tensors)."""
    return _ULP_OF_ONE[dtype] * torch.exp2(torch.floor(torch.log2(magnitude.clamp_min(2.0**-14))))


class _Checker:
    """Runs the cases of one (device, distribution) and collects the mismatches."""

    def __init__(self, device: torch.device, distribution: str, compiled: bool, fused_linear: bool) -> None:
        from ..triton.engines import TritonProvider

        self.device, self.distribution, self.compiled = device, distribution, compiled
        self.provider = TritonProvider(fused_linear=fused_linear)
        self.direction = Direction(CHECK_SEED, distribution)
        self.report = Report()

    def _compare(self, case: Case, what: str, out: torch.Tensor, ref: torch.Tensor, allowed: torch.Tensor) -> None:
        """Record a mismatch where |out - ref| > allowed (elementwise; NaN is a mismatch)."""
        diff = (out.float() - ref.float()).abs()
        bad = ~(diff <= allowed)  # NaN compares False
        if bool(bad.any()):
            allowed = allowed.expand_as(diff)
            worst = int(torch.nan_to_num(diff - allowed, nan=math.inf).argmax())  # the largest excess
            self.report.mismatches.append(
                Mismatch(case, what, float(diff.flatten()[worst]), float(allowed.flatten()[worst]))
            )

    def _weights_tolerance(self, ref: torch.Tensor, operands: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if not self.compiled:
            return torch.zeros((), device=ref.device)
        magnitude = torch.maximum(ref.float().abs(), operands)
        allowed = 2 * _ulp(magnitude, dtype)
        return allowed + (2.0**-23 * magnitude if dtype != torch.float32 else 0.0)

    def _linear_tolerance(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        terms = x.float().abs() @ w.float().abs().T + b.float().abs()
        return _ulp(ref.abs(), x.dtype) + 4 * x.shape[-1] * torch.finfo(torch.float32).eps * terms

    def statistics(self) -> None:
        """Mean, variance (and sign balance) of the kernels' z on STAT_DRAWS elements."""
        case = Case((STAT_DRAWS,), torch.float32, "z statistics")
        z = self.provider.sample(torch.empty(STAT_DRAWS, device=self.device), 0, self.direction).float().cpu()
        se = 1 / math.sqrt(STAT_DRAWS)
        checks = [("mean", float(z.mean()), 0.0, 6 * se), ("variance", float(z.var()), 1.0, 6 * math.sqrt(2) * se)]
        if self.distribution == "rademacher":
            share = float((z > 0).float().mean())
            checks += [("share of +1", share, 0.5, 3 * se), ("values not ±1", float((z.abs() != 1).sum()), 0.0, 0.0)]
        for what, value, expected, allowed in checks:
            if not abs(value - expected) <= allowed:
                self.report.mismatches.append(Mismatch(case, f"z {what} {value:.4g}", abs(value - expected), allowed))

    def run(self, case: Case, pid: int) -> None:
        shape = slice_shape(case.shape, not self.compiled)
        gen = torch.Generator().manual_seed(pid)
        theta = (torch.randn(shape, generator=gen) * 0.02).to(case.dtype).to(self.device)
        key, d = mix_seed(self.direction.seed, pid), self.direction
        z = self.provider.sample(theta, pid, d)
        # the reference (numpy Philox on the CPU) at the slice's first and last Z_SAMPLE elements: the
        # masked tail and the far counters, at a CPU cost independent of the row length
        n = theta.numel()
        offsets = torch.cat([torch.arange(min(n, Z_SAMPLE)), torch.arange(max(min(n, Z_SAMPLE), n - Z_SAMPLE), n)])
        z_ref = philox_z_at(key, offsets, self.distribution).to(self.device)
        exact_z = not self.compiled or self.distribution == "rademacher"
        z_allowed = torch.zeros(()) if exact_z else 1e-5 * (1 + z_ref.abs())
        self._compare(case, "z", z.flatten()[offsets.to(self.device)], z_ref, z_allowed.to(self.device))
        if len(self.report.mismatches):
            return  # the rest compares against the kernels' z: a wrong z is reported once
        eps = 1e-2
        getattr(self, f"_{case.feature}")(case, pid, theta, z.float(), eps)

    def _update(self, case: Case, pid: int, theta: torch.Tensor, z: torch.Tensor, eps: float) -> None:
        undo, decay, coeff = eps, 1e-4, -3e-3
        out = theta.clone()
        self.provider.sweep(out, pid, self.direction, undo, decay, coeff)
        ref = ((1 - decay) * (theta.float() + undo * z) + coeff * z).to(case.dtype)
        operands = theta.float().abs() + (undo + abs(coeff)) * z.abs()
        self._compare(case, "one update", out, ref, self._weights_tolerance(ref, operands, case.dtype))

    def _perturbed(self, theta: torch.Tensor, z: torch.Tensor, scale: float) -> torch.Tensor:
        return (theta.float() + scale * z).to(theta.dtype)

    def _layer_output(self, case: Case, theta: torch.Tensor, perturbed: torch.Tensor, ref: torch.Tensor) -> None:
        """F.linear of a batch on the kernel's θ + s·z against the reference's (2-D weights)."""
        if theta.dim() != 2:
            return
        x = torch.randn(3, theta.shape[1], generator=torch.Generator().manual_seed(7)).to(theta.dtype).to(self.device)
        bias = torch.zeros(theta.shape[0], dtype=theta.dtype, device=self.device)
        expected = F.linear(x.float(), ref.float())
        self._compare(
            case, "perturbed layer output", F.linear(x.float(), perturbed.float()), expected,
            self._linear_tolerance(x, ref, bias, expected),
        )  # fmt: skip

    def _virtual(self, case: Case, pid: int, theta: torch.Tensor, z: torch.Tensor, eps: float) -> None:
        (out,) = self.provider.values(theta, pid, self.direction, [eps])
        ref = self._perturbed(theta, z, eps)
        operands = theta.float().abs() + eps * z.abs()
        self._compare(case, "θ+εz", out, ref, self._weights_tolerance(ref, operands, case.dtype))
        self._layer_output(case, theta, out, ref)

    def _paired(self, case: Case, pid: int, theta: torch.Tensor, z: torch.Tensor, eps: float) -> None:
        plus, minus = self.provider.values(theta, pid, self.direction, [eps, -eps])
        operands = theta.float().abs() + eps * z.abs()
        for what, out, scale in (("θ+εz of the pair", plus, eps), ("θ-εz of the pair", minus, -eps)):
            ref = self._perturbed(theta, z, scale)
            self._compare(case, what, out, ref, self._weights_tolerance(ref, operands, case.dtype))

    def _streamed(self, case: Case, pid: int, theta: torch.Tensor, z: torch.Tensor, eps: float) -> None:
        """A block of rows that starts inside the weight (its z is the whole tensor's)."""
        from ..triton import kernels

        rows, cols = case.shape[0], theta.shape[1]  # the slice's row length (see slice_shape)
        step = row_block(cols, BLOCK, 1)  # the fewest rows that start a kernel block
        if min(rows, 2 * step) * cols > (1 << 17 if self.compiled else 1 << 15):
            step = 0  # a row length whose blocks are huge: check the first block only
        rows = min(rows, 2 * step) if step else theta.shape[0]
        theta = (torch.randn(rows, cols, generator=torch.Generator().manual_seed(pid)) * 0.02).to(case.dtype)
        theta = theta.to(self.device)
        z = self.provider.sample(theta, pid, self.direction).float()
        first = step if step and rows > step else 0
        key = mix_seed(self.direction.seed, pid)
        ref = self._perturbed(theta, z, eps)[first:]
        operands = (theta.float().abs() + eps * z.abs())[first:]
        allowed = self._weights_tolerance(ref, operands, case.dtype)
        block = kernels.perturbed_rows(theta, key, self.distribution, eps, first, rows)
        self._compare(case, f"rows {first}..{rows} of θ+εz", block, ref, allowed)
        plus, _ = kernels.perturbed_pair(theta, key, self.distribution, eps, first, rows)
        self._compare(case, f"rows {first}..{rows} of the ± pair", plus, ref, allowed)

    def _fused_linear(self, case: Case, pid: int, theta: torch.Tensor, z: torch.Tensor, eps: float) -> None:
        rows, cols = theta.shape
        gen = torch.Generator().manual_seed(pid + 1)
        xs = [torch.randn(5, cols, generator=gen).to(case.dtype).to(self.device) for _ in range(2)]
        biases = [(torch.randn(rows, generator=gen) * 0.1).to(case.dtype).to(self.device) for _ in range(2)]
        for scales in ([eps], [eps, -eps]):
            outs = [torch.empty(5, rows, dtype=case.dtype, device=self.device) for _ in scales]
            n = len(scales)
            if not self.provider.linear(xs[:n], theta, biases[:n], pid, self.direction, scales, outs):
                raise AssertionError(f"fused_linear: weight {tuple(theta.shape)} {case.dtype} was not fused")
            for x, b, s, out in zip(xs, biases, scales, outs):
                ref_w = self._perturbed(theta, z, s)
                expected = F.linear(x.float(), ref_w.float(), b.float())
                what = "fused layer output" + (" of the ± pair" if n == 2 else "")
                self._compare(case, what, out, expected, self._linear_tolerance(x, ref_w, b, expected))
        ids = torch.tensor([rows - 1, 0, rows // 2, rows - 1], device=self.device)
        gathered = self.provider.gather(ids, theta, pid, self.direction, eps)
        ref = self._perturbed(theta, z, eps)
        operands = theta.float().abs() + eps * z.abs()
        assert gathered is not None
        self._compare(
            case, "fused embedding gather", gathered, ref[ids],
            self._weights_tolerance(ref, operands, case.dtype)[ids] if self.compiled else torch.zeros(()),
        )  # fmt: skip


def run_check(cases: Iterable[Case], device, distribution: str = "gaussian") -> Report:
    """Run ``cases`` (deduplicated by slice) on ``device``; every mismatch is in the report."""
    from ..triton.primitives import interpreted

    start = time.perf_counter()
    device = torch.device(device)
    cases = list(cases)
    checker = _Checker(device, distribution, not interpreted(), any(c.feature == "fused_linear" for c in cases))
    checker.report.cases = cases
    checker.statistics()
    seen = set()
    for pid, case in enumerate(cases):
        if checker.report.mismatches:
            break  # one line is what the user gets; the first mismatch is enough
        # one run per slice: the streamed block's rows depend on the whole shape, the rest on the slice
        sliced: tuple[int, ...]
        if case.feature == "streamed":
            cols = slice_shape(case.shape, not checker.compiled)[1]
            sliced = (min(case.shape[0], 2 * row_block(cols, BLOCK, 1)), cols)
        else:
            sliced = slice_shape(case.shape, not checker.compiled)
        slice_key = (sliced, case.dtype, case.feature)
        if slice_key in seen:
            continue
        seen.add(slice_key)
        checker.run(case, pid)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    checker.report.seconds = time.perf_counter() - start
    return checker.report
