"""The Triton backend: z generated inside fused kernels, never materialised.

Modules, each importing only the ones above it (no cycle; ``tests/engine/test_imports.py``):

* ``primitives``: device functions (the Philox z of a block or of rows, rounding to θ's dtype)
  and the host-side flags they take (``interpreted``);
* ``kernels``: the sweeps (in-place moves, the fused restore+update), the perturbed copy (whole,
  a block of rows, two scales of one z) and z itself, with their launchers;
* ``fused``: the GEMM that perturbs its weight tiles in registers and the embedding gather that
  draws only the looked-up rows (``engine.fused_linear``);
* ``engines``: ``TritonProvider`` (what the virtual engine asks for) and the two engines.

Importing this package imports Triton, which reads ``TRITON_INTERPRET`` when the kernels are
defined: set it before the first import to run the kernels on CPU (tests).
"""

from __future__ import annotations

from .engines import TritonInPlaceEngine, TritonProvider, TritonVirtualEngine
from .primitives import interpreted

__all__ = ["TritonInPlaceEngine", "TritonProvider", "TritonVirtualEngine", "interpreted"]
