"""Atomic checkpoints and automatic resume.

Layout under ``<run dir>/checkpoint/``:

* ``ckpt-<step>/``: ``trainable.safetensors`` (the trained parameters), ``optimizer.pt``
  (``optimizer.state_dict()``: step counter, seed, method state), ``loop.json`` (data position,
  forward-pass counts, best-dev bookkeeping, metrics.jsonl offset, W&B id, ...) and
  ``manifest.json`` (the sha256 of the other three), written last.
* ``latest``: the name of the newest complete checkpoint, replaced atomically (temp + rename).

Beside it, ``<run dir>/best/step-<step>.safetensors`` holds the best-dev weights a checkpoint
refers to (``LoopState.best_file``), and ``<run dir>/final/trainable.safetensors`` the tested ones
(``train.save_final``).

A checkpoint directory is first written under a temporary name, every file fsynced, and renamed
when complete, and ``latest`` moves only after that; a kill (or power loss) at any moment leaves
either the old or the new checkpoint, never a torn one. On resume every file is checked against
the manifest: a checkpoint damaged after it was written (a bad disk, a partial copy) is refused
with one line naming the file, never resumed silently. Hashing reads the files back once per
checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import CheckpointError

POINTER = "latest"
MANIFEST = "manifest.json"
HASHED = ("trainable.safetensors", "optimizer.pt", "loop.json")


# a write that failed for want of room or permission: the run stops with one line (__main__)
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM)


@contextlib.contextmanager
def writing(path: Path):
    """Any failure to write ``path`` inside the block surfaces as an ``OSError`` naming ``path``:
    a write or flush on an open file raises one without a file name, and the writers of
    safetensors (``SafetensorError: ... I/O error: ... (os error 28)``) and ``torch.save``
    (``RuntimeError: [enforce fail at inline_container.cc] ...``) report a full disk in their
    own words; the latter's errno is ENOSPC when the disk has no room left, else EIO."""
    try:
        yield
    except OSError as err:
        if err.filename is None:
            err.filename = str(path)
        raise
    except Exception as err:  # noqa: BLE001 - only the writers' I/O failures are translated; others re-raised
        text = str(err)
        code = re.search(r"os error (\d+)", text)
        if code:
            number = int(code.group(1))
        elif type(err) is RuntimeError and ("inline_container" in text or "PytorchStreamWriter" in text):
            number = errno.ENOSPC if _disk_full(Path(path)) else errno.EIO
        else:
            raise
        raise OSError(number, os.strerror(number), str(path)) from err


def _disk_full(path: Path) -> bool:
    try:
        return shutil.disk_usage(next(p for p in (path, *path.parents) if p.exists())).free == 0
    except (OSError, StopIteration):
        return False


def write_error_line(err: OSError, where: Path) -> str | None:
    """The one line for a file operation that failed (``WRITE_ERRNOS``), None for any other error: the file,
    the reason, and that starting the same command again resumes from the last checkpoint."""
    if err.errno not in WRITE_ERRNOS:
        return None
    return (
        f"{err.filename or where}: {err.strerror}; free space (or fix the folder), then start the same "
        f"command again: the run resumes from its last checkpoint in {where}"
    )


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside ``path`` durable (the directory entry, not only the data)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one, also
    after a power loss (file and directory entry fsynced)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with writing(path), tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(root: Path, step: int, tensors: dict[str, torch.Tensor], optimizer_state: dict, loop: dict) -> Path:
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{step:09d}"
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with writing(tmp / "trainable.safetensors"):
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp / "trainable.safetensors"))
    with writing(tmp / "optimizer.pt"):
        torch.save(optimizer_state, tmp / "optimizer.pt")
    write_text_atomic(tmp / "loop.json", json.dumps(loop, indent=1))
    for file in HASHED[:2]:
        fsync_file(tmp / file)
    write_text_atomic(tmp / MANIFEST, json.dumps({"sha256": {f: sha256(tmp / f) for f in HASHED}}, indent=1))
    final = root / name
    if final.exists():  # the same step checkpointed again after a resume
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    write_text_atomic(root / POINTER, name)
    for old in root.glob("ckpt-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint holds: ``state`` (``loop.json``, a ``LoopState`` dict), ``tensors`` (the
    trainable weights; empty in a trajectory checkpoint, whose resume replays the log) and
    ``optimizer_state`` (``optimizer.state_dict()``; empty likewise)."""

    state: dict
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer_state: dict = field(default_factory=dict)

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def elapsed(self) -> float:
        """Wall seconds of the run up to the checkpoint (0 for one written before they were kept)."""
        return float(self.state.get("elapsed", 0.0))

    @property
    def metrics_offset(self) -> int:
        """Bytes of metrics.jsonl the checkpoint vouches for (a resume cuts the file back there)."""
        return int(self.state.get("metrics_offset", 0))

    @property
    def has_weights(self) -> bool:
        return bool(self.tensors)


def load_checkpoint(root: Path) -> Checkpoint | None:
    """The latest checkpoint under ``root``, or None if there is none."""
    pointer = root / POINTER
    if not pointer.is_file():
        return None
    from safetensors.torch import load_file

    folder = root / pointer.read_text().strip()
    current = folder / MANIFEST
    try:
        _verify(folder)
        current = folder / "loop.json"
        loop = json.loads(current.read_text())
        current = folder / "trainable.safetensors"
        tensors = load_file(str(current))
        current = folder / "optimizer.pt"
        optimizer_state = torch.load(current, weights_only=True)
    except CheckpointError:
        raise
    except Exception as err:  # any unreadable piece makes the checkpoint unusable
        raise CheckpointError(
            f"checkpoint {current} is unreadable ({type(err).__name__}: {err}); delete {root} to start the run afresh"
        ) from err
    return Checkpoint(loop, tensors, optimizer_state)


def _verify(folder: Path) -> None:
    """Every file of a checkpoint against the sha256 its manifest recorded when it was written.
    Checkpoints of zobench versions before the manifest have none and are read unchecked."""
    manifest = folder / MANIFEST
    if not manifest.is_file() and (folder / "loop.json").is_file():
        return
    expected = json.loads(manifest.read_text())["sha256"]
    for file, digest in expected.items():
        if sha256(folder / file) != digest:
            raise CheckpointError(
                f"checkpoint {folder / file} is corrupted (its sha256 differs from the one "
                f"recorded when it was written); delete {folder.parent} to start the run afresh"
            )


# -- the trainable tensors outside a checkpoint (best-dev and final weights) ----------------------
def save_tensors(named, path: Path) -> None:
    """``named`` ((name, parameter) pairs) to a safetensors file, written whole or not at all."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with writing(path):
        save_file({name: p.detach().contiguous() for name, p in named}, str(tmp))
    os.replace(tmp, path)


def load_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:
        raise CheckpointError(f"{path} is unreadable ({type(err).__name__}: {err})") from err


def copy_into(named, tensors: dict, where: Path) -> None:
    """Load ``tensors`` into the parameters of ``named``; ``where`` names their file in errors."""
    missing = [name for name, _ in named if name not in tensors]
    if missing:
        raise CheckpointError(f"{where} lacks parameters {missing[:3]}: it belongs to another model or tuning")
    from torch.distributed.tensor import DTensor, distribute_tensor  # loaded on first use (import time)

    with torch.no_grad():
        for name, p in named:
            if isinstance(p, DTensor):  # dist.mode=sharded: the rows this rank holds (any world size wrote it)
                local = distribute_tensor(tensors[name], p.device_mesh, p.placements, src_data_rank=None)
                p.to_local().copy_(local.to_local())
            else:
                p.data.copy_(tensors[name])


def best_name(step: int) -> str:
    """The file of the best-dev state reached at ``step`` (under ``best/``)."""
    return f"step-{step:09d}.safetensors"


def save_best(named, best_dir: Path, step: int) -> str:
    """The best-dev state, one file per step, so a checkpoint always names a file that exists."""
    name = best_name(step)
    save_tensors(named, best_dir / name)
    return name


def remove_stale_best(best_dir: Path, keep: str | None) -> None:
    """Best-dev files other than ``keep``: superseded, or written after the checkpoint resumed from."""
    for path in best_dir.glob("step-*.safetensors"):
        if path.name != keep:
            path.unlink()
