"""Multi-rank ZO training on torch.distributed (torchrun, Slurm): ``context.py`` (who am I, the
process group), ``data.py`` (data-parallel closure), ``directions.py`` (direction-parallel
FZOO / MeZO), ``evaluation.py`` (sharded dev / test), ``guard.py`` (replica checksums),
``rundir.py`` (rank 0 writes the run dir), ``hooks.py`` (the recipe's seams). A single process
never joins a process group: every hook is then a no-op. docs/design.md "Distributed"."""

from .context import DistContext, current

__all__ = ["DistContext", "current"]
