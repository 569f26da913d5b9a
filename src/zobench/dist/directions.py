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
``ZOOptimizer.share_directions``; others are refused with one line. The data stream, ℓ0 and the update run on every rank; the
summary's ``forward_passes`` counts ℓ0 once and every direction once (the single-process count).
"""

from __future__ import annotations

import torch
import torch.distributed as tdist

from ..errors import ConfigError
from .context import DistContext


def share(count: int, rank: int, world_size: int) -> list[int]:
    """The direction indices rank ``rank`` evaluates (contiguous; sizes differ by at most one)."""
    return list(range(rank * count // world_size, (rank + 1) * count // world_size))


def require_split(optimizer) -> None:
    """Refuse, in one line, a method whose step evaluates one direction (nothing to split)."""
    if not getattr(optimizer, "splits_directions", False):
        raise ConfigError(
            f"dist.mode=directions: {type(optimizer).__name__} evaluates one direction per step; "
            "allowed with fzoo and mezo (num_directions > 1); use dist.mode=data"
        )


class DirectionShare:
    """``share(count, evaluate)``: the optimizer's direction seam (``ZOOptimizer.share_directions``)
    for this rank: its share evaluated here, every rank's results gathered (``gather_directions``)."""

    def __init__(self, ctx: DistContext, stop=None, counter=None) -> None:
        self.ctx, self.stop, self.counter = ctx, stop, counter

    def __call__(self, count: int, evaluate) -> list:
        return gather_directions(self.ctx, count, evaluate, self.stop, self.counter)


def gather_directions(ctx: DistContext, count: int, evaluate, stop=None, counter=None) -> list:
    """Every direction's result, this rank evaluating ``share(count, ...)`` with ``evaluate``.
    ``counter`` (the loop's ``ForwardCounter``) gets the other ranks' passes too, so the summary's
    ``forward_passes`` is the single-process count."""
    mine = share(count, ctx.rank, ctx.world_size)
    before = counter["train"] if counter is not None else 0
    results = evaluate(mine) if mine else []
    passes = (counter["train"] - before) if counter is not None else 0
    width = len(_row(results[0])) if results else 0
    width = int(ctx.all_reduce(torch.tensor([width], dtype=torch.int64), op=tdist.ReduceOp.MAX, phase="train")[0])
    most = -(-count // ctx.world_size)
    packed = torch.zeros(most * width + 2, dtype=torch.float64)  # results, passes, stop flag
    packed[-2] = float(passes)
    for i, result in enumerate(results):
        packed[i * width : (i + 1) * width] = torch.tensor(_row(result), dtype=torch.float64)
    packed[-1] = float(stop.local_signum or 0) if stop is not None else 0.0
    packed = packed.to(ctx.device())  # NCCL gathers CUDA tensors
    parts = [torch.empty_like(packed) for _ in range(ctx.world_size)]
    tdist.all_gather(parts, packed)
    ctx.count("train", packed)
    parts = [part.cpu() for part in parts]
    if counter is not None:
        counter.counts["train"] += sum(int(part[-2]) for rank, part in enumerate(parts) if rank != ctx.rank)
    signals = [int(part[-1]) for part in parts if part[-1] > 0]
    if stop is not None and signals:
        stop.agree(signals[0])
    gathered: list = []
    for rank, part in enumerate(parts):
        for i in range(len(share(count, rank, ctx.world_size))):
            row = part[i * width : (i + 1) * width].tolist()
            gathered.append(row[0] if width == 1 else tuple(row))  # FZOO: ℓ_i; MeZO: (g, ℓ+, ℓ-)
    return gathered


def _row(result) -> tuple:
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)
