"""Data parallelism for ZO methods: every evaluation of the closure is the GLOBAL batch's value.

``train.batch_size`` B is the global batch. Every rank draws the same batch from the same seeded
stream and keeps its contiguous shard ``batch[r·B/W : (r+1)·B/W]``; every rank draws the same z
(z is a pure function of (seed, parameter, element): docs/design.md "Engine"). An evaluation of
the objective on a shard gives a mean ``m_r`` over ``n_r`` units (examples; the gold tokens for
the ``lm`` objective: ``objective.loss_count``), so the global mean is

    L = Σ_r m_r · n_r / Σ_r n_r,

one ``all_reduce(SUM)`` of the vector (m_r·n_r for each of the R losses a batched call returns,
n_r, and this rank's stop request) in float64, so that the sum of a few partial sums does not
depend on their order to within the fp32 result. Every rank gets the same L, hence the same
projected gradient and the same update: replicas stay bit-identical with a few dozen bytes per
evaluation and no parameter traffic (MeZO's ± pair: 2 evaluations × 3 float64 = 48 bytes a step).
Any method that only calls the closure (every ZO method of ``conf/optimizer/``, stateful ones
included) is data parallel unchanged. The ``accuracy`` / ``f1`` objectives (``objective=``) are
means over examples, reduced the same way.

A stop signal (SIGTERM to one rank) must stop every rank at the same step, or they would wait
on each other's collectives: the flag rides in the same all-reduce (MAX taken as "any rank"), and
the loop reads the agreed value (``SyncedStop``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.autograd.forward_ad as fwAD

from ..errors import ConfigError
from .context import DistContext


def shard(batch: Sequence, rank: int, world_size: int) -> list:
    """This rank's contiguous slice of ``batch`` (sizes differ by at most one)."""
    n = len(batch)
    return list(batch[rank * n // world_size : (rank + 1) * n // world_size])


def global_mean(ctx: DistContext, local: torch.Tensor, count: float, stop, phase: str = "train") -> torch.Tensor:
    """The mean over every rank's shard of ``local`` (a scalar or a vector of R per-replica means
    over ``count`` units), in ``local``'s dtype and device; ``stop`` (a ``SyncedStop``) learns
    whether any rank was asked to stop."""
    # a forward-mode dual loss (forward gradient: ∇L·z as its tangent) reduces its tangent too
    primal, tangent = fwAD.unpack_dual(local)
    values = primal.detach().reshape(-1).to("cpu", torch.float64)
    flag = float(stop.local_signum or 0) if stop is not None else 0.0
    parts = [values * count]
    if tangent is not None:
        parts.append(tangent.detach().reshape(-1).to("cpu", torch.float64) * count)
    packed = torch.cat([*parts, torch.tensor([float(count), flag], dtype=torch.float64)])
    # the stop flag is summed: any nonzero total means some rank received a signal
    reduced = ctx.all_reduce(packed, phase=phase)
    if stop is not None and reduced[-1] > 0:
        stop.agree(int(flag) or stop.first_signum(reduced[-1]))
    n = values.numel()
    mean = (reduced[:n] / reduced[-2]).to(local.dtype).to(local.device).reshape(local.shape)
    if tangent is None:
        return mean
    slope = (reduced[n : 2 * n] / reduced[-2]).to(local.dtype).to(local.device).reshape(local.shape)
    return fwAD.make_dual(mean, slope)


class ShardedObjective:
    """An objective whose ``loss`` / ``batch_metric`` of a (global) batch evaluate this rank's shard
    and return the global value; everything else is the wrapped objective's. Bytes sent are counted
    under the ``counter``'s phase (``train``; ``probe`` for the memory probe), as forward passes are."""

    def __init__(self, objective, ctx: DistContext, stop=None, counter=None) -> None:
        if not hasattr(objective, "loss_count"):
            raise ConfigError(
                f"{type(objective).__name__} cannot be data parallel (it has no loss_count); run it in one process"
            )
        self.inner, self.ctx, self.stop, self.counter = objective, ctx, stop, counter
        self.metric = objective.metric

    @property
    def phase(self) -> str:
        return self.counter.current if self.counter is not None else "train"

    def _shard(self, batch: Sequence) -> list:
        if len(batch) < self.ctx.world_size:
            raise ConfigError(
                f"train.batch_size={len(batch)}: the global batch must hold at least one example per rank "
                f"({self.ctx.world_size} ranks)"
            )
        return shard(batch, self.ctx.rank, self.ctx.world_size)

    def loss(self, batch: Sequence, replicas: int = 1) -> torch.Tensor:
        part = self._shard(batch)
        local = self.inner.loss(part) if replicas == 1 else self.inner.loss(part, replicas=replicas)
        return global_mean(self.ctx, local, float(self.inner.loss_count(part)), self.stop, self.phase)

    def batch_metric(self, batch: Sequence) -> float:
        part = self._shard(batch)
        local = torch.tensor(float(self.inner.batch_metric(part)), dtype=torch.float64)
        return float(global_mean(self.ctx, local, float(len(part)), self.stop, self.phase))

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


class SyncedStop:
    """The run's ``StopRequest`` as every rank agrees on it: ``signum`` is set once the signal of
    any rank has gone through a step's all-reduce, so all ranks checkpoint and stop at the same
    step. ``local_signum`` is this rank's own request."""

    def __init__(self, request) -> None:
        self.request = request
        self.signum: int | None = None

    @property
    def local_signum(self) -> int | None:
        return self.request.signum

    def first_signum(self, total: float) -> int:
        """Another rank's signal (the reduced sum of the ranks' signal numbers: one of them when a
        single rank was signalled; SIGTERM otherwise)."""
        import signal

        value = int(total)
        return value if value in {int(s) for s in signal.Signals} else int(signal.SIGTERM)

    def agree(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum

    @property
    def name(self) -> str | None:
        import signal

        return None if self.signum is None else signal.Signals(self.signum).name
