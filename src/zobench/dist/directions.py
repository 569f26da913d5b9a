"""Direction parallelism (``dist.mode=directions``): the ranks split a step's directions.

FZOO evaluates N directions per step, MeZO's n-SPSA q (2q passes): their losses only meet in
the update, θ ← θ - η Σ_i c(ℓ_i, ...) z_i. Rank r evaluates directions
``r·N/W .. (r+1)·N/W - 1`` (contiguous; when W does not divide N the shares differ by one, and a
rank whose share is empty only waits) on the WHOLE batch, the per-direction results (FZOO: ℓ_i;
MeZO: (g_i, ℓ+_i, ℓ-_i)) are all-gathered (float64, so the fp32 losses travel exactly) and every
rank applies the same combined update from the same numbers. Each direction is evaluated exactly
as one process evaluates it (same batch, same z), so the result equals the single-process step
up to the rounding of batched replica calls of another size. Per step W·⌈N/W⌉·k float64 move.
The methods declare the split (``splits_directions``) and take a ``DirectionShare`` through
``ZOOptimizer.share_directions``; others are refused with one line. The data stream, ℓ0 and the
update run on every rank; the summary's ``forward_passes`` counts ℓ0 once and every direction
once (the single-process count).

In-place engines (``engine.mode=inplace``, and the sharded engine) write θ ± εz into the weights,
and MeZO's +ε, -2ε, +ε does not give θ back bit for bit: one process evaluates direction i on θ
with the rounding of directions 0..i-1 in it. So that every rank evaluates its directions on the
same bits and ends the estimate on the same bits (replicas that stay identical, and the
single-process result), a rank also REPLAYS the engine moves of the other ranks' directions, in
order, with the objective answering 0 without a forward (``Replay``): 3 sweeps of its weights per
direction of the others, no forward pass, no collective. The virtual engine writes nothing and
replays nothing.

Composed with sharding (``dist.mode=directions dist.shard_size=S``, ``sharded_strategy.ShardedDirections``):
a (W/S, S) device mesh whose S ranks of a row hold one FSDP2-sharded replica (``sharded.py``) and
compute its shards of the batch (the losses reduced over the row only: ``GroupContext``), and
whose W/S rows split the directions as above (row g plays the part of rank g). The sharded engine
is in place, so the rows replay each other's moves on their shards.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.distributed as tdist

from ..errors import ConfigError
from .context import DistContext


def share(count: int, rank: int, world_size: int) -> list[int]:
    """The direction indices rank ``rank`` evaluates (contiguous; sizes differ by at most one)."""
    return list(range(rank * count // world_size, (rank + 1) * count // world_size))


def require_split(optimizer, instead: str = "dist.mode=data") -> None:
    """Refuse, in one line, a method whose step evaluates one direction (nothing to split): one
    that does not split its directions, or MeZO with ``num_directions=1`` (one rank would do the
    step's work while the others wait). ``instead``: the mode the line suggests."""
    if not getattr(optimizer, "splits_directions", False):
        raise ConfigError(
            f"dist.mode=directions: {type(optimizer).__name__} evaluates one direction per step; "
            f"allowed with fzoo and mezo (num_directions > 1); use {instead}"
        )
    count = optimizer.param_groups[0].get("num_directions", 2) if optimizer.param_groups else 2
    if int(count) < 2:
        raise ConfigError(
            f"dist.mode=directions: optimizer.num_directions={count} is one direction per step, nothing to "
            f"split over the ranks; set optimizer.num_directions > 1 or use {instead}"
        )


class DirectionShare:
    """``share(count, evaluate)``: the optimizer's direction seam (``ZOOptimizer.share_directions``)
    for this rank: its share evaluated here, every rank's results gathered (``gather_directions``).
    ``shard_size`` S: the ranks in groups of S (one sharded replica each) split the directions;
    ``replay``: a ``Replay`` whose evaluations skip the forward (in-place engines, module docstring)."""

    def __init__(self, ctx: DistContext, stop=None, counter=None, shard_size: int = 1, replay=None) -> None:
        self.ctx, self.stop, self.counter = ctx, stop, counter
        self.shard_size, self.replay = shard_size, replay
        self.others = [0]  # the other groups' forward passes added to ``counter`` (a summary's own count)

    def __call__(self, count: int, evaluate) -> list:
        return gather_directions(
            self.ctx, count, evaluate, self.stop, self.counter, self.shard_size, self.replay, self.others
        )


class Replay:
    """While ``active`` (``with replay(): ...``), the wrapped objective answers 0 without a forward:
    an optimizer's evaluation then only makes its engine moves (another rank's directions)."""

    def __init__(self) -> None:
        self.active = False

    @contextmanager
    def __call__(self):
        self.active, previous = True, self.active
        try:
            yield
        finally:
            self.active = previous


class Replayable:
    """``objective`` whose ``loss`` / ``batch_metric`` give zeros (no forward, no collective)
    while ``replay`` is active; everything else is the wrapped objective's."""

    def __init__(self, objective, replay: Replay) -> None:
        self.inner, self.replay = objective, replay

    def loss(self, batch, replicas: int = 1) -> torch.Tensor:
        if self.replay.active:
            return torch.zeros(()) if replicas == 1 else torch.zeros(replicas)
        return self.inner.loss(batch) if replicas == 1 else self.inner.loss(batch, replicas=replicas)

    def batch_metric(self, batch) -> float:
        return 0.0 if self.replay.active else self.inner.batch_metric(batch)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


class GroupContext(DistContext):
    """A ``DistContext`` whose reductions run over one process ``group`` (a row of the mesh):
    ``rank`` / ``world_size`` are the rank in the group and its size; ``sent`` is shared with
    the run's context (the summary's bytes)."""

    def __init__(self, parent: DistContext, group, rank: int, size: int) -> None:
        super().__init__(rank, size, parent.local_rank, parent.mode, parent.backend, parent.sent)
        self.group = group

    def all_reduce(self, tensor: torch.Tensor, op=None, phase: str = "other") -> torch.Tensor:
        moved = tensor.to(self.device())
        tdist.all_reduce(moved, op=op or tdist.ReduceOp.SUM, group=self.group)
        self.count(phase, moved)
        return moved.to(tensor.device)

    @property
    def leader(self) -> bool:
        return False  # the run's leader is the parent context's rank 0; a group context writes nothing


def gather_directions(
    ctx: DistContext,
    count: int,
    evaluate,
    stop=None,
    counter=None,
    shard_size: int = 1,
    replay=None,
    others: list | None = None,
) -> list:
    """Every direction's result, this rank's group (ranks ``g·S .. g·S + S - 1``, S =
    ``shard_size``; one rank when S = 1) evaluating ``share(count, g, W/S)`` with ``evaluate``;
    with ``replay``, the other groups' directions are evaluated before and after it with the
    forward skipped (their engine moves, in the single-process order). ``counter`` (the loop's
    ``ForwardCounter``) gets the other groups' passes too, so the summary's ``forward_passes`` is
    the single-process count (``others[0]`` adds them up). The ranks of a group hold the same
    results (their losses were reduced over the group); the gather reads each group's first rank."""
    groups, group = ctx.world_size // shard_size, ctx.rank // shard_size
    results, passes = _evaluate_share(count, evaluate, group, groups, counter, replay)
    width, parts = _exchange(ctx, results, passes, -(-count // groups), stop)
    if counter is not None:  # the other groups' passes, as the rank in this rank's place counted them
        place = ctx.rank % shard_size
        added = sum(int(parts[r][-2]) for r in range(place, ctx.world_size, shard_size) if r // shard_size != group)
        counter.counts["train"] += added
        if others is not None:
            others[0] += added
    signals = [int(part[-1]) for part in parts if part[-1] > 0]
    if stop is not None and signals:
        stop.agree(signals[0])
    gathered: list = []
    for g in range(groups):
        part = parts[g * shard_size]
        for i in range(len(share(count, g, groups))):
            row = part[i * width : (i + 1) * width].tolist()
            gathered.append(row[0] if width == 1 else tuple(row))  # FZOO: ℓ_i; MeZO: (g, ℓ+, ℓ-)
    return gathered


def _evaluate_share(count: int, evaluate, group: int, groups: int, counter, replay) -> tuple[list, int]:
    """(results, forward passes) of group ``group``'s share of ``count`` directions; with
    ``replay``, the directions before and after the share are evaluated with the forward skipped."""
    lo, hi = group * count // groups, (group + 1) * count // groups
    if replay is not None and lo > 0:
        with replay():
            evaluate(list(range(lo)))
    before = counter["train"] if counter is not None else 0
    results = evaluate(list(range(lo, hi))) if hi > lo else []
    passes = (counter["train"] - before) if counter is not None else 0
    if replay is not None and hi < count:
        with replay():
            evaluate(list(range(hi, count)))
    return results, passes


def _exchange(ctx: DistContext, results: list, passes: int, most: int, stop) -> tuple[int, list[torch.Tensor]]:
    """(values per result, every rank's packed row): this rank's ``results`` (at most ``most``),
    its forward ``passes`` and its stop flag, all-gathered in float64 (the losses travel exactly)."""
    width = len(_row(results[0])) if results else 0
    width = int(ctx.all_reduce(torch.tensor([width], dtype=torch.int64), op=tdist.ReduceOp.MAX, phase="train")[0])
    packed = torch.zeros(most * width + 2, dtype=torch.float64)  # results, passes, stop flag
    packed[-2] = float(passes)
    for i, result in enumerate(results):
        packed[i * width : (i + 1) * width] = torch.tensor(_row(result), dtype=torch.float64)
    packed[-1] = float(stop.local_signum or 0) if stop is not None else 0.0
    packed = packed.to(ctx.device())  # NCCL gathers CUDA tensors
    parts = [torch.empty_like(packed) for _ in range(ctx.world_size)]
    tdist.all_gather(parts, packed)
    ctx.count("train", packed)
    return width, [part.cpu() for part in parts]


def _row(result) -> tuple:
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)
