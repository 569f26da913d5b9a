"""Atomic checkpoints and automatic resume.

Layout under ``<run dir>/checkpoint/``:

* ``ckpt-<step>/``: ``trainable.safetensors`` (the trained parameters), ``optimizer.pt``
  (``optimizer.state_dict()``: step counter, seed, method state), ``loop.json`` (data position,
  forward-pass counts, best-dev bookkeeping, metrics.jsonl offset, W&B id, ...), written last.
* ``latest``: the name of the newest complete checkpoint, replaced atomically (temp + rename).

A checkpoint directory is first written under a temporary name and renamed when complete, and
``latest`` moves only after that; a kill at any moment leaves either the old or the new
checkpoint, never a torn one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from .errors import CheckpointError

POINTER = "latest"


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(root: Path, step: int, tensors: dict[str, torch.Tensor], optimizer_state: dict,
                    loop: dict) -> Path:
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{step:09d}"
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp / "trainable.safetensors"))
    torch.save(optimizer_state, tmp / "optimizer.pt")
    write_text_atomic(tmp / "loop.json", json.dumps(loop, indent=1))
    final = root / name
    if final.exists():  # the same step checkpointed again after a resume
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_text_atomic(root / POINTER, name)
    for old in root.glob("ckpt-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(root: Path) -> tuple[dict, dict[str, torch.Tensor], dict] | None:
    """``(loop, tensors, optimizer_state)`` of the latest checkpoint, or None if there is none."""
    pointer = root / POINTER
    if not pointer.is_file():
        return None
    from safetensors.torch import load_file

    folder = root / pointer.read_text().strip()
    current = folder / "loop.json"
    try:
        loop = json.loads(current.read_text())
        current = folder / "trainable.safetensors"
        tensors = load_file(str(current))
        current = folder / "optimizer.pt"
        optimizer_state = torch.load(current, weights_only=True)
    except Exception as err:  # any unreadable piece makes the checkpoint unusable
        raise CheckpointError(f"checkpoint {current} is unreadable ({type(err).__name__}: {err}); "
                              f"delete {root} to start the run afresh") from err
    return loop, tensors, optimizer_state
