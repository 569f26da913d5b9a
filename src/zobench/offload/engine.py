"""``OffloadEngine``: an engine whose updates of offloaded blocks are deferred to their arrival.

It wraps the engine the config asks for (the virtual engine, torch or Triton) and passes every
evaluation through unchanged: ``perturb`` / ``mirrored`` / ``replicas`` / ``dual`` act in the
modules' forward hooks, which run while the block is resident (``executor.py``). An ``update``
(or ``restore_and_update``) is split: resident parameters (embeddings, final norm, LM head) are
updated now by the inner engine; block parameters get a ``PendingUpdate`` that the executor
applies with the inner engine's ``update`` when the block next arrives, the same arithmetic on
the same bits as in memory.

``foreach`` (the stateful methods' primitive: momentum, Adam moments, HiZOO's Σ) and ``visit``
(whole-weight reads and rewrites: Sparse-MeZO, MeZO-SVRG, DiZO) run at once, block by block, each
block brought in with its parameters' optimizer state from the store and written back with it
(``Offloader.with_state``): the state streams with its block. ``transformed`` (MeZO-SVRG's
evaluation at θ̄, DiZO's rescaled evaluations) rewrites each block while it is resident for the
forward (``Offloader.begin_transform``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from contextlib import contextmanager

from ..engine import Direction, Engine
from ..engine.base import ZOParams
from .executor import Offloader


class OffloadEngine(Engine):
    """``inner`` with deferred updates of the blocks ``offloader`` streams (module docstring)."""

    def __init__(self, inner: Engine, offloader: Offloader) -> None:
        if inner.exact_restore is False:
            raise ValueError("offload needs engine.mode=virtual (the weights never move during an estimate)")
        self.inner, self.offloader = inner, offloader
        self.provider = inner.provider
        self.exact_restore = inner.exact_restore
        self.supports_dual = inner.supports_dual
        offloader.apply = inner.update

    def bind(self, optimizer) -> None:
        """Stamp deferred updates with ``optimizer``'s step (the step a stored block is at)."""
        self.offloader.step_of = lambda: int(optimizer.param_groups[0]["step"])
        self.offloader.optimizer_state = optimizer.state

    @property  # the inner engine's: the loop's forward counter reads it
    def replica_count(self) -> int:
        return self.inner.replica_count

    @replica_count.setter
    def replica_count(self, value: int) -> None:
        self.inner.replica_count = value

    @property  # the inner engine's timing (``enable_timing``)
    def seconds(self) -> float | None:
        return self.inner.seconds

    @seconds.setter
    def seconds(self, value: float | None) -> None:
        self.inner.seconds = value

    def enable_timing(self, sync=None) -> None:
        self.inner.enable_timing(sync)

    # -- evaluations: the inner engine's, in the resident block's hooks --------------------------
    def perturb(self, params: ZOParams, direction: Direction, scale: float) -> None:
        self.inner.perturb(params, direction, scale)

    def restore(self, params: ZOParams) -> None:
        self.inner.restore(params)

    def dual(self, params: ZOParams, direction: Direction):
        return self.inner.dual(params, direction)

    def replica_support(self, params: ZOParams) -> str | None:
        return self.inner.replica_support(params)

    def replicas(self, params: ZOParams, directions: Sequence[Direction], scale: float):
        return self.inner.replicas(params, directions, scale)

    def mirror_support(self, params: ZOParams) -> str | None:
        return self.inner.mirror_support(params)

    def mirrored(self, params: ZOParams, direction: Direction, scale: float):
        return self.inner.mirrored(params, direction, scale)

    # -- updates: now for resident parameters, on arrival for the blocks' ---------------------------
    def update(self, params: ZOParams, direction: Direction, coeff: float, decay: float = 0.0) -> None:
        if coeff == 0.0 and decay == 0.0:  # lr=0 writes nothing (Engine.update)
            return
        resident = [(pid, p) for pid, p in params if not self.offloader.is_offloaded(p)]
        deferred = [(pid, p) for pid, p in params if self.offloader.is_offloaded(p)]
        if resident:
            self.inner.update(resident, direction, coeff, decay)
        if deferred:
            self.offloader.defer(deferred, direction, coeff, decay)

    def restore_and_update(self, params: ZOParams, direction: Direction, coeff: float, decay: float = 0.0) -> None:
        self.inner.restore(params)
        self.update(params, direction, coeff, decay)

    def _split(self, params: ZOParams) -> tuple[list, dict[int, list]]:
        """``(resident entries, {block: its entries})`` of ``params``."""
        resident = [(pid, p) for pid, p in params if not self.offloader.is_offloaded(p)]
        by_block: dict[int, list] = {}
        for pid, p in params:
            if self.offloader.is_offloaded(p):
                by_block.setdefault(self.offloader.block_of[id(p)], []).append((pid, p))
        return resident, dict(sorted(by_block.items()))

    def visit(self, params: ZOParams, fn, writes: bool = True) -> None:
        """``fn`` on the resident parameters now, then on each block's share with the block and
        its state resident (``Offloader.with_state``): a read of every block it touches, and a
        write where ``writes`` (or a pending update was applied)."""
        resident, by_block = self._split(params)
        if resident:
            self.inner.visit(resident, fn, writes)
        for i, entries in by_block.items():
            self.offloader.with_state(i, functools.partial(fn, entries), update=False, writes=writes)

    @contextmanager
    def transformed(self, params: ZOParams, enter, leave, exact: bool):
        """The resident parameters rewritten now; each block's share while the block is resident
        for a forward (``Offloader.begin_transform``: an exact rewrite undone as the block leaves,
        an inexact one's inverse queued for its next arrival)."""
        resident, by_block = self._split(params)
        if resident:
            enter(resident)
        self.offloader.begin_transform(by_block, enter, leave, exact)
        try:
            yield
        finally:
            self.offloader.end_transform()
            if resident:
                leave(resident)

    def foreach(self, params: ZOParams, direction: Direction, fn) -> None:
        """Stateful updates (momentum, Adam moments) now, block by block: each block is brought
        in with its optimizer state (``Offloader.with_state``), updated, written back. Not deferred:
        ``fn`` may read values of the caller's loop that change after it returns."""
        resident = [(pid, p) for pid, p in params if not self.offloader.is_offloaded(p)]
        if resident:
            self.inner.foreach(resident, direction, fn)
        by_block: dict[int, list] = {}
        for pid, p in params:
            if self.offloader.is_offloaded(p):
                by_block.setdefault(self.offloader.block_of[id(p)], []).append((pid, p))
        for i, entries in sorted(by_block.items()):
            self.offloader.with_state(i, functools.partial(self.inner.foreach, entries, direction, fn))
