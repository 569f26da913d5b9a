"""Atomic checkpoints and automatic resume.

Layout under ``<run dir>/checkpoint/``:

* ``ckpt-<step>/``: ``trainable.safetensors`` (the trained parameters), ``optimizer.pt``
  (``optimizer.state_dict()``: step counter, seed, method state), ``loop.json`` (data position,
  forward-pass counts, best-dev bookkeeping, metrics.jsonl offset, W&B id, ...) and
  ``manifest.json`` (the sha256 of the other three), written last.
* ``latest``: the name of the newest complete checkpoint, replaced atomically (temp + rename).

A ``dist.mode=sharded`` run's ``ckpt-<step>/`` holds ``weights/`` instead of
``trainable.safetensors``: a ``torch.distributed.checkpoint`` (DCP) folder, where each rank wrote
its own shards of the weights and of the parameter-sized optimizer state (``__<rank>_<n>.distcp``,
``.metadata``: no rank gathers the model), and ``optimizer.pt`` holds the rest of the state dict
(``DCP_KEYS`` lists the state tensors that are in ``weights/``). DCP reshards on load, so the
checkpoint resumes on any number of ranks, one process included; the
manifest lists the sha256 of every file of ``weights/`` too, each rank hashing the files it wrote
(``dist/checkpoints.py`` writes and reads it).

Beside it, ``<run dir>/best/step-<step>.safetensors`` holds the best-dev weights a checkpoint
refers to (``LoopState.best_file``), and ``<run dir>/final/trainable.safetensors`` the tested ones
(``train.save_final``); a sharded run streams both one parameter at a time (``save_streamed``)
and reads ``best/`` back by rows (``read_into``).

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
import math
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
#: a sharded checkpoint's DCP folder, and the key of ``optimizer.pt`` listing the state tensors in it
WEIGHTS, DCP_KEYS = "weights", "zobench_dcp_keys"


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
    return publish(root, tmp, name, {f: sha256(tmp / f) for f in HASHED})


def publish(root: Path, tmp: Path, name: str, digests: dict[str, str]) -> Path:
    """The manifest (``digests``) written last into ``tmp``, ``tmp`` renamed to ``root/name``,
    ``latest`` moved to it, older checkpoints removed."""
    write_text_atomic(tmp / MANIFEST, json.dumps({"sha256": digests}, indent=1))
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
    #: a sharded run's checkpoint: its ``weights/`` DCP folder (``tensors`` is then empty and
    #: ``optimizer_state`` lacks the tensors ``DCP_KEYS`` lists: ``load_distributed`` reads both)
    distributed: Path | None = None

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
        return bool(self.tensors) or self.distributed is not None


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
        distributed = folder / WEIGHTS if (folder / WEIGHTS).is_dir() else None
        tensors = {}
        if distributed is None:  # a sharded run's weights are read into the shards (load_distributed)
            current = folder / "trainable.safetensors"
            tensors = load_file(str(current))
        current = folder / "optimizer.pt"
        optimizer_state = torch.load(current, weights_only=True)
    except CheckpointError:
        raise
    except Exception as err:  # any unreadable piece makes the checkpoint unusable
        raise unreadable(current, root, err) from err
    return Checkpoint(loop, tensors, optimizer_state, distributed)


def unreadable(path: Path, root: Path, err: BaseException) -> CheckpointError:
    """The one line for a checkpoint file (or DCP folder) that cannot be read."""
    lines = str(err).strip().splitlines()
    return CheckpointError(
        f"checkpoint {path} is unreadable ({type(err).__name__}: {lines[0] if lines else ''}); "
        f"delete {root} to start the run afresh"
    )


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


def save_streamed(specs: list, tensors, path: Path) -> None:
    """A safetensors file written one tensor at a time (never the whole set in memory), whole or
    not at all: ``specs`` ``[(name, dtype, shape)]`` make the header (the format's: an 8-byte
    little-endian length, the JSON of every tensor's dtype, shape and byte range, space-padded to
    a multiple of 8), then ``tensors`` (an iterable of the tensors, in ``specs``' order, on any
    device) are appended as they come. ``safetensors.torch.load_file`` / ``safe_open`` and
    ``from_pretrained`` read it as one ``save_file`` wrote."""
    import struct

    from safetensors.torch import _TYPES  # the format's dtype names, the library's own table

    names = {dtype: name for name, dtype in _TYPES.items()}
    header: dict = {"__metadata__": {"format": "pt"}}
    start = 0
    for name, dtype, shape in specs:
        size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": names[dtype], "shape": list(shape), "data_offsets": [start, start + size]}
        start += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with writing(path), tmp.open("wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for (name, dtype, shape), t in zip(specs, tensors, strict=True):
            if t.dtype != dtype or tuple(t.shape) != tuple(shape):
                raise ValueError(f"{path}: {name} is {t.dtype} {tuple(t.shape)}, its header says {dtype} {shape}")
            f.write(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_into(named, path: Path) -> None:
    """The tensors of the safetensors file ``path`` into the parameters of ``named``, each
    DTensor (``dist.mode=sharded``) reading only its own rows (``safe_open``'s slices): no rank
    reads the whole file into memory."""
    from safetensors import safe_open
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    try:
        with safe_open(str(path), framework="pt") as f, torch.no_grad():
            keys = set(f.keys())
            missing = [name for name, _ in named if name not in keys]
            if missing:
                raise CheckpointError(f"{path} lacks parameters {missing[:3]}: it belongs to another model or tuning")
            for name, p in named:
                if isinstance(p, DTensor):
                    shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
                    rows = f.get_slice(name)[offset[0] : offset[0] + shape[0]] if shape[0] else None
                    if rows is not None:
                        p.to_local().copy_(rows.reshape(shape))
                else:
                    p.data.copy_(f.get_tensor(name))
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"{path} is unreadable ({type(err).__name__}: {err})") from err


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
    """The file of the best-dev state reached at ``step`` (under ``best/``): one file per step,
    so a checkpoint always names a file that exists."""
    return f"step-{step:09d}.safetensors"


def remove_stale_best(best_dir: Path, keep: str | None) -> None:
    """Best-dev files other than ``keep``: superseded, or written after the checkpoint resumed from."""
    for path in best_dir.glob("step-*.safetensors"):
        if path.name != keep:
            path.unlink()
