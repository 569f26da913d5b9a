"""Block reads and writes (transfer.py) as the executor drives them: one write in flight however
slow the store, one block read ahead, and a flush reads only the blocks it updates."""

from __future__ import annotations

import threading
import time

import torch
import transformers

from tests.helpers import TINY_ARCHS
from zobench.engine import VirtualEngine
from zobench.offload import CpuStore, OffloadEngine, Offloader
from zobench.optim import MeZO

LAYERS = 6


class GatedStore(CpuStore):
    """A store whose writes wait for ``gate``: a disk slower than anything the executor does."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.gate = threading.Event()
        self.gate.set()

    def write(self, index, tensors, step) -> None:
        self.gate.wait(timeout=60)
        super().write(index, tensors, step)


def _model():
    kwargs = dict(TINY_ARCHS["llama"][1], num_hidden_layers=LAYERS)
    config = transformers.AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval().requires_grad_(False)


def _stepped_once() -> tuple[GatedStore, Offloader]:
    """An offloaded model after one MeZO step: every block's update deferred (pending)."""
    model = _model()
    store = GatedStore(LAYERS)
    offloader = Offloader(model, store)
    offloader.evict()
    engine = OffloadEngine(VirtualEngine(model), offloader)
    opt = MeZO(model.parameters(), lr=1e-2, eps=1e-2, engine=engine, seed=0)
    engine.bind(opt)
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    opt.step(lambda: model(input_ids=ids).logits.logsumexp(-1).mean())
    return store, offloader


def test_a_flush_waits_for_a_slow_writer_instead_of_queueing_every_block():
    """CI saw it: a replay's flush (every block pending, nothing to compute) handed all 48 blocks
    of tests/offload/test_memory.py's model to a writer slowed by fsync, and ran out of memory."""
    store, offloader = _stepped_once()
    assert all(offloader.pending[i] for i in range(LAYERS))
    store.gate.clear()
    before = offloader.writes
    flushing = threading.Thread(target=offloader.flush)
    flushing.start()
    deadline = time.monotonic() + 30
    while offloader.writes == before and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # unbounded, the flush hands every other block over in this time
    handed = offloader.writes - before
    store.gate.set()
    flushing.join(timeout=60)
    assert handed == 1
    assert [store.step(i) for i in range(LAYERS)] == [1] * LAYERS
    offloader.close()


def test_a_flush_reads_only_the_blocks_it_updates_and_holds_none_ahead():
    """Blocks without pending updates are neither read nor held: before, a flush read block i+1
    ahead of every block i it updated, and kept it whenever block i+1 had nothing pending."""
    store, offloader = _stepped_once()
    for i in range(1, LAYERS, 2):  # as after an update of some blocks only (LeZO's layers)
        offloader.pending[i] = []
    read = []
    original = store.read
    store.read = lambda i: read.append(i) or original(i)
    offloader.flush()
    assert sorted(read) == list(range(0, LAYERS, 2))
    assert offloader.transfer.ahead == {}
    offloader.close()
