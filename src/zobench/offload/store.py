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
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

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
        with safe_open(str(self.path(index)), framework="pt", device="cpu") as f:
            return int((f.metadata() or {}).get("step", 0))

    def nbytes(self, index: int) -> int:
        return self.path(index).stat().st_size
