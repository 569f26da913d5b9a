"""A safetensors checkpoint folder read tensor by tensor, without loading the model whole: its
files (``checkpoint_files``) and the key under which each parameter is saved (``key_resolver``).
Shared by the two loaders that never hold the whole model: ``offload/build.py`` (blocks into a
store) and ``build/by_shards.py`` (each rank's rows of ``dist.mode=sharded``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def checkpoint_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder (sharded: the index's files)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return [path / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"{path}: no model.safetensors (offload and dist.mode=sharded read safetensors)")


def key_resolver(where: dict) -> Callable[[str], str | None]:
    """A parameter name -> the checkpoint key holding it in ``where`` (``{key: file handle}``), or
    None: checkpoints saved from the base model lack the ``model.`` prefix of the LM class, or
    carry one more."""

    def resolve(name: str) -> str | None:
        for key in (name, name.split(".", 1)[-1], f"model.{name}"):
            if key in where:
                return key
        return None

    return resolve
