"""Where the shipped configs (``conf/``) and task specs (``tasks/``) are: paths only, so every
layer may ask (``resources.conf_dir`` adds the generated ``task`` group for composing).

In a wheel they are package data under ``zobench/_data/`` (pyproject's force-include); in a
source checkout (editable install, or ``PYTHONPATH=src``) they are at the repository root.
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


def conf_files() -> Path:
    """The Hydra config folder as files (the model, optimizer, ... YAMLs); to compose from it, use
    ``resources.conf_dir``, which registers the ``task`` group first."""
    return data_root() / "conf"


def tasks_dir() -> Path:
    """The task specs, one ``<name>.yaml`` per task (``zobench.tasks.spec``)."""
    return data_root() / "tasks"
