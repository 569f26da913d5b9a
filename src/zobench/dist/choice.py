"""``strategy_for``: the strategy (``strategy.py``, ``sharded_strategy.py``) of a process, from
its ``DistContext`` and the config's ``dist`` node."""

from __future__ import annotations

from ..errors import ConfigError
from .context import DistContext
from .sharded_strategy import Sharded, ShardedDirections
from .strategy import DataParallel, DirectionParallel, Single, Strategy


def strategy_for(ctx: DistContext, method: str = "", dist_cfg=None) -> Strategy:
    """The strategy of a process in ``ctx`` (``dist.mode``; one process: ``Single``); ``method``:
    the ``optimizer=`` name its errors give; ``dist_cfg``: the ``dist`` node (``shard_size``,
    ``root``; ``dist.mode=sharded`` in one process is refused: nothing to shard over)."""
    dist_cfg = dist_cfg if dist_cfg is not None else {}
    if not ctx.active:
        if dist_cfg.get("mode") == "sharded":
            raise ConfigError(
                "dist.mode=sharded needs several ranks (torchrun --nproc-per-node N, or Slurm tasks); "
                "this run is one process: drop dist.mode=sharded"
            )
        return Single(ctx, method)
    shard_size, root = dist_cfg.get("shard_size"), dist_cfg.get("root", "sharded")
    if root != "sharded" and ctx.mode != "sharded":
        raise ConfigError(
            f"dist.root={root} with dist.mode={ctx.mode}: the root's placement applies to dist.mode=sharded; "
            "drop it or set dist.mode=sharded"
        )
    if ctx.mode == "sharded":
        return Sharded(ctx, method, shard_size, root)
    if ctx.mode == "directions" and shard_size is not None:
        return ShardedDirections(ctx, method, shard_size)
    if shard_size is not None:
        raise ConfigError(
            f"dist.shard_size={shard_size} with dist.mode={ctx.mode}: a shard size applies to dist.mode=sharded "
            "(HSDP) and dist.mode=directions (groups of shard_size ranks, one sharded replica each); "
            "drop it or change dist.mode"
        )
    return {"data": DataParallel, "directions": DirectionParallel}[ctx.mode](ctx, method)
