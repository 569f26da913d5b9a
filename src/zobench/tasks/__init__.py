"""Task registry: ``load_task(name)`` reads ``tasks/<name>.yaml``; one file is the whole task
(``zobench.tasks.configs`` turns its run settings into the Hydra ``task`` group)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..paths import tasks_dir
from .data import PROTOCOLS, Splits, build_splits, load_split, sample_subset
from .spec import Rendered, TaskSpec

__all__ = [
    "PROTOCOLS",
    "Rendered",
    "Splits",
    "TaskSpec",
    "available_tasks",
    "build_splits",
    "load_split",
    "load_task",
    "sample_subset",
]


def available_tasks(directory: Path | None = None) -> list[str]:
    """The task names: the ``*.yaml`` stems of ``directory`` (default: the shipped ``tasks/``)."""
    return sorted(p.stem for p in (directory or tasks_dir()).glob("*.yaml"))


def load_task(name: str, directory: Path | None = None) -> TaskSpec:
    """Parse and check ``<directory>/<name>.yaml`` (default: the shipped ``tasks/``)."""
    path = (directory or tasks_dir()) / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"task={name!r}: no such task; available: {', '.join(available_tasks(directory))}")
    spec = TaskSpec.from_yaml(path)
    if spec.name != name:
        raise ConfigError(f"{path}: name={spec.name!r} differs from the file name {name!r}")
    return spec
