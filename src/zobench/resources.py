"""Where the shipped configs (``conf/``) and task specs (``tasks/``) are.

In a wheel they are package data under ``zobench/_data/`` (pyproject's force-include); in a
source checkout (editable install, or ``PYTHONPATH=src``) they are at the repository root.
Hydra's ``task`` group has no files in ``conf/``: it is generated from ``tasks/`` into Hydra's
ConfigStore (``zobench.tasks.configs``), which ``conf_dir`` does before returning.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_root() -> Path:
    """The folder holding ``conf/`` and ``tasks/``."""
    for candidate in (_PACKAGE / "_data", _PACKAGE.parents[1]):
        if (candidate / "conf" / "config.yaml").is_file() and (candidate / "tasks").is_dir():
            return candidate
    raise FileNotFoundError(
        f"zobench's conf/ and tasks/ were found neither in {_PACKAGE / '_data'} (wheel) nor in "
        f"{_PACKAGE.parents[1]} (source tree); reinstall zobench"
    )


def conf_dir() -> Path:
    """The Hydra config folder, with the ``task`` group registered so that composing from it works
    (once per process; a task spec that does not parse raises ``ConfigError`` naming its file)."""
    from .tasks.configs import ensure_registered  # zobench.tasks imports this module

    ensure_registered()
    return data_root() / "conf"


def tasks_dir() -> Path:
    """The task specs, one ``<name>.yaml`` per task (``zobench.tasks.spec``)."""
    return data_root() / "tasks"
