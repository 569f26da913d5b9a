"""The multi-rank strategies on FSDP2-sharded parameters (``strategy.py`` has the others and the
methods every strategy has): ``Sharded`` (``dist.mode=sharded``: 1/N of the model per rank,
``sharded.py``) and ``ShardedDirections`` (``dist.mode=directions dist.shard_size=S``: rows of S
ranks, one sharded replica each, split the directions)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
import torch.distributed as tdist

from ..engine.sharded import ShardedEngine, is_sharded, local_tensor
from ..errors import ConfigError
from ..optim import ZOOptimizer
from .checkpoints import distributed_state, save_distributed, streamed_sha256, write_streamed
from .context import DistContext
from .data import ShardedObjective
from .directions import DirectionShare, GroupContext, Replay, Replayable, require_split
from .guard import check_replicas
from .sharded import METHODS, REFUSED, gather_bytes, return_freed_buffers, shard_model
from .strategy import _Ranks

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor


class Sharded(_Ranks):
    """``dist.mode=sharded`` (``sharded.py``): the parameters FSDP2-sharded (``prepare_model``; the
    factory then builds ``engine.sharded.ShardedEngine``, which moves each rank's own rows), the
    losses data parallel as ``DataParallel``'s, every dev / test example on every rank (each
    forward is a collective: the ranks must make the same calls), checkpoints written by every
    rank (its shards, DCP), ``best/`` and ``final/`` by rank 0 one gathered parameter at a time.
    Rank 0 logs the trajectory (its header hashes the weights streamed the same way)."""

    name = "sharded"
    loads_by_shards = True

    def __init__(
        self, ctx: DistContext | None = None, method: str = "", shard_size: int | None = None, root: str = "sharded"
    ) -> None:
        super().__init__(ctx, method)
        if self.ctx.world_size < 2:
            raise ConfigError("dist.mode=sharded needs several ranks (torchrun / Slurm tasks); this run has one")
        self.shard_size = self.ctx.world_size if shard_size is None else int(shard_size)
        self.root = root  # dist.root: the parameters outside every block sharded or whole on every rank
        self.counter, self.first_forwards, self.gathered_per_forward = None, 0, 0
        self.loaded_bytes, self.param_bytes = 0, 0  # this rank's parameter bytes as loaded (its shards), the model's

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """``fully_shard`` per block and the root (``sharded.shard_model``), after tuning; a model
        built on meta (``build/by_shards.py``) then gets its local shards, each from its source."""
        source = getattr(model, "zobench_source", None)
        device = source.device.type if source is not None else None
        if (device or next(model.parameters()).device.type) == "cpu":
            return_freed_buffers()
        model = shard_model(model, self.ctx.world_size, device=device, shard_size=self.shard_size, root=self.root)
        if source is not None:
            source.materialise(model)
            self.loaded_bytes = source.loaded_bytes
        self.gathered_per_forward = gather_bytes(model, self.shard_size)
        self.param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        return model

    def keeps_log(self) -> bool:
        return self.ctx.leader

    def attach(self, learner, stop, counter) -> None:
        """The objective data parallel; only the methods written for shards (``sharded.METHODS``)
        on the sharded engine."""
        super().attach(learner, stop, counter)  # first-order baselines refused
        if learner is None:
            return
        method = type(learner.optimizer).__module__.rsplit(".", 1)[-1]
        if method in REFUSED:
            raise ConfigError(
                f"dist.mode=sharded: optimizer={method} does not run on sharded parameters: {REFUSED[method]}"
            )
        if method not in METHODS:
            raise ConfigError(
                f"dist.mode=sharded: optimizer={method} is not written for sharded parameters; allowed "
                f"{', '.join(METHODS)} (or dist.mode=data)"
            )
        if not isinstance(learner.optimizer.engine, ShardedEngine):
            raise ConfigError(
                f"dist.mode=sharded: the engine is {type(learner.optimizer.engine).__name__}; "
                "set engine.mode=inplace engine.backend=torch (each rank moves its own shards)"
            )
        self.counter, self.first_forwards = counter, (counter["train"] if counter is not None else 0)
        learner.objective = self.objective(learner.objective, stop, counter)

    def objective(self, objective, stop, counter):
        """The learner's objective, each rank computing its shard of the batch (data parallel)."""
        return ShardedObjective(objective, self.ctx, stop, counter)

    def own_forwards(self) -> int:
        """The forward passes this process made in training since it started (the all-gathers)."""
        return (self.counter["train"] - self.first_forwards) if self.counter is not None else 0

    def evaluate(self, objective, examples, batch_size: int, counter=None) -> dict:
        """Every example on every rank: the one-process metric, bit for bit."""
        return objective.evaluate(examples, batch_size)

    def check(self, named, where: str) -> None:
        """No replica check: the ranks hold different shards by design."""

    def summary(self, state, steps: int, first_step: int) -> dict:
        """``_Ranks``'s, with FSDP's all-gathers (every forward of this process, frozen weights
        included) added to ``comm_bytes_per_step``."""
        out = super().summary(state, steps, first_step)
        forwards = self.own_forwards()
        gathered = forwards / max(state.step - first_step, 1) * self.gathered_per_forward
        out["comm_bytes_per_step"] += gathered
        loaded = torch.tensor([self.loaded_bytes], dtype=torch.int64)
        loaded = self.ctx.all_reduce(loaded, op=tdist.ReduceOp.MAX, phase="summary")
        return {
            **out,
            "comm_allgather_bytes_per_step": gathered,
            "dist_shard_size": self.shard_size,
            # the parameter bytes the largest rank allocated at load (its shards), of the model's
            "loaded_param_bytes_per_rank": int(loaded[0]),
            "param_bytes": self.param_bytes,
        }

    def base_sha256(self, named: list) -> str | None:
        """Rank 0's digest, one process's, streamed (a collective: ``checkpoints.streamed_sha256``)."""
        return streamed_sha256(named, self.leader)

    def save_checkpoint(self, root: Path, step: int, named: list, optimizer, loop: dict) -> None:
        """Each rank writes its shards (DCP, a collective: ``checkpoints.save_distributed``)."""
        save_distributed(root, step, *distributed_state(named, optimizer), loop)

    def write_weights(self, named: list, path: Path) -> None:
        """Rank 0 streams the file (a collective: ``checkpoints.write_streamed``)."""
        write_streamed(named, path, self.leader)


class ShardedDirections(Sharded):
    """``dist.mode=directions dist.shard_size=S`` (S < W, S | W): direction parallelism over
    sharded replicas (``directions.py``, "Composed with sharding"). The W ranks form a (W/S, S)
    mesh (``sharded.shard_model``, as HSDP's): each row of S ranks holds one FSDP2-sharded copy
    and computes its shards of the batch, the losses reduced over the row (``GroupContext``); the
    W/S rows split the step's directions (FZOO's N, MeZO's q) and replay each other's engine moves,
    so every row ends the step on the single-process bits and no weight moves between rows. Only
    methods that split their directions (``require_split``) and run on shards (``sharded.METHODS``);
    no rank logs a trajectory (a row's closure values are its share)."""

    name = "directions"

    def __init__(self, ctx: DistContext | None = None, method: str = "", shard_size: int | None = None) -> None:
        super().__init__(ctx, method, shard_size)
        size, world = self.shard_size, self.ctx.world_size
        if size >= world or world % size:
            raise ConfigError(
                f"dist.shard_size={shard_size} with dist.mode=directions: the ranks ({world}) must form at "
                f"least 2 groups of shard_size (a divisor of {world} below it) that split the directions; "
                "one group of every rank is dist.mode=sharded"
            )
        self.share: DirectionShare | None = None
        self.rows: GroupContext | None = None  # the shard group of this rank (a row of the mesh)
        self.columns: GroupContext | None = None  # the ranks holding the same rows of the weights

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Sharded's ``fully_shard`` on the (W/S, S) mesh, and the contexts of its two dimensions."""
        model = super().prepare_model(model)
        mesh = next(cast("DTensor", p) for p in model.parameters() if is_sharded(p)).device_mesh
        size, rank = self.shard_size, self.ctx.rank
        self.rows = GroupContext(self.ctx, mesh.get_group("shard"), rank % size, size)
        self.columns = GroupContext(self.ctx, mesh.get_group("replicate"), rank // size, self.ctx.world_size // size)
        return model

    def keeps_log(self) -> bool:
        return False

    def attach(self, learner, stop, counter) -> None:
        """Sharded's checks; the objective reduced over the row and replayable; the optimizer's
        directions shared between the rows."""
        if learner is not None and isinstance(learner.optimizer, ZOOptimizer):  # before anything is wrapped
            require_split(learner.optimizer, "dist.mode=sharded (its dist.shard_size groups split the batch)")
        self.replay = Replay()
        super().attach(learner, stop, counter)
        if learner is None:
            return
        self.share = DirectionShare(self.ctx, stop, counter, self.shard_size, self.replay)
        learner.optimizer.share_directions(self.share)

    def objective(self, objective, stop, counter):
        """Each rank computes its shard of the batch, reduced over its row; replayable."""
        if self.rows is None:
            raise RuntimeError("ShardedDirections: attach before prepare_model")
        return Replayable(ShardedObjective(objective, self.rows, stop, counter), self.replay)

    def own_forwards(self) -> int:
        """Sharded's count less the other rows' passes the share added (the summary's all-gathers)."""
        return super().own_forwards() - (self.share.others[0] if self.share is not None else 0)

    def check(self, named, where: str) -> None:
        """The rows must hold the same shards: the replicas' guard over each column of the mesh."""
        if self.columns is not None:
            check_replicas([(name, local_tensor(p)) for name, p in named], self.columns, where)

    def summary(self, state, steps: int, first_step: int) -> dict:
        groups = self.ctx.world_size // self.shard_size
        return {**super().summary(state, steps, first_step), "dist_direction_groups": groups}
