"""Values checked against this machine rather than against a list: a device it has, a folder it
can write. Used by the schema (``device``, ``bench.out``) and by the command lines that take them
(``--device`` and ``--out`` of replay, export and report)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import ConfigError
from ..lock import unusable_run_dir


def check_device(option: str, device, sep: str = "=", instead: str | None = None) -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` that this machine has (the run's ``device``,
    ``--device`` of replay and export), before a model is moved there: torch's own error for a
    missing device comes from deep inside the model load."""
    if not (isinstance(device, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", device)):
        raise ConfigError(f"{option}{sep}{device!r}: allowed auto, cpu, cuda, cuda:N")
    instead = instead or f"use {option}{sep}cpu or auto"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{option}{sep}{device}: no CUDA device is available here; {instead}")
    index = int(device.partition(":")[2] or 0)
    if device.startswith("cuda") and index >= torch.cuda.device_count():
        raise ConfigError(
            f"{option}{sep}{device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
            f"cuda:0..cuda:{torch.cuda.device_count() - 1}"
        )


def check_output_folder(option: str, path, sep: str = " ") -> Path:
    """An output folder given on a command line (``--out`` of replay, export and report,
    ``bench.out``): not empty (an unset shell variable would write into the current directory)
    and one that can be made and written (not below a regular file, not in ``/proc``, not on a
    read-only mount), checked before any work; ``ConfigError`` naming the option otherwise."""
    if path is None or not str(path).strip():
        raise ConfigError(f"{option} is empty (an unset shell variable?); give a folder")
    reason = unusable_run_dir(Path(str(path)))
    if reason:
        raise ConfigError(f"{option}{sep}{path}: cannot write there ({reason}); pick a writable folder")
    return Path(str(path))


def output_error(option: str, err: OSError) -> str:
    """The one line for an output that failed while being written (a full disk, a folder that
    turned read-only): the file and the reason; nothing at the option's folder looks complete."""
    return f"{option}: {err.filename or ''}: {err.strerror or err}".replace(": : ", ": ")
