"""Models larger than memory: transformer blocks streamed through the ZO step (``offload``).

Design (docs/offload.md has the long form):

* Unit: a transformer block, the largest ``nn.ModuleList`` of identical layers (``blocks.py``).
  Embeddings, positional embeddings, the final norm and the LM head stay resident: for a model
  with vocabulary V, width d and an untied head that is 2·V·d weights (SmolLM2-135M, tied:
  28 M of its 135 M; OPT-13B: 2·50272·5120 = 515 M of 13 B, 1 GB in fp16).
* ``BlockStore`` (``store.py``): ``cpu`` (host buffers, pinned with CUDA) or ``disk`` (one
  safetensors file per block, written atomically, stamped with its step).
* ``Offloader`` (``executor.py``): a forward pre-hook on each block makes its weights resident
  (block i+1 is read on a reader thread, and copied on a CUDA side stream, while block i
  computes); a forward hook writes it back if it changed and releases it.
* ``OffloadEngine`` (``engine.py``): the config's engine (virtual mode) evaluates the resident
  block unchanged; its updates of blocks are deferred to the block's next arrival (ZO2's
  deferred update), so a MeZO step reads and writes each block once.
* ``build.py``: ``*-random`` models initialised block by block into the store (with
  ``offload=none``'s draws: built on meta under ``models.meta.Recorder``, each block's tapes
  replayed in turn), checkpoints read lazily (``safetensors.safe_open``) into it, in-memory models moved
  into it.
* ``export.py``: an offloaded model written as a sharded Hugging Face checkpoint block by block
  (``train.save_final``, the streamed ``zobench.replay`` / ``export``: ``trajectory/stream.py``).

Methods that stream: ``config.rules.OFFLOAD_METHODS``, every method of the registry (their
parameter-sized state, momentum, Adam moments, HiZOO's Σ, MeZO-SVRG's θ̄, DiZO's θ0, streams with
its block); a method not listed is refused in one line. Passes over storage per step, per
method: docs/offload.md.
"""

from __future__ import annotations

from ..config.schema import OFFLOAD_MODES  # none (everything resident), cpu (host memory), disk (files)
from .blocks import find_blocks
from .engine import OffloadEngine
from .executor import Offloader, PendingUpdate
from .store import BlockStore, CpuStore, DiskStore

__all__ = [
    "OFFLOAD_MODES",
    "BlockStore",
    "CpuStore",
    "DiskStore",
    "OffloadEngine",
    "Offloader",
    "PendingUpdate",
    "find_blocks",
]
