"""Seeded random directions z: a pure function of (step seed, parameter id, element index).

A ZO step never stores z. It keeps one integer seed and regenerates the same z as often as it
needs (perturb, perturb the other way, update). That is MeZO's "in-place seed trick"
(Malladi et al. 2023, Alg. 1), made independent of the global RNG and of the order in which
parameters are visited: every parameter gets its own generator seeded with
``mix_seed(step_seed, parameter_id)``.

Definition of z for the torch backend: Gaussian, ``torch.randn`` drawn in float32 from a
``torch.Generator`` on the parameter's device, seeded as above, then cast to the parameter's
dtype when applied. CPU and CUDA generators are different algorithms (mt19937 vs Philox), so the
Gaussian z is defined per device type; on one device type it is exact and repeatable.
Rademacher: the signs of the bits of Philox4x32-10 keyed by the same seed, 128 elements per
Philox call (``philox.rademacher_z``), one definition for every backend and device: drawing one
random integer per sign (``torch.randint``) was most of FZOO's step on CPU.

Other backends define the Gaussian z differently (the Triton backend: Philox keyed by the same seed, see
``philox.py``). While such an engine works it installs its generator with ``z_source``, so the
``Direction.sample`` of every subclass (HiZOO's z/√Σ, Sparse-MeZO's mask) transforms the z that
backend's kernels generate, and one step never mixes two definitions of z.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch

from .philox import rademacher_z

_MASK64 = (1 << 64) - 1
DISTRIBUTIONS = ("gaussian", "rademacher")


def _splitmix64(x: int) -> int:
    """One step of SplitMix64 (Steele et al. 2014): a bijective 64-bit mixer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*parts: int) -> int:
    """Hash integers into one 63-bit seed; different tuples give unrelated seeds."""
    h = 0
    for part in parts:
        h = _splitmix64(h ^ (int(part) & _MASK64))
    return h & ((1 << 63) - 1)


# generate(key, like, distribution) -> float32 z shaped like ``like``; None: the torch definition
_Z_SOURCE: ContextVar[Callable | None] = ContextVar("zobench_z_source", default=None)


@contextmanager
def z_source(generate: Callable):
    """Within the block, ``Direction.sample`` draws z with ``generate(mix_seed(seed, pid), like,
    distribution)`` instead of torch's generator: how a backend with its own z keeps the
    directions that transform z consistent with its kernels."""
    token = _Z_SOURCE.set(generate)
    try:
        yield
    finally:
        _Z_SOURCE.reset(token)


@dataclass(frozen=True, eq=False)
class Direction:
    """The random direction of one ZO estimate: z = Direction(seed).sample(pid, param).

    ``seed`` is the step seed (optimizers derive it from their own seed and step counter);
    ``distribution`` is ``gaussian`` (z ~ N(0, I)) or ``rademacher`` (z ∈ {-1, +1}^d).
    Engines tell directions apart by identity: a step reuses one object for all its sweeps.
    Methods whose perturbation is an elementwise transform of z (HiZOO's z/√Σ, a sparsity mask)
    subclass this and override ``transform``, so their z is still drawn piece by piece
    (``chunks``); one that is not elementwise (a low-rank product) overrides ``sample``.
    """

    seed: int
    distribution: str = "gaussian"

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution={self.distribution!r}: allowed {', '.join(DISTRIBUTIONS)}")

    def sample(self, pid: int, like: torch.Tensor) -> torch.Tensor:
        """z for parameter ``pid``, shaped like ``like``, float32, on ``like.device``."""
        generate = _Z_SOURCE.get()
        if generate is not None:
            z = generate(mix_seed(self.seed, pid), like, self.distribution)
        else:
            z = self._draw(self._generator(pid, like.device), like.shape, like.device)
        if type(self).transform is Direction.transform:
            return z
        return self.transform(pid, like, 0, like.numel(), z.view(-1)).view(like.shape)

    def transform(self, pid: int, like: torch.Tensor, start: int, stop: int, z: torch.Tensor) -> torch.Tensor:
        """This direction's perturbation on ``like``'s flat elements [start, stop), from the plain
        z there (float32, flat; may be modified in place). Identity: the perturbation is z."""
        return z

    def _generator(self, pid: int, device):
        """The stream z is drawn from, in order: torch's generator (Gaussian) or a cursor on the
        Philox sign bits (Rademacher), seeded / keyed with mix_seed(seed, pid)."""
        if self.distribution == "rademacher":
            return _SignCursor(mix_seed(self.seed, pid))
        gen = torch.Generator(device=device)
        gen.manual_seed(mix_seed(self.seed, pid))
        return gen

    def _draw(self, gen, shape, device) -> torch.Tensor:
        """The next ``prod(shape)`` elements of z from ``gen`` (``_generator``), float32."""
        if self.distribution == "gaussian":
            return torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
        return gen.take(math.prod(shape), device).view(shape)

    def chunkable(self, like: torch.Tensor) -> bool:
        """Whether ``chunks`` can draw this direction's z for ``like`` piece by piece (torch's
        CPU generator, plain z); otherwise it yields the whole z as one piece."""
        return (
            type(self).sample is Direction.sample
            and _Z_SOURCE.get() is None
            and like.device.type == "cpu"
            and like.is_contiguous()
        )

    def chunks(self, pid: int, like: torch.Tensor, size: int | None = None):
        """``(start, stop, z_flat[start:stop])`` covering ``like``'s elements in row-major order:
        the z of ``sample``, drawn ``size`` (default Z_CHUNK, a multiple of 16) elements at a time
        where that gives the same numbers, so that sweeping a parameter needs 4 MB of z instead of
        a parameter-sized z.

        torch's CPU generator fills a long normal draw in order, so consecutive draws of
        n₁, n₂, ... elements equal one draw of n₁ + n₂ + ... provided every piece but the last
        is a multiple of 16 and the last is not shorter than 16 (its Box-Muller tail is redrawn):
        the last chunk absorbs a short tail (tests/engine/test_directions.py checks it). The
        Rademacher z is counter-based (random access): any split gives its numbers. Each
        piece goes through ``transform``. On CUDA (Philox offsets advance per launch), for a
        non-contiguous ``like`` and for directions that override ``sample``, z is drawn whole,
        in one chunk.
        """
        n, size = like.numel(), Z_CHUNK if size is None else int(size)
        if size <= 0 or size % 16:
            raise ValueError(f"chunks: size={size} must be a positive multiple of 16")
        if not self.chunkable(like) or n < 2 * size:
            yield 0, n, self.sample(pid, like).reshape(-1)
            return
        gen = self._generator(pid, like.device)
        start = 0
        while start < n:
            stop = n if n - start < size + 16 else start + size
            yield start, stop, self.transform(pid, like, start, stop, self._draw(gen, (stop - start,), like.device))
            start = stop


class _SignCursor:
    """Rademacher z drawn in order like a generator: ``take(n)`` gives the next n elements'
    signs (``philox.rademacher_z``, random access, so any split of the elements gives the same
    signs)."""

    def __init__(self, key: int) -> None:
        self.key, self.position = key, 0

    def take(self, n: int, device) -> torch.Tensor:
        start, self.position = self.position, self.position + n
        return rademacher_z(self.key, start, self.position, device)


Z_CHUNK = 1 << 20  # elements of z drawn at a time on CPU (a multiple of 16: see Direction.chunks)


def z_pieces(p: torch.Tensor, pid: int, direction: Direction):
    """``(view of p, z there in p's dtype)`` covering ``p``: chunk by chunk where the direction
    allows it (``Direction.chunks``), else (a non-contiguous p) the whole p and its whole z.
    Elementwise updates applied piece by piece equal the whole-tensor ones bit for bit."""
    if not p.is_contiguous():
        yield p, direction.sample(pid, p).to(p.dtype)
        return
    flat = p.view(-1)
    for start, stop, z in direction.chunks(pid, p):
        yield flat[start:stop], z.to(p.dtype)


@dataclass(frozen=True)
class Piece:
    """Elements [start, stop) of one flattened parameter and the direction's z there: what
    ``Engine.foreach`` hands a stateful update, so that it needs no parameter-sized z or
    temporary (each piece is at most ~Z_CHUNK elements on CPU)."""

    weights: torch.Tensor  # flat view of the parameter's elements [start, stop): write the update here
    z: torch.Tensor  # float32 perturbation on those elements (the update may modify it in place)
    start: int
    stop: int

    def of(self, buffer: torch.Tensor) -> torch.Tensor:
        """The same elements of a parameter-shaped contiguous buffer (optimizer state)."""
        return buffer.view(-1)[self.start : self.stop]


def add_z_(p: torch.Tensor, pid: int, direction: Direction, alpha: float) -> None:
    """p ← p + alpha·z (z cast to p's dtype first), with no parameter-sized z on CPU."""
    for target, z in z_pieces(p, pid, direction):
        target.add_(z, alpha=alpha)
