"""Run by test_memory.py in a subprocess: an offloaded model several times larger than an
RLIMIT_AS budget is built (block by block into a disk store) and trained for two MeZO steps
under that limit; the two steps are replayed from their recorded closure values into a second
store built from the same seed, as ``zobench.replay`` streams (``trajectory/stream.py``: deferred
updates, one flush), and written as a sharded checkpoint (``offload/export.py``), still under the
limit, equal to the trained blocks; then the same model built whole in memory must fail under it.
The disk is made slower than the compute (``slow_disk``): the bound must not depend on its speed.

argv: store folder, budget in MiB. Prints ``ok <peak growth MiB>`` or raises.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from pathlib import Path

import torch
import transformers

from zobench.engine import VirtualEngine
from zobench.offload import DiskStore, OffloadEngine, Offloader
from zobench.offload.build import init_random_into
from zobench.offload.export import save_sharded
from zobench.optim import MeZO
from zobench.trajectory.tape import ReplayTape, Tape, replay_steps

CONFIG = dict(
    model_type="llama",
    hidden_size=256,
    intermediate_size=1024,
    num_hidden_layers=48,
    num_attention_heads=8,
    num_key_value_heads=8,
    vocab_size=128,
    tie_word_embeddings=True,
)


def vm_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def slow_disk(seconds: float = 0.05) -> None:
    """Every fsync (the disk store's, one per block written) takes ``seconds`` longer: the writer
    is slower than the blocks leave, as on CI's machine, where a flush once queued the whole model
    in memory (``offload/transfer.py`` bounds it to one write in flight)."""
    fsync = os.fsync

    def slow(fd):
        time.sleep(seconds)
        return fsync(fd)

    os.fsync = slow


def main(root: str, budget_mib: int) -> None:
    torch.set_num_threads(1)
    slow_disk()
    kwargs = dict(CONFIG)
    config = transformers.AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    auto = transformers.AutoModelForCausalLM
    ids = torch.randint(0, 128, (1, 8))
    with torch.no_grad():  # warm up the allocator and kernels on a small model (not counted)
        small = transformers.AutoConfig.for_model("llama", **{**kwargs, "num_hidden_layers": 1})
        auto.from_config(small)(input_ids=ids)
    # the store's reader / writer threads start later: their stacks (8 MiB of address space each
    # by default) would count against the limit, not the model's memory
    threading.stack_size(1 << 20)
    limit = vm_bytes() + budget_mib * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    model, store = init_random_into(auto, config, torch.float32, lambda n: DiskStore(root, n), init_seed=0)
    model_bytes = sum(store.nbytes(i) for i in range(len(store)))
    assert model_bytes > 3 * budget_mib * 2**20, (model_bytes, budget_mib)
    offloader = Offloader(model, store)
    offloader.adopt()
    engine = OffloadEngine(VirtualEngine(model), offloader)
    opt = MeZO(model.parameters(), lr=1e-3, eps=1e-3, engine=engine)
    engine.bind(opt)

    def closure(replicas: int = 1):
        logits = model(input_ids=ids.repeat(replicas, 1)).logits
        losses = logits.logsumexp(-1).reshape(replicas, -1).mean(-1)
        return losses if replicas > 1 else losses[0]

    tape, steps = Tape(), []
    for step in (1, 2):
        tape.start()
        opt.step(tape.wrap(closure, replicas=True))
        steps.append((step, tape.calls))
    offloader.flush()
    assert [store.step(i) for i in range(len(store))] == [2] * len(store)
    offloader.close()
    replay_streamed(auto, config, root, steps)
    for i in range(len(store)):  # the replayed blocks are the trained ones, bit for bit
        trained, replayed = store.read(i), DiskStore(f"{root}-replay", len(store)).read(i)
        assert all(torch.equal(replayed[name], t) for name, t in trained.items()), i
    try:  # the control: the same model whole in memory does not fit the limit
        auto.from_config(config)
    except (MemoryError, RuntimeError):
        print(f"ok {model_bytes / 2**20:.0f}")
        return
    raise AssertionError("the whole model fit in the limit: the limit does not bound anything")


def replay_streamed(auto, config, root: str, steps) -> None:
    """The base drawn again into a second store, the recorded steps replayed through a fresh MeZO
    on the offload engine (every block update deferred), flushed, written sharded."""
    model, store = init_random_into(auto, config, torch.float32, lambda n: DiskStore(f"{root}-replay", n), init_seed=0)
    offloader = Offloader(model, store)
    offloader.adopt()
    engine = OffloadEngine(VirtualEngine(model), offloader)
    opt = MeZO(model.parameters(), lr=1e-3, eps=1e-3, engine=engine)
    engine.bind(opt)
    replay_steps(opt, ReplayTape(True), steps, 1)
    save_sharded(model, offloader, Path(f"{root}-sharded"))
    offloader.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
