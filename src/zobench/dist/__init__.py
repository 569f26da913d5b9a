"""Multi-rank ZO training on torch.distributed (torchrun, Slurm): ``context.py`` (who am I, the
process group), ``data.py`` (data-parallel closure), ``directions.py`` (direction-parallel
FZOO / MeZO), ``evaluation.py`` (sharded dev / test), ``guard.py`` (replica checksums),
``rundir.py`` (rank 0 writes the run dir), ``strategy.py`` (what the recipe is given: ``Single``,
``DataParallel``, ``DirectionParallel``), ``sharded_strategy.py`` (``Sharded``,
``ShardedDirections``), ``choice.py`` (``strategy_for``: which one), ``sharded.py`` (FSDP2:
shard the model), ``checkpoints.py`` (a sharded run's DCP checkpoints and streamed files). A
single process never joins a process group: its strategy is ``Single``, which calls no
collective. docs/design.md "Distributed"."""

from .context import DistContext, current

__all__ = ["DistContext", "current"]
