"""Block tensors between a store and the device, on two threads, with a bounded footprint.

The executor (``executor.py``) asks for block i when it arrives (``take``), reads the block it
will ask for next ahead (``read_ahead``) and hands a changed block back (``write``). In memory at
once: the block computing, **one** block read ahead (one read ahead and never taken, because
another block came next, is dropped) and **one** block being written. A block is handed to the
writer only once the previous write has landed, so a writer slower than the blocks leave (a slow
disk under a fast device; a flush, which computes nothing) makes the caller wait instead of
queueing the whole model in memory (tests/offload/test_transfer.py). The waits are counted in
``stalled_s``: a step's time minus it is its compute (the offload benchmark's bound).

On CUDA a read block is copied to the device on a side stream from pinned host memory; ``take``
makes the compute stream wait for that copy's event.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from .store import BlockStore

Tensors = dict[str, torch.Tensor]


class BlockTransfer:
    """Reads and writes of ``store``'s blocks for computing on ``device`` (module docstring).

    Args:
        store: the blocks' home.
        device: where blocks compute.
        prefetch: honour ``read_ahead`` (False: every block is read when taken, for debugging).
    """

    def __init__(self, store: BlockStore, device: torch.device, prefetch: bool = True) -> None:
        self.store, self.device, self.prefetch = store, device, prefetch
        #: seconds the caller waited on storage (a read not yet landed, a write in the way)
        self.stalled_s = 0.0
        #: the block read ahead (at most one entry)
        self.ahead: dict[int, Future] = {}
        #: the last write handed over and its block: every earlier one has landed (``write``)
        self._last_write: tuple[int, Future] | None = None
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="zobench-offload-read")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="zobench-offload-write")
        self._side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def take(self, i: int) -> Tensors:
        """Block i's tensors, ready for the compute stream: the block read ahead, or read now."""
        future = self.ahead.pop(i, None)
        if future is None:
            future = self._reader.submit(self._read, i, self._writing(i))
        tensors, event = self._waited(future)
        if event is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(event)
            for t in tensors.values():  # made on the side stream, used on this one
                t.record_stream(stream)
        return tensors

    def read_ahead(self, i: int) -> None:
        """Start reading block i (< ``len(store)``), the next to be taken; drop any other."""
        if not self.prefetch or i >= len(self.store) or i in self.ahead:
            return
        self.ahead.clear()
        self.ahead[i] = self._reader.submit(self._read, i, self._writing(i))

    def write(self, i: int, tensors: Tensors, step: int) -> None:
        """Hand block i's ``tensors`` (not modified afterwards) to the writer, stamped ``step``,
        once the previous write has landed."""
        self.wait()
        self._last_write = (i, self._writer.submit(self.store.write, i, tensors, step))
        self.ahead.pop(i, None)  # a read started before this write would be stale

    def wait(self) -> None:
        """Block until every write has landed (and surface a failed one)."""
        if self._last_write is not None:
            self._waited(self._last_write[1])
            self._last_write = None

    def _writing(self, i: int) -> Future | None:
        """Block i's write not yet landed, which a read of block i must wait for (else None)."""
        if self._last_write is not None and self._last_write[0] == i:
            return self._last_write[1]
        return None

    def close(self) -> None:
        """Finish the writes and stop both threads."""
        self.wait()
        self._reader.shutdown(wait=True)
        self._writer.shutdown(wait=True)

    def _waited(self, future: Future):
        started = time.perf_counter()
        try:
            return future.result()
        finally:
            self.stalled_s += time.perf_counter() - started

    def _read(self, i: int, writing: Future | None) -> tuple[Tensors, torch.cuda.Event | None]:
        """On the reader thread: block i's tensors on the device (after its last write lands)."""
        if writing is not None:
            writing.result()
        tensors = self.store.read(i)
        if self._side is not None:
            with torch.cuda.stream(self._side):
                moved = {n: t.to(self.device, non_blocking=True) for n, t in tensors.items()}
                event = torch.cuda.Event()
                event.record(self._side)
            return moved, event
        if not self.store.fresh_reads:  # the store's own buffers: the block works on a copy
            tensors = {n: t.clone() for n, t in tensors.items()}
        return tensors, None
