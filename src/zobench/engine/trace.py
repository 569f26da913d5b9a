"""Where a ZO step is: the engine phase and the module being evaluated, for stalls.

A step is perturb → forward → (perturb → forward) → restore / update; a hang inside it used to
print nothing. Two opt-in aids, both off (and free) unless asked for:

* ``ZOBENCH_TRACE=1``: log each engine phase with its duration (``zobench.trace`` logger, INFO)
  and each module's forward as it starts (DEBUG), so a log shows the last thing begun.
* ``ZOBENCH_WATCHDOG=<seconds>``: if no phase or module starts for that long, print the current
  phase and module, then every thread's Python stack (``faulthandler.dump_traceback``), and again
  each further period without progress. ``faulthandler.dump_traceback_later`` backs it up at
  twice the period, from a C thread, for a main thread that holds the GIL while stuck (the
  standard library's watchdog; it cannot say the phase, only the stacks).

``build_engine`` installs both on the model it is given when the variables are set, so training
runs (``python -m zobench``) and the benchmark get them alike; ``where()`` is what they report.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import TypedDict

log = logging.getLogger("zobench.trace")


class _State(TypedDict):
    phase: str  # the engine call in progress (base.PHASES) or "idle"
    module: str  # the module whose forward was entered last
    since: float  # time.monotonic() of the last change: what the watchdog polls


_state: _State = {"phase": "idle", "module": "-", "since": time.monotonic()}
_names: dict[int, str] = {}
_hooks: list = []
_watchdog: Watchdog | None = None


def where() -> str:
    """``phase=<engine phase> module=<module last entered>`` (what a stall report names)."""
    return f"phase={_state['phase']} module={_state['module']}"


def current_phase() -> str:
    return _state["phase"]


def _progress(phase: str | None = None, module: str | None = None) -> None:
    if phase is not None:
        _state["phase"] = phase
    if module is not None:
        _state["module"] = module
    _state["since"] = time.monotonic()  # what the watchdog polls


def tracing() -> bool:
    return os.environ.get("ZOBENCH_TRACE", "0").lower() in ("1", "true", "on", "yes")


@contextmanager
def phase(name: str):
    """Mark an engine phase (perturb, restore, update, mirrored ±, replicas, ...); afterwards the
    step is in ``after <name>`` (the forward that follows a perturbation, or the optimizer's own
    work), so a stall between engine calls is placed too."""
    _progress(phase=name)
    start = time.perf_counter()
    try:
        yield
    finally:
        if tracing():
            log.info("%s: %.4f s", name, time.perf_counter() - start)
        _progress(phase=f"after {name}")


def _enter_module(module, args) -> None:
    name = _names.get(id(module), type(module).__name__)
    _progress(module=name)
    if tracing():
        log.debug("forward %s (%s)", name, _state["phase"])


def install(model=None) -> None:
    """Name ``model``'s modules and, when ZOBENCH_TRACE / ZOBENCH_WATCHDOG ask for it, follow every
    module's forward (one global pre-hook) and arm the watchdog. Idempotent."""
    global _watchdog
    seconds = float(os.environ.get("ZOBENCH_WATCHDOG", "0") or 0)
    if not (tracing() or seconds > 0):
        return
    if model is not None:
        _names.update({id(m): name or type(m).__name__ for name, m in model.named_modules()})
    if not _hooks:
        from torch.nn.modules.module import register_module_forward_pre_hook

        _hooks.append(register_module_forward_pre_hook(_enter_module))
    if seconds > 0 and _watchdog is None:
        _watchdog = Watchdog(seconds)


def uninstall() -> None:
    """Remove the module hook and stop the watchdog (tests; a run keeps them to its end)."""
    global _watchdog
    while _hooks:
        _hooks.pop().remove()
    if _watchdog is not None:
        _watchdog.stop()
        _watchdog = None
    _names.clear()


class Watchdog:
    """Report where the step is when nothing progresses for ``seconds`` (see the module docstring).

    A daemon thread polls the time of the last phase or module start (progress costs the step
    nothing but that timestamp) and, each period without progress, prints ``where()`` and every
    thread's stack. While it runs it also keeps re-arming ``faulthandler.dump_traceback_later`` at
    twice the period: that C-level timer fires only if this thread stops running, i.e. when the
    stalled main thread holds the GIL."""

    def __init__(self, seconds: float, stream=None) -> None:
        self.seconds, self.stream = float(seconds), stream or sys.stderr
        self.poll = min(1.0, self.seconds / 4)
        self.fired = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zobench-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seen = last = _state["since"]
        while not self._stop.wait(self.poll):
            if self.stream is sys.stderr:
                faulthandler.dump_traceback_later(2 * self.seconds, file=sys.stderr)
            since, now = _state["since"], time.monotonic()
            if since != seen:  # progress since the last look
                seen = last = since
            if now - last < self.seconds:
                continue
            last = now
            self.fired += 1
            print(f"zobench: watchdog: no progress for {now - since:.0f} s; {where()}", file=self.stream, flush=True)
            faulthandler.dump_traceback(file=self.stream, all_threads=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.stream is sys.stderr:
            faulthandler.cancel_dump_traceback_later()
