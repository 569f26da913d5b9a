"""Where offloaded blocks live between their uses: ``BlockStore`` and its two backends.

A store holds, for block i, the block's tensors by name (its ``named_parameters`` names, relative
to the block) and the optimizer step its weights are at (the step stamp: block i holds θ_s, the
weights after the update of step s; 0 = as loaded). ``read`` returns CPU tensors the caller may
move to its device; ``write`` replaces block i's tensors and stamp together.

* ``CpuStore`` (``offload=cpu``): host buffers, page-locked ("pinned") when CUDA is available so
  host→device copies can run asynchronously on a side stream. ``read`` returns the buffers
  themselves (``fresh_reads = False``): the executor copies them to the device (on a CPU device,
  into a second host buffer: the same code path).
* ``DiskStore`` (``offload=disk``): one safetensors file per block, ``block-00012.safetensors``,
  its step in the file's metadata. A write goes to a temporary file in the same folder, is
  fsync'ed, then renamed over the old one (``os.replace`` is atomic on POSIX), so a kill leaves
  each block whole at either its old or its new step, never a torn file.

Crash consistency of ``offload=disk`` (``pin`` / ``restore``): the store is the run's state, and
training overwrites it, so a checkpoint of step c pins it: ``pin`` hard-links every block file
(no copy: a later write replaces the name, the pinned link keeps the old file) into a folder of
the checkpoint, with ``store.json`` naming the step and the run's base-weights hash. Every pinned
block is at a step <= c (c - 1 where step c's update was still deferred). A resume at c
``restore``s each block from its current file when that is at a step <= c, else from the pin: a
block a kill left ahead of c (written by a step after the checkpoint) cannot be brought back
exactly, its pinned version can; the missing updates s_b + 1 .. c come from the trajectory log.
"""

from __future__ import annotations

import json
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import CheckpointError

Tensors = Mapping[str, torch.Tensor]


class BlockStore(ABC):
    """The storage of ``len(self)`` blocks; see the module docstring."""

    #: whether ``read`` returns tensors the caller owns (a fresh copy) rather than the store's own
    fresh_reads: bool = True

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    @abstractmethod
    def read(self, index: int) -> dict[str, torch.Tensor]:
        """Block ``index``'s tensors (on the CPU)."""

    @abstractmethod
    def write(self, index: int, tensors: Tensors, step: int) -> None:
        """Replace block ``index``'s tensors with ``tensors`` (any device) and its stamp with ``step``."""

    @abstractmethod
    def step(self, index: int) -> int:
        """The optimizer step block ``index``'s stored weights are at."""

    def nbytes(self, index: int) -> int:
        """Bytes of block ``index``'s tensors (what one read or write moves)."""
        return sum(t.numel() * t.element_size() for t in self.read(index).values())


class CpuStore(BlockStore):
    """Blocks in host memory, pinned when ``pin`` (default: when CUDA is available)."""

    fresh_reads = False

    def __init__(self, count: int, pin: bool | None = None) -> None:
        super().__init__(count)
        self.pin = torch.cuda.is_available() if pin is None else bool(pin)
        self._blocks: list[dict[str, torch.Tensor] | None] = [None] * count
        self._steps = [0] * count

    def read(self, index: int) -> dict[str, torch.Tensor]:
        block = self._blocks[index]
        if block is None:
            raise KeyError(f"offload store: block {index} was never written")
        return dict(block)

    def write(self, index: int, tensors: Tensors, step: int) -> None:
        block = self._blocks[index]
        if block is None or block.keys() != tensors.keys():
            # first write: buffers of their own (pinned: the host side of async host↔device copies)
            block = {
                name: torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=self.pin)
                for name, t in tensors.items()
            }
        for name, t in tensors.items():
            block[name].copy_(t)
        self._blocks[index], self._steps[index] = block, int(step)

    def step(self, index: int) -> int:
        return self._steps[index]

    def nbytes(self, index: int) -> int:
        return sum(t.numel() * t.element_size() for t in (self._blocks[index] or {}).values())


class DiskStore(BlockStore):
    """Blocks in ``<root>/block-NNNNN.safetensors`` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, count: int) -> None:
        super().__init__(count)
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, index: int) -> Path:
        return self.root / f"block-{index:05d}.safetensors"

    def read(self, index: int) -> dict[str, torch.Tensor]:
        with safe_open(str(self.path(index)), framework="pt", device="cpu") as f:
            return {name: f.get_tensor(name) for name in f.keys()}

    def write(self, index: int, tensors: Tensors, step: int) -> None:
        target = self.path(index)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
        save_file(cpu, str(tmp), metadata={"step": str(int(step))})
        with open(tmp, "rb+") as handle:  # on disk before the rename makes it the block
            os.fsync(handle.fileno())
        os.replace(tmp, target)

    def step(self, index: int) -> int:
        return _stamp(self.path(index))

    def nbytes(self, index: int) -> int:
        return self.path(index).stat().st_size

    # -- crash consistency (module docstring) ----------------------------------------------------
    def pin(self, folder: Path, step: int, base_sha256: str) -> None:
        """Pin the store's files as the state of checkpoint ``step`` in ``folder`` (built aside,
        renamed into place whole). A folder already there is replaced: it is left by an attempt
        killed before its checkpoint was written (so no checkpoint names it), possibly of
        another config."""
        folder = Path(folder)
        tmp = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        stamps = []
        for i in range(self.count):
            _link_or_copy(self.path(i), tmp / self.path(i).name)
            stamps.append(_stamp(tmp / self.path(i).name))
        manifest = {"step": int(step), "base_sha256": base_sha256, "stamps": stamps}
        (tmp / PIN_MANIFEST).write_text(json.dumps(manifest))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)

    def restore(self, folder: Path, step: int, base_sha256: str, exact: bool = False) -> list[int]:
        """Bring the store back to checkpoint ``step`` pinned in ``folder``: each block from its
        current file if at a step <= ``step`` (``exact``: == ``step``, a weights checkpoint, which
        replays nothing), else from the pin; returns the blocks' steps.
        Refuses (one line) a pin of another run or step, or a block no version of which is <= ``step``."""
        folder, manifest = Path(folder), Path(folder) / PIN_MANIFEST
        pinned = json.loads(manifest.read_text()) if manifest.is_file() else None
        if pinned is not None and (pinned.get("step") != step or pinned.get("base_sha256") != base_sha256):
            raise CheckpointError(
                f"{manifest}: the offload store was pinned by another run or step (step {pinned.get('step')}, "
                f"checkpoint step {step}); delete {folder.parent} to start the run afresh"
            )
        stamps = []
        for i in range(self.count):
            current = self.step(i) if self.path(i).is_file() else None
            if current is None or current > step or (exact and current != step):
                if pinned is None or pinned["stamps"][i] > step or (exact and pinned["stamps"][i] != step):
                    found = "missing" if current is None else f"at step {current}"
                    at = "step" if exact else "a step <="
                    raise CheckpointError(
                        f"{self.path(i)}: offload block {i} is {found}, and no pinned copy at {at} {step} "
                        f"(the checkpoint's) is in {folder}: the store cannot be brought to step {step}; "
                        f"delete {folder.parent} to start the run afresh"
                    )
                link = self.path(i).with_name(f".{self.path(i).name}.restore")
                _link_or_copy(folder / self.path(i).name, link)
                os.replace(link, self.path(i))
                current = self.step(i)
            stamps.append(current)
        return stamps


#: the pin folder's record: ``{"step", "base_sha256", "stamps"}``
PIN_MANIFEST = "store.json"


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (a copy where the file system has none)."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _stamp(path: Path) -> int:
    """The step recorded in a block file's metadata."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        return int((f.metadata() or {}).get("step", 0))
