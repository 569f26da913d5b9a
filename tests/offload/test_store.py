"""Block stores and the executor's bookkeeping: step stamps, atomic writes, one read and one
write per block per step."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_model
from zobench.engine import VirtualEngine
from zobench.offload import CpuStore, DiskStore, OffloadEngine, Offloader, find_blocks
from zobench.offload import setup as offload_setup
from zobench.optim import MeZO


@pytest.mark.parametrize("kind", ["cpu", "disk"])
def test_store_round_trip_and_stamps(kind, tmp_path):
    store = CpuStore(2, pin=False) if kind == "cpu" else DiskStore(tmp_path, 2)
    block = {"w": torch.randn(3, 4, dtype=torch.bfloat16), "b": torch.randn(4)}
    store.write(1, block, 7)
    back = store.read(1)
    assert store.step(1) == 7 and back.keys() == block.keys()
    assert all(torch.equal(back[k], v) for k, v in block.items())
    store.write(1, {k: v * 2 for k, v in block.items()}, 8)
    assert store.step(1) == 8 and torch.equal(store.read(1)["w"], block["w"] * 2)
    if kind == "disk":  # atomic: nothing but the block files is left
        assert sorted(p.name for p in tmp_path.iterdir()) == ["block-00001.safetensors"]


def test_a_step_reads_and_writes_each_block_once(tmp_path):
    model = tiny_model("llama")
    offloader = Offloader(model, DiskStore(tmp_path, 2))
    offloader.evict()
    engine = OffloadEngine(VirtualEngine(model), offloader)
    opt = MeZO(model.parameters(), lr=1e-2, eps=1e-2, engine=engine)
    engine.bind(opt)
    ids = torch.randint(0, 64, (2, 5))

    def closure(replicas: int = 1):
        losses = model(input_ids=ids.repeat(replicas, 1)).logits.logsumexp(-1).reshape(replicas, -1).mean(-1)
        return losses if replicas > 1 else losses[0]

    opt.step(closure)  # step 1: reads each block, nothing to write yet (its update is deferred)
    assert (offloader.reads, offloader.writes) == (2, 0)
    assert all(len(p) == 1 and p[0].step == 1 for p in offloader.pending)
    opt.step(closure)  # step 2: applies step 1's update on arrival, writes it back once
    offloader.wait()
    assert (offloader.reads, offloader.writes) == (4, 2)
    assert [offloader.store.step(i) for i in range(2)] == [1, 1]
    offload_setup.flush(tiny_model("llama"))  # not offloaded: nothing to do
    model.zobench_offloader = offloader
    offload_setup.flush(model)  # what a run's end does
    assert [offloader.store.step(i) for i in range(2)] == [2, 2]
    _, blocks = find_blocks(model)  # released: one-element placeholders between forwards
    assert all(p.untyped_storage().nbytes() == 4 for p in blocks.parameters())
    offloader.close()


def test_update_arriving_while_a_block_runs_is_refused(tmp_path):
    model = tiny_model("llama")
    offloader = Offloader(model, CpuStore(2, pin=False))
    offloader.evict()
    offloader.resident[0] = True
    first = next(iter(find_blocks(model)[1][0].parameters()))
    with pytest.raises(RuntimeError, match="block 0"):
        offloader.defer([(0, first)], None, 1.0, 0.0)  # type: ignore[arg-type]


def test_optimizer_state_streams_with_its_block(tmp_path):
    from zobench.optim import ZOSGDMomentum

    model = tiny_model("llama")
    offloader = Offloader(model, DiskStore(tmp_path, 2))
    offloader.evict()
    engine = OffloadEngine(VirtualEngine(model), offloader)
    opt = ZOSGDMomentum(model.parameters(), lr=1e-2, eps=1e-2, engine=engine)
    engine.bind(opt)
    ids = torch.randint(0, 64, (2, 5))
    for _ in range(2):
        opt.step(lambda: model(input_ids=ids).logits.logsumexp(-1).mean())
    offloader.wait()
    _, blocks = find_blocks(model)
    in_memory = [k for p in blocks.parameters() for k, v in opt.state.get(p, {}).items() if torch.is_tensor(v)]
    assert in_memory == []  # the blocks' momentum is in the store, not in the optimizer
    stored = offloader.store.read(0)
    names = [name for name, _ in blocks[0].named_parameters()]
    assert {f"state.{n}::momentum" for n in names} <= stored.keys()
    assert all(stored[f"state.{n}::momentum"].shape == stored[n].shape for n in names)
    assert [offloader.store.step(i) for i in range(2)] == [2, 2]
    resident = next(p for p in model.parameters() if id(p) not in offloader.block_of)
    assert torch.is_tensor(opt.state[resident]["momentum"])  # the resident layers' stays in memory
    offloader.close()
