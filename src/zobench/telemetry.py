"""What a run measures about itself: forward passes, peak memory, and where metrics go.

* ``ForwardCounter``: a forward pre-hook on the model counts every call, per phase
  (``train``, ``eval``, ``probe``), so no method and no logging path can under-report.
* ``PeakMemory``: GPU max allocated (``torch.cuda.max_memory_allocated``), or on CPU the peak
  resident set size of the process since the last ``reset()`` (Linux ``VmHWM``, reset through
  ``/proc/self/clear_refs``; where that is unavailable, the lifetime ``ru_maxrss``).
* ``JsonlLogger`` (always) and ``WandbLogger`` (``logger=wandb``, ``zobench.wandb_logger``)
  receive the same events; both are ``Sink``s (log, sync, summary, finish, offset), as is
  ``NullLogger``, the sink of a rank that writes nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import os
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Protocol

import torch

from .checkpoint import writing
from .errors import CheckpointError
from .wandb_logger import WandbLogger, wandb_mode, wandb_unreachable  # re-exported: one place to import loggers from

log = logging.getLogger(__name__)


# set while a model call continues a forward pass from its prompt's KV cache (prefix-shared
# candidate scoring): the prompt call and its continuation count as one forward pass
CONTINUATION: contextvars.ContextVar[bool] = contextvars.ContextVar("zobench_continuation", default=False)


class ForwardCounter:
    """Counts model forward passes per phase; ``with counter.phase("eval"): ...``.

    ``replicas`` (a callable) says how many forward passes one call is: a batched evaluation of
    N perturbed models (FZOO on the virtual engine) is one call but N forward passes."""

    def __init__(self, model: torch.nn.Module, replicas=None) -> None:
        self.counts: Counter[str] = Counter()
        self.current = "train"
        self.replicas = replicas or (lambda: 1)
        self._handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        if CONTINUATION.get():  # the second half of one forward pass split at a KV cache
            return
        self.counts[self.current] += self.replicas()

    @contextlib.contextmanager
    def phase(self, name: str):
        previous, self.current = self.current, name
        try:
            yield
        finally:
            self.current = previous

    def __getitem__(self, phase: str) -> int:
        return self.counts[phase]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def remove(self) -> None:
        self._handle.remove()


def _release_free_heap() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``), so that the RSS a CPU peak
    is measured from counts live memory, not whatever earlier work left cached in malloc's
    arenas (which moved inference peaks by ~100 MB between otherwise identical runs)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peak is then an upper bound, as before
        pass


class PeakMemory:
    """Peak memory since ``reset()``: CUDA max allocated, or CPU peak RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.source = "cuda_max_allocated" if self.device.type == "cuda" else "vmhwm"
        if self.source == "vmhwm" and not self._clear_refs():
            self.source = "ru_maxrss"  # cannot reset: lifetime peak (an upper bound)

    @staticmethod
    def _clear_refs() -> bool:
        _release_free_heap()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # "5": reset the peak RSS (VmHWM) to the current RSS
            return True
        except OSError:
            return False

    def reset(self) -> None:
        if self.source == "cuda_max_allocated":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.source == "vmhwm":
            self._clear_refs()

    def resident(self) -> int:
        """The memory held now: CUDA's allocated bytes, or the process's RSS (``VmRSS``)."""
        if self.source == "cuda_max_allocated":
            return int(torch.cuda.memory_allocated(self.device))
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def peak(self) -> int:
        if self.source == "cuda_max_allocated":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        if self.source == "vmhwm":
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _finite(value):
    """JSON has no NaN/inf: they are written as null (and the run status says why)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Sink(Protocol):
    """Where a run's events go (``metrics.jsonl``, W&B, nowhere): every logger has these. ``sync``
    makes what was logged durable; ``offset`` is how much of it there is (the bytes of
    metrics.jsonl, which a checkpoint records; 0 for a sink a resume does not cut back)."""

    @property
    def offset(self) -> int: ...

    def log(self, event: dict) -> None: ...

    def sync(self) -> None: ...

    def summary(self, summary: dict) -> None: ...

    def finish(self) -> None: ...


class NullLogger:
    """The sink of a rank other than 0 (rank 0 alone writes the run dir): nothing is written."""

    offset = 0

    def log(self, event: dict) -> None:
        pass

    def sync(self) -> None:
        pass

    def summary(self, summary: dict) -> None:
        pass

    def finish(self) -> None:
        pass


class JsonlLogger:
    """Appends one JSON object per event to ``metrics.jsonl``, flushed at once; ``sync()`` makes
    what was written durable (fsync), which the run does before a checkpoint records the offset
    and before the summary is written."""

    def __init__(self, path: Path, truncate_at: int = 0) -> None:
        self.path = Path(path)
        size = self.path.stat().st_size if self.path.is_file() else 0
        if size < truncate_at:  # truncate() would pad with NUL bytes: events were lost, not replayable
            raise CheckpointError(
                f"{self.path} holds {size} bytes, fewer than the {truncate_at} the checkpoint "
                f"recorded: events before the checkpoint are lost; delete "
                f"{self.path.parent / 'checkpoint'} and {self.path} to start the run afresh"
            )
        self._file = self.path.open("a+", encoding="utf-8")
        # a resumed run replays the events after its checkpoint: cut them off first
        self._file.truncate(truncate_at)
        self._file.seek(truncate_at)

    @property
    def offset(self) -> int:
        """Bytes written so far (a checkpoint records it)."""
        return self._file.tell()

    def log(self, event: dict) -> None:
        with writing(self.path):  # a full disk: an OSError naming metrics.jsonl
            self._file.write(json.dumps({k: _finite(v) for k, v in event.items()}) + "\n")
            self._file.flush()

    def sync(self) -> None:
        with writing(self.path):
            self._file.flush()
            os.fsync(self._file.fileno())

    def summary(self, summary: dict) -> None:
        pass

    def finish(self) -> None:
        if not self._file.closed:
            self.sync()
            self._file.close()


def clock(seconds: float) -> str:
    """``H:MM:SS`` (hours past 24 keep counting: a week-long ETA reads ``168:00:00``)."""
    minutes, secs = divmod(int(max(seconds, 0)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class Progress:
    """Training progress: step/total, loss, forward passes/s and the ETA.

    On a terminal a tqdm bar shows them (``disable=None``: drawn only on a terminal). When the
    output is a file or a pipe (Slurm, CI, ``> log``) a bar's carriage returns would fill the log,
    so instead one plain line ``step 20/200 (10%): loss 0.6931, 3.10 fwd/s, eta 0:09:40`` is
    logged every ``every`` steps (``train.log_every``) and at the last step, through logging
    (Hydra's: the console and ``<run dir>/__main__.log``). The rate counts the forward passes of
    this process only, so a resumed run's ETA is not skewed by the time before the resume."""

    def __init__(
        self,
        total: int,
        initial: int = 0,
        forward_passes: int = 0,
        every: int = 10,
        file=None,
        disable: bool | None = None,
    ) -> None:
        from tqdm.auto import tqdm

        file = file or sys.stderr
        self.plain = disable is None and not (hasattr(file, "isatty") and file.isatty())
        self.bar = tqdm(
            total=total,
            initial=initial,
            unit="step",
            disable=True if self.plain else disable,
            file=file,
            dynamic_ncols=True,
            mininterval=0,
        )
        self._t0 = time.perf_counter()
        self._passes0 = forward_passes
        self._total, self._step0, self._step = total, initial, initial
        self._every = max(1, int(every))

    def update(self, loss: float, forward_passes: int) -> None:
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        rate = (forward_passes - self._passes0) / elapsed
        self.bar.set_postfix(loss=f"{loss:.4f}", fwd_per_s=f"{rate:.2f}", refresh=False)
        self.bar.update(1)
        self._step += 1
        if self.plain and (self._step % self._every == 0 or self._step == self._total):
            eta = (self._total - self._step) * elapsed / max(self._step - self._step0, 1)
            log.info(
                "step %d/%d (%d%%): loss %.4f, %.2f fwd/s, eta %s",
                self._step,
                self._total,
                100 * self._step // max(self._total, 1),
                loss,
                rate,
                clock(eta),
            )

    def close(self) -> None:
        self.bar.close()


HEARTBEAT_S = 30.0  # the longest a log stays silent during a long evaluation or model load


@contextlib.contextmanager
def heartbeat(what: str, every: float | None = None, detail=None):
    """While the block runs, log ``<what>: 0:01:30 so far[, <detail()>]`` every ``every`` seconds,
    so a Slurm log is never silent for minutes (a dev evaluation of a large model, a model load).
    A daemon thread only sleeps and logs; ``detail`` (a callable, e.g. forward passes so far) is
    read from it, so it must only read plain counters."""
    import threading

    every = HEARTBEAT_S if every is None else every
    done, start = threading.Event(), time.perf_counter()

    def beat() -> None:
        while not done.wait(every):
            extra = f", {detail()}" if detail is not None else ""
            log.info("%s: %s so far%s", what, clock(time.perf_counter() - start), extra)

    thread = threading.Thread(target=beat, name="zobench-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


__all__ = [
    "CONTINUATION",
    "ForwardCounter",
    "JsonlLogger",
    "NullLogger",
    "PeakMemory",
    "Progress",
    "Sink",
    "WandbLogger",
    "clock",
    "heartbeat",
    "wandb_mode",
    "wandb_unreachable",
]
