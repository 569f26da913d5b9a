"""The Hydra ``task`` config group, generated from the task specs (``tasks/*.yaml``).

A task is one file, as in lm-evaluation-harness: its data, prompts and metric, and the run
settings a config may override (``max_length``, ``masked_max_length``, ``num_dev``; see
``zobench.tasks.spec``). ``conf/`` has no ``task/`` folder: each spec's
:meth:`~zobench.tasks.spec.TaskSpec.run_config` is stored in Hydra's ConfigStore as the option
``task/<name>``, so ``task=rte``, ``task.max_length=1024``, the experiments' ``override /task:``
and ``--help`` see it as they would a YAML file. ``zobench.resources.conf_dir`` registers the
shipped tasks before it hands out the config folder, so whoever composes from it sees them.
"""

from __future__ import annotations

import functools
from pathlib import Path

from hydra.core.config_store import ConfigStore

from . import available_tasks, load_task

GROUP = "task"


def register_task_configs(directory: Path | None = None) -> list[str]:
    """Store ``task/<name>`` in Hydra's ConfigStore for every spec in ``directory`` (default: the
    shipped ``tasks/``), replacing an earlier entry of that name. A spec that does not parse is
    refused here (``ConfigError`` naming the file), before any config is composed.

    Returns:
        The task names registered, sorted.
    """
    store = ConfigStore.instance()
    names = available_tasks(directory)
    for name in names:
        spec = load_task(name, directory)
        store.store(group=GROUP, name=name, node=spec.run_config(), provider="zobench")
    return names


@functools.cache
def ensure_registered() -> None:
    """Register the shipped tasks once per process (a failure is not cached: it is raised again)."""
    register_task_configs()


def registered_tasks() -> list[str]:
    """The ``task`` options Hydra can compose now (ConfigStore entries), sorted; none before the
    first registration (ConfigStore has no such group yet)."""
    try:
        names = ConfigStore.instance().list(GROUP)
    except OSError:
        return []
    return sorted(name.removesuffix(".yaml") for name in names)
