"""What the recipe (``train/recipe.py``) does differently on a multi-rank run, one call per seam,
each a no-op in a single process:

* ``attach(recipe)``: the stop request every rank agrees on (``data.SyncedStop``);
* ``attach_learner(recipe)``: the learner's objective data-parallel (``data.ShardedObjective``),
  or direction-parallel (``directions.py``); first-order baselines are refused (they are
  single-process: docs/design.md "Distributed");
* ``writes(recipe)``: only rank 0 writes checkpoints, best-dev and final weights;
* ``check(recipe, where)``: the consistency guard (``guard.py``) before a checkpoint and at the end;
* ``summary(recipe)``: ``world_size``, ``comm_bytes_per_step`` and the peaks as the max over ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as tdist

from ..errors import ConfigError
from .context import current
from .data import ShardedObjective, SyncedStop
from .guard import check_replicas


def attach(recipe) -> None:
    recipe.dist = current()
    recipe.sharded = None  # dist.mode=sharded: the Sharded strategy (dist/sharded.py)
    if recipe.cfg.get("dist", {}).get("mode") == "sharded" and not recipe.dist.active:
        raise ConfigError(
            "dist.mode=sharded needs several ranks (torchrun --nproc-per-node N, or Slurm tasks); "
            "this run is one process: drop dist.mode=sharded"
        )
    if recipe.dist.active:
        recipe.stop = SyncedStop(recipe.stop)
    if recipe.dist.active and recipe.dist.mode == "sharded":
        from .sharded import Sharded

        recipe.sharded = Sharded(recipe.dist, recipe.cfg.dist.get("shard_size"))


def prepare_model(recipe) -> None:
    """After tuning, before the learner: ``dist.mode=sharded`` shards the model (FSDP2); its
    engine is the in-place one on shards (``engine/sharded.py``), so the config must ask for it."""
    if recipe.sharded is None:
        return
    engine = recipe.cfg.engine
    if engine.mode != "inplace" or engine.backend != "torch":  # auto could pick Triton's, which this is not
        raise ConfigError(
            f"dist.mode=sharded moves each rank's shards in place with the torch engine; got "
            f"engine.backend={engine.backend} engine.mode={engine.mode}: set engine.backend=torch engine.mode=inplace"
        )
    from ..models.tuning import trainable

    recipe.model = recipe.sharded.prepare_model(recipe.model)
    recipe.named = trainable(recipe.model)


def whole(recipe) -> list:
    """``recipe.named`` as whole tensors (sharded: gathered to rank 0, the writer; nothing on the
    others; a collective every rank calls)."""
    if recipe.sharded is None:
        return recipe.named
    from .sharded import full_weights

    return list(full_weights(recipe.named, recipe.dist.leader).items())


def whole_state(recipe) -> dict:
    """The optimizer's ``state_dict`` with every parameter-sized state shard gathered (sharded),
    so a checkpoint resumes on any number of ranks (collective)."""
    state = recipe.learner.optimizer.state_dict()
    if recipe.sharded is None:
        return state
    from .sharded import full_state

    return full_state(recipe.learner.optimizer, state, recipe.dist.leader)


def attach_learner(recipe) -> None:
    """After ``restore``: the step this process starts from is known (``comm_bytes_per_step``)."""
    ctx = recipe.dist
    recipe.first_step = recipe.state.step
    if not ctx.active or recipe.learner is None:
        return
    from ..train.learners import ZOLearner

    if not isinstance(recipe.learner, ZOLearner):
        raise ConfigError(
            f"optimizer={recipe.cfg.optimizer.name} is a first-order baseline: it runs in one process "
            f"(this run has {ctx.world_size} ranks); launch it without torchrun / Slurm tasks"
        )
    if recipe.sharded is not None:
        from ..engine.sharded import ShardedEngine

        # the in-place engine build_learner made holds nothing yet: the same moves, on shards
        recipe.learner.engine = recipe.learner.optimizer.engine = ShardedEngine()
        recipe.sharded.attach(recipe.learner, recipe.stop, recipe.counter)
        return
    if ctx.mode == "directions":
        from .directions import split_directions

        split_directions(recipe.learner, ctx, recipe.stop, recipe.counter)
        return
    recipe.learner.objective = ShardedObjective(recipe.learner.objective, ctx, recipe.stop, recipe.counter)


def refuse_weightless(checkpoint, run_dir) -> None:
    """Multi-rank runs checkpoint weights: a trajectory checkpoint (no weights, written by a
    one-process run) is resumed in one process, where it is replayed."""
    if checkpoint is not None and not checkpoint[1]:
        from ..errors import CheckpointError

        raise CheckpointError(
            f"{run_dir / 'checkpoint'}: a trajectory checkpoint (train.checkpoint=trajectory, no weights) "
            "resumes in one process; a multi-rank run checkpoints weights (resume it without torchrun "
            "once, or start a new run dir)"
        )


def writes(recipe) -> bool:
    return recipe.dist.leader


def check(recipe, where: str) -> None:
    if recipe.sharded is not None:
        return recipe.sharded.check(recipe.named, where)
    check_replicas(recipe.named, recipe.dist, where)


def summary(recipe) -> dict:
    """The multi-rank summary keys (none in a single process: its summary.json is unchanged)."""
    ctx = recipe.dist
    if not ctx.active:
        return {}
    if recipe.sharded is not None:
        return recipe.sharded.summary(recipe.state, recipe.steps, recipe.first_step)
    state = recipe.state
    peaks = torch.tensor([state.train_peak, state.inference_peak or 0], dtype=torch.int64)
    peaks = ctx.all_reduce(peaks, op=tdist.ReduceOp.MAX, phase="summary")
    steps_here = max(state.step - recipe.first_step, 1)
    per_step = ctx.sent.get("train", 0) / steps_here
    return {
        "world_size": ctx.world_size,
        "dist_mode": ctx.mode,
        "dist_backend": ctx.backend,
        "comm_bytes_per_step": per_step,
        # the memory one rank needs: the largest of the ranks'
        "peak_memory_bytes": int(peaks[0]) if recipe.steps else int(peaks[1]),
        "inference_peak_memory_bytes": int(peaks[1]),
    }
