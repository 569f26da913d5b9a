"""The Hydra config folder ready to compose from: ``conf/`` (``paths.py`` finds it, in a wheel or
a source tree) with the ``task`` group, which has no files there, generated from ``tasks/`` into
Hydra's ConfigStore (``zobench.tasks.configs``) first.
"""

from __future__ import annotations

from pathlib import Path

from .paths import data_root, tasks_dir
from .tasks import configs

__all__ = ["conf_dir", "data_root", "tasks_dir"]


def conf_dir() -> Path:
    """The Hydra config folder, with the ``task`` group registered so that composing from it works
    (once per process; a task spec that does not parse raises ``ConfigError`` naming its file)."""
    configs.ensure_registered()
    return data_root() / "conf"
