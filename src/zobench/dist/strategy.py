"""How a run is spread over its processes, passed to the recipe (``train/recipe.py``) whole:
``Single`` (one process: every method is a no-op or the plain call), ``DataParallel``
(``dist.mode=data``: each rank evaluates its shard of the global batch, ``data.py``) and
``DirectionParallel`` (``dist.mode=directions``: each rank evaluates its share of a step's
directions on the whole batch, ``directions.py``), ``Sharded`` (``dist.mode=sharded``: FSDP2,
1/N of the model per rank, ``sharded.py``) and ``ShardedDirections`` (``dist.mode=directions
dist.shard_size=S``: rows of S ranks, one sharded replica each, split the directions).
``strategy_for(ctx)`` picks one from the process's ``DistContext``; the recipe calls the methods
of ``Strategy`` and holds no branch on the number of ranks (docs/design.md "Distributed").

The methods, in the order a run calls them:

* ``agreed_stop(stop)``: the stop request every rank agrees on (``data.SyncedStop``);
* ``prepare_model(model)``: the model after tuning, before the engine is built on it (the
  identity, except ``Sharded``'s ``fully_shard``: the factory then builds the sharded engine);
* ``checkpoint_mode(requested)`` / ``check_resumable(checkpoint, run_dir)``: several ranks
  checkpoint weights (a trajectory checkpoint is resumed in one process, where it is replayed);
* ``keeps_log()``: whether this rank's closure values are the whole step's (its trajectory log);
* ``attach(learner, stop, counter)``: after the restore, the learner's evaluations go through the
  strategy (the sharded objective, or the optimizer's direction share); first-order baselines
  are refused on several ranks;
* ``evaluate(objective, examples, batch_size, counter)``: a dev / test evaluation (sharded);
* ``check(named, where)``: the replicas' consistency guard (``guard.py``);
* ``summary(state, steps, first_step)``: the multi-rank summary keys ({} in one process);
* ``base_sha256(named)`` (the log header's digest; None: the log hashes the parameters),
  ``save_checkpoint(...)``, ``write_weights(named, path)`` (``best/``, ``final/``): the leader
  writes; ``Sharded``'s are collectives where no rank holds the model (``checkpoints.py``).

``leader`` is the rank that writes the run dir (rank 0; the one process of a single run).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as tdist

from ..checkpoint import Checkpoint, save_checkpoint, save_tensors
from ..engine.inplace import InPlaceEngine
from ..errors import CheckpointError, ConfigError
from ..optim import ZOOptimizer
from .context import DistContext
from .data import ShardedObjective, SyncedStop
from .directions import DirectionShare, Replay, Replayable, require_split
from .evaluation import sharded_evaluate
from .guard import check_replicas

if TYPE_CHECKING:
    pass


class Strategy:
    """The methods the recipe calls, as one process runs them (the plain call everywhere);
    each multi-rank strategy overrides those it changes."""

    name = "single"
    #: the factory builds the model on meta and ``prepare_model`` fills it (``build/by_shards.py``)
    loads_by_shards = False

    def __init__(self, ctx: DistContext | None = None, method: str = "") -> None:
        """``method``: the ``optimizer=`` name, for the one line that refuses a learner."""
        self.ctx = ctx if ctx is not None else DistContext()
        self.method = method

    @property
    def leader(self) -> bool:
        """This process writes the run dir (config.yaml, metrics, checkpoints, summary)."""
        return self.ctx.leader

    def agreed_stop(self, stop):
        return stop

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def checkpoint_mode(self, requested: str) -> str:
        """``requested``: ``train.checkpoint`` for this learner (``trajectory`` or ``weights``)."""
        return requested

    def check_resumable(self, checkpoint: Checkpoint | None, run_dir: Path) -> None:
        """Raise ``CheckpointError`` for a checkpoint this strategy cannot resume."""

    def keeps_log(self) -> bool:
        return True

    def attach(self, learner, stop, counter) -> None:
        """Route ``learner``'s evaluations through the strategy (after ``restore``)."""

    def evaluate(self, objective, examples, batch_size: int, counter=None) -> dict:
        return sharded_evaluate(objective, examples, batch_size, self.ctx, counter)

    def check(self, named, where: str) -> None:
        check_replicas(named, self.ctx, where)

    def summary(self, state, steps: int, first_step: int) -> dict:
        return {}

    def base_sha256(self, named: list) -> str | None:
        """The trajectory header's hash of ``named``'s weights; None: the log hashes them itself."""
        return None

    def save_checkpoint(self, root: Path, step: int, named: list, optimizer, loop: dict) -> None:
        """A checkpoint at ``step`` under ``root``: ``named``'s weights and ``optimizer``'s state
        (a trajectory checkpoint: ``named`` empty, ``optimizer`` None), and ``loop``."""
        if self.leader:
            state = optimizer.state_dict() if optimizer is not None else {}
            save_checkpoint(root, step, dict(named), state, loop)

    def write_weights(self, named: list, path: Path) -> None:
        """``named``'s weights to the safetensors file ``path`` (``best/``, ``final/``)."""
        if self.leader:
            save_tensors(named, path)


class Single(Strategy):
    """One process: today's single-process run, bit for bit (no collective is ever called)."""


class _Ranks(Strategy):
    """What every multi-rank strategy shares: weight checkpoints, first-order learners refused,
    the summary's ``world_size`` / ``comm_bytes_per_step`` and the peaks as the max over ranks."""

    def agreed_stop(self, stop) -> SyncedStop:
        return SyncedStop(stop)

    def checkpoint_mode(self, requested: str) -> str:
        return "weights"  # each rank resumes the same weights; a trajectory would replay on every rank

    def check_resumable(self, checkpoint: Checkpoint | None, run_dir: Path) -> None:
        if checkpoint is not None and not checkpoint.has_weights:
            raise CheckpointError(
                f"{run_dir / 'checkpoint'}: a trajectory checkpoint (train.checkpoint=trajectory, no weights) "
                "resumes in one process; a multi-rank run checkpoints weights (resume it without torchrun "
                "once, or start a new run dir)"
            )

    def attach(self, learner, stop, counter) -> None:
        # a ZO learner steps a ZOOptimizer; a first-order baseline a torch optimizer
        if learner is not None and not isinstance(learner.optimizer, ZOOptimizer):
            raise ConfigError(
                f"optimizer={self.method} is a first-order baseline: it runs in one process "
                f"(this run has {self.ctx.world_size} ranks); launch it without torchrun / Slurm tasks"
            )

    def summary(self, state, steps: int, first_step: int) -> dict:
        """``first_step``: the step this process started from (its bytes sent are since then)."""
        ctx = self.ctx
        mine = [state.train_peak, state.inference_peak or 0, state.load_peak, state.pre_load]
        peaks = ctx.all_reduce(torch.tensor(mine, dtype=torch.int64), op=tdist.ReduceOp.MAX, phase="summary")
        per_step = ctx.sent.get("train", 0) / max(state.step - first_step, 1)
        return {
            "world_size": ctx.world_size,
            "dist_mode": ctx.mode,
            "dist_backend": ctx.backend,
            "comm_bytes_per_step": per_step,
            # the memory one rank needs: the largest of the ranks'
            "peak_memory_bytes": int(peaks[0]) if steps else int(peaks[1]),
            "inference_peak_memory_bytes": int(peaks[1]),
            "load_peak_memory_bytes": int(peaks[2]),
            "pre_load_memory_bytes": int(peaks[3]),
        }


class DataParallel(_Ranks):
    """``dist.mode=data``: the closure's losses are the global batch's (``data.ShardedObjective``);
    rank 0 logs the trajectory (its closure values are the global ones)."""

    name = "data"

    def keeps_log(self) -> bool:
        return self.ctx.leader

    def attach(self, learner, stop, counter) -> None:
        super().attach(learner, stop, counter)
        if learner is not None:
            learner.objective = ShardedObjective(learner.objective, self.ctx, stop, counter)


class DirectionParallel(_Ranks):
    """``dist.mode=directions``: each rank evaluates its share of a step's directions
    (``directions.DirectionShare``, the optimizer's declared seam); a rank's closure values are
    its share only, so no rank logs a trajectory."""

    name = "directions"

    def keeps_log(self) -> bool:
        return False

    def attach(self, learner, stop, counter) -> None:
        super().attach(learner, stop, counter)
        if learner is not None:
            require_split(learner.optimizer)
            replay = None
            if isinstance(learner.optimizer.engine, InPlaceEngine):  # it writes θ ± εz: replay the others' moves
                replay = Replay()
                learner.objective = Replayable(learner.objective, replay)
            learner.optimizer.share_directions(DirectionShare(self.ctx, stop, counter, replay=replay))
