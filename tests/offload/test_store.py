"""Block stores and the executor's bookkeeping: step stamps, atomic writes, one read and one
write per block per step."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import tiny_model
from zobench.engine import VirtualEngine
from zobench.errors import CheckpointError
from zobench.offload import CpuStore, DiskStore, OffloadEngine, Offloader, find_blocks
from zobench.offload import setup as offload_setup
from zobench.offload.store import PIN_MANIFEST
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


def _disk_store(root, stamps):
    store = DiskStore(root, len(stamps))
    for i, step in enumerate(stamps):
        store.write(i, {"w": torch.full((2,), float(step))}, step)
    return store


def test_pin_and_restore_bring_every_block_back_to_the_checkpoint(tmp_path):
    """A checkpoint of step 2 pins blocks at steps 1 and 2 (the hard links keep them); later
    writes put blocks ahead of it; a resume takes each block from its current file when it is at
    a step <= 2, else from the pin, and returns the steps the replay starts the blocks from."""
    store = _disk_store(tmp_path / "store", [1, 2, 2])
    folder = tmp_path / "run" / "checkpoint" / "offload-000000002"
    store.pin(folder, 2, "base")
    store.write(0, {"w": torch.full((2,), 2.0)}, 2)  # the deferred update of step 2 landed: still <= 2
    store.write(1, {"w": torch.full((2,), 3.0)}, 3)  # written by step 4's forward, then a kill
    assert store.restore(folder, 2, "base") == [2, 2, 2]
    assert [float(store.read(i)["w"][0]) for i in range(3)] == [2.0, 2.0, 2.0]
    assert json.loads((folder / PIN_MANIFEST).read_text())["stamps"] == [1, 2, 2]
    store.pin(folder, 2, "base")  # a pin left by a killed attempt: replaced by the store's files now
    assert json.loads((folder / PIN_MANIFEST).read_text())["stamps"] == [2, 2, 2]


@pytest.mark.parametrize(
    ("pinned", "message"),
    [
        (None, r"block-00001.safetensors: offload block 1 is at step 3, and no pinned copy .* cannot be brought"),
        ((2, "other"), r"store.json: the offload store was pinned by another run or step"),
        ((1, "base"), r"store.json: the offload store was pinned by another run or step \(step 1, checkpoint step 2"),
    ],
)
def test_a_store_that_cannot_reach_the_checkpoint_is_refused(tmp_path, pinned, message):
    store = _disk_store(tmp_path / "store", [2, 2])
    folder = tmp_path / "checkpoint" / "offload-000000002"
    if pinned is not None:
        store.pin(folder, *pinned)
    store.write(1, {"w": torch.zeros(2)}, 3)
    with pytest.raises(CheckpointError, match=message):
        store.restore(folder, 2, "base")
