"""Offloaded MeZO ≡ in-memory MeZO, bit for bit: losses of every step and the final weights."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_model
from zobench.engine import VirtualEngine
from zobench.offload import CpuStore, DiskStore, OffloadEngine, Offloader
from zobench.optim import MeZO, decay_groups

STEPS = 4


def _batch(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(seed))


def _closure(model, ids):
    def closure(replicas: int = 1):
        logits = model(input_ids=ids.repeat(replicas, 1)).logits.float()
        losses = logits.logsumexp(-1).reshape(replicas, -1).mean(-1)
        return losses if replicas > 1 else losses[0]

    return closure


def _run(model, engine, steps: int = STEPS, **kwargs):
    opt = MeZO(decay_groups(model.named_parameters(), 0.1), lr=1e-2, eps=1e-2, engine=engine, seed=3, **kwargs)
    if isinstance(engine, OffloadEngine):
        engine.bind(opt)
    return opt, [float(opt.step(_closure(model, _batch(s)))) for s in range(steps)]


def _offloaded(model, store, **kwargs):
    offloader = Offloader(model, store, **kwargs)
    offloader.evict()
    engine = OffloadEngine(VirtualEngine(model), offloader)
    return offloader, engine


def _store(kind: str, tmp_path, count: int):
    return CpuStore(count) if kind == "cpu" else DiskStore(tmp_path / "store", count)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["cpu", "disk"])
@pytest.mark.parametrize("family", ["llama", "opt"])
def test_mezo_offloaded_equals_in_memory(kind, dtype, family, tmp_path):
    reference = tiny_model(family, dtype)
    _, expected = _run(reference, VirtualEngine(reference))
    model = tiny_model(family, dtype)
    offloader, engine = _offloaded(model, _store(kind, tmp_path, 2))
    opt, losses = _run(model, engine)
    assert losses == expected
    weights = offloader.state_dict()
    for name, p in reference.named_parameters():
        assert torch.equal(weights[name], p.detach()), name
    assert [offloader.store.step(i) for i in range(2)] == [STEPS, STEPS]
    offloader.close()


# -- on a GPU: blocks copied host→device on a side stream from pinned buffers (skipped without CUDA;
# on CPU the same executor runs between host buffers) ---------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
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
