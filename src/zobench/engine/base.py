"""The engine contract every backend implements.

A ZO optimizer never touches weights itself. It asks the engine to

* ``perturb(params, direction, scale)``: make the next forward evaluate L(θ + scale·z);
* ``restore(params)``: make the next forward evaluate L(θ) again;
* ``update(params, direction, coeff, decay)``: θ ← (1 - decay)·θ + coeff·z  (the only write
  to the weights; ``decay`` = lr·weight_decay, ``coeff`` = -lr·g for SGD-like methods);
* ``restore_and_update(...)``: both, in one sweep when the update's direction is the one
  applied (MeZO: 3 sweeps per step instead of 4).

Optional capabilities (``supports_dual`` / ``replica_support``), for engines that see the model:

* ``dual(params, direction)``: a context in which the forward evaluates θ as forward-mode dual
  tensors (θ, z), so the loss carries the directional derivative ∇L·z as its tangent;
* ``replicas(params, directions, scale)``: a context in which ONE forward whose batch is the
  caller's batch repeated N times (replica-major) evaluates replica i at θ + scale·z_i.
* ``mirrored(params, direction, scale)`` (``mirror_support``): a context in which ONE forward of
  the batch repeated twice evaluates θ + scale·z (first half) and θ - scale·z (second half),
  each parameter's z drawn once for both: SPSA's two evaluations for the draws of one (the
  virtual engine's replica path with the replicas (z, +scale), (z, -scale)).

``params`` is a list of ``(pid, tensor)``: ``pid`` is the stable parameter id that seeds z, fixed
by the optimizer at construction (its index in the flat parameter list).
"""

from __future__ import annotations

import functools
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import contextmanager

import torch

from . import trace
from .directions import Direction, Piece
from .provider import Provider, TorchProvider

ZOParams = Sequence[tuple[int, torch.Tensor]]

#: the engine calls that are a step's phases (``trace.phase``: what a stall report names)
PHASES = ("perturb", "restore", "update", "restore_and_update", "foreach", "mirrored", "replicas", "dual")


def _traced(name: str, method):
    """``method`` inside ``trace.phase(name)``; a subclass calling the base's method (same name)
    stays in the one phase."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if trace.current_phase() == name:
            return method(self, *args, **kwargs)
        with trace.phase(name):
            return method(self, *args, **kwargs)

    wrapper.__dict__["_zobench_traced"] = True  # what _trace_phases checks: wrap once
    return wrapper


def _trace_phases(cls) -> None:
    for name in PHASES:
        method = cls.__dict__.get(name)
        if (
            method is not None
            and not getattr(method, "__isabstractmethod__", False)
            and not getattr(method, "_zobench_traced", False)
        ):
            setattr(cls, name, _traced(name, method))


class Engine(ABC):
    """Base class: see the module docstring for the contract."""

    #: whether a step with lr=0 leaves every weight bit-identical in every dtype
    exact_restore: bool = False
    #: seconds spent in engine work since the last reset (None: not measured); the benchmark
    #: turns it on, because in virtual mode that work happens inside the model's forward
    seconds: float | None = None
    _sync = None
    #: whether ``dual`` is implemented (forward-mode AD through the model's modules)
    supports_dual: bool = False
    #: how many replicas the next forward evaluates (N inside ``replicas``, else 1): the loop's
    #: forward counter multiplies by it, since one batched call is N forward passes of the batch
    replica_count: int = 1
    #: how θ + s·z, the in-place moves and the update sweeps are computed (``provider.py``)
    provider: Provider = TorchProvider()

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        _trace_phases(cls)  # every backend's perturb / restore / update ... names its phase

    def enable_timing(self, sync=None) -> None:
        """Accumulate engine seconds in ``self.seconds``; ``sync`` (e.g. torch.cuda.synchronize)
        is called around each timed region so asynchronous devices are measured honestly."""
        self.seconds, self._sync = 0.0, sync

    @contextmanager
    def timed(self):
        if self.seconds is None:
            yield
            return
        if self._sync:
            self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._sync:
                self._sync()
            self.seconds += time.perf_counter() - start

    @abstractmethod
    def perturb(self, params: ZOParams, direction: Direction, scale: float) -> None: ...

    @abstractmethod
    def restore(self, params: ZOParams) -> None: ...

    def dual(self, params: ZOParams, direction: Direction):
        """Context manager: forwards inside it see θ as dual tensors with tangent z (see the
        module docstring). Engines without access to the model's modules cannot do this."""
        raise NotImplementedError(
            f"{type(self).__name__} has no forward-mode (dual) evaluation; use engine.mode=virtual"
        )

    def replica_support(self, params: ZOParams) -> str | None:
        """None if ``replicas`` can evaluate perturbations of ``params``, else the reason it cannot."""
        return f"{type(self).__name__} has no batched replica evaluation"

    def replicas(self, params: ZOParams, directions: Sequence[Direction], scale: float):
        """Context manager: one forward of the batch repeated ``len(directions)`` times evaluates
        replica i at θ + scale·z_i (see the module docstring)."""
        raise NotImplementedError(self.replica_support(params))

    def mirror_support(self, params: ZOParams) -> str | None:
        """None if ``mirrored`` can evaluate ±perturbations of ``params``, else the reason."""
        return f"{type(self).__name__} evaluates one perturbation per forward"

    def mirrored(self, params: ZOParams, direction: Direction, scale: float):
        """Context manager: one forward of the batch repeated twice evaluates θ + scale·z on the
        first half and θ - scale·z on the second (see the module docstring)."""
        raise NotImplementedError(self.mirror_support(params))

    @torch.no_grad()
    def foreach(self, params: ZOParams, direction: Direction, fn) -> None:
        """``fn(pid, p, piece)`` for every parameter ``p``, piece by piece (``Piece``: a flat view
        of the weights and z there, regenerated from ``direction``): the primitive of stateful
        updates (momentum, Adam moments, HiZOO's Σ), which slice their state with ``piece.of``.
        The pieces are ``Direction.chunks`` (Z_CHUNK elements on CPU, else the whole parameter),
        so an elementwise update applied per piece equals the whole-tensor one and never holds a
        parameter-sized temporary. Call after ``restore``."""
        with self.timed(), self.provider.z_scope():
            for pid, p in params:
                work = p if p.is_contiguous() else p.contiguous()  # pieces are views of a flat tensor
                flat = work.view(-1)
                for start, stop, z in direction.chunks(pid, work):
                    fn(pid, p, Piece(flat[start:stop], z, start, stop))
                if work is not p:
                    p.copy_(work)

    @torch.no_grad()
    def visit(self, params: ZOParams, fn, writes: bool = True) -> None:
        """``fn(entries)`` with the weights of ``params`` (``(pid, p)`` pairs) readable, and
        writable in place, with their optimizer state: the primitive of methods that read or
        rewrite whole weights outside a forward (Sparse-MeZO's magnitude thresholds, MeZO-SVRG's
        θ̄ ← θ, DiZO's distances to θ0 and its rescale). Here ``fn(params)`` at once; an
        offloading engine calls it on each block's share with the block resident (``writes``:
        ``fn`` changes weights or state, which must then be stored)."""
        fn(list(params))

    @contextmanager
    def transformed(self, params: ZOParams, enter, leave, exact: bool):
        """Context manager: evaluations inside it see the weights of ``params`` as
        ``enter(entries)`` rewrites them in place; ``leave(entries)`` puts them back when it
        closes (``exact``: bit for bit, e.g. a swap; else with a rounding drift the method
        accepts, e.g. DiZO's rescale and its inverse). Here at once around the block; an
        offloading engine applies them to each block while it is resident for a forward."""
        entries = list(params)
        enter(entries)
        try:
            yield
        finally:
            leave(entries)

    def restore_and_update(self, params: ZOParams, direction: Direction, coeff: float, decay: float = 0.0) -> None:
        """``restore(params)`` then ``update(...)``; backends that move weights fuse the two."""
        self.restore(params)
        self.update(params, direction, coeff, decay)

    @torch.no_grad()
    def update(self, params: ZOParams, direction: Direction, coeff: float, decay: float = 0.0) -> None:
        """θ ← (1 - decay)·θ + coeff·z, z regenerated from ``direction``.

        A zero coefficient is skipped rather than multiplied in, so lr=0 is an exact no-op
        (x + 0·z would turn a stored -0.0 into +0.0).
        """
        if coeff == 0.0 and decay == 0.0:
            return
        with self.timed(), self.provider.z_scope():
            for pid, p in params:
                self.provider.sweep(p, pid, direction, 0.0, decay, coeff)  # z drawn in chunks where it can be


_trace_phases(Engine)
