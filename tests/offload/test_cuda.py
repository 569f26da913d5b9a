"""On a GPU: blocks copied host→device on a side stream from pinned buffers give the in-GPU
results bit for bit (skipped without CUDA; on CPU the same executor runs between host buffers)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_model
from tests.offload.test_equivalence import _run
from zobench.engine import VirtualEngine
from zobench.offload import CpuStore, DiskStore, OffloadEngine, Offloader

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["cpu", "disk"])
def test_mezo_streamed_to_the_gpu_equals_in_gpu(kind, dtype, tmp_path):
    reference = tiny_model("llama", dtype).cuda()
    _, expected = _run(reference, VirtualEngine(reference))
    model = tiny_model("llama", dtype).cuda()
    store = CpuStore(2) if kind == "cpu" else DiskStore(tmp_path, 2)
    assert kind != "cpu" or store.pin  # pinned: the copies can be asynchronous
    offloader = Offloader(model, store, "cuda")
    offloader.evict()
    _, losses = _run(model, OffloadEngine(VirtualEngine(model), offloader))
    assert losses == expected
    weights = offloader.state_dict()
    for name, p in reference.named_parameters():
        assert torch.equal(weights[name].cuda(), p.detach()), name
    offloader.close()
