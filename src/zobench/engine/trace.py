"""Where a ZO step is: the engine phase and the module being evaluated, for stalls.

A step is perturb → forward → (perturb → forward) → restore / update; a hang inside it used to
print nothing. Two opt-in aids, both off (and free) unless asked for:

* ``ZOBENCH_TRACE=1``: log each engine phase with its duration (``zobench.trace`` logger, INFO)
  and each module's forward as it starts (DEBUG), so a log shows the last thing begun.
* the watchdog (``engine.watchdog_s`` of a run, default 300 s; ``ZOBENCH_WATCHDOG=<seconds>``
  overrides it, for runs and the benchmark alike; 0 / null: off): if no phase or module starts
  for that long, print the current phase and module, then every thread's Python stack
  (``faulthandler.dump_traceback``), and again each further period without progress. Inside a
  training step (``step()``: the recipe marks each) a stall also *ends the run* (``on_stall``;
  the run's is ``exit_on_stall``: one line naming the step, phase and module and what to do, then
  ``os._exit(EXIT_STALL)``): a hung kernel launch must not hold a Slurm job until its time limit.
  Outside a step (a long checkpoint write, an evaluation) it only reports. Steps never overlap a
  checkpoint write, so the run dir then holds the last complete checkpoint, never a half-written
  one. ``faulthandler.dump_traceback_later`` backs the thread up at twice the period, from a C
  thread, for a main thread that holds the GIL while stuck (the standard library's watchdog: it
  prints only the stacks; inside a step it also exits, status 1).

``build_engine`` installs the environment's on the model it is given, so training runs
(``python -m zobench``) and the benchmark get them alike; ``where()`` is what they report.
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
    step: str | None  # the training step in progress (``step()``), None between steps


#: exit status of a run ended by the watchdog (a stall inside a step)
EXIT_STALL = 3

_state: _State = {"phase": "idle", "module": "-", "since": time.monotonic(), "step": None}
#: what the run's stall line says to do (``exit_on_stall``): the recipe keeps it current
resume_hint = ["run the same command again"]
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


@contextmanager
def step(name: str):
    """Mark a training step: a stall inside it ends the run (see the module docstring)."""
    _state["step"] = name
    _progress()
    try:
        yield
    finally:
        _state["step"] = None
        _progress()


def _enter_module(module, args) -> None:
    name = _names.get(id(module), type(module).__name__)
    _progress(module=name)
    if tracing():
        log.debug("forward %s (%s)", name, _state["phase"])


def watchdog_seconds(configured=None) -> float:
    """The watchdog's period: ``ZOBENCH_WATCHDOG`` when set, else ``configured`` (a run's
    ``engine.watchdog_s``); 0 / None: off."""
    env = os.environ.get("ZOBENCH_WATCHDOG")
    value = env if env not in (None, "") else configured
    return float(value or 0)


def install(model=None, watchdog_s=None, on_stall=None) -> None:
    """Name ``model``'s modules and, when ZOBENCH_TRACE / the watchdog ask for it, follow every
    module's forward (one global pre-hook) and arm the watchdog (``watchdog_seconds(watchdog_s)``;
    ``on_stall(reason)``: what a stall inside a step does). Idempotent; a later call with
    ``on_stall`` gives the running watchdog its period and its ``on_stall``."""
    global _watchdog
    seconds = watchdog_seconds(watchdog_s)
    if _watchdog is not None and on_stall is not None:
        _watchdog.stop()
        _watchdog = None
    if not (tracing() or seconds > 0):
        return
    if model is not None:
        _names.update({id(m): name or type(m).__name__ for name, m in model.named_modules()})
    if not _hooks:
        from torch.nn.modules.module import register_module_forward_pre_hook

        _hooks.append(register_module_forward_pre_hook(_enter_module))
    if seconds > 0 and _watchdog is None:
        _watchdog = Watchdog(seconds, on_stall=on_stall)


def exit_on_stall(reason: str) -> None:
    """The run's ``on_stall``: one line on stderr (the reason and ``resume_hint``), the logs
    flushed, then ``os._exit(EXIT_STALL)``: the main thread may be stuck in a C call that no
    exception would interrupt. Nothing is being written then (steps never overlap a checkpoint)."""
    print(f"zobench: error: watchdog: {reason}; {resume_hint[0]}", file=sys.stderr, flush=True)
    for handler in logging.getLogger().handlers + log.handlers:
        try:
            handler.flush()
        except Exception:  # a broken handler must not keep the process alive
            pass
    sys.stdout.flush()
    os._exit(EXIT_STALL)


def uninstall() -> None:
    """Remove the module hook and stop the watchdog (tests; a run keeps them to its end)."""
    global _watchdog
    while _hooks:
        _hooks.pop().remove()
    if _watchdog is not None:
        _watchdog.stop()
        _watchdog = None
    _names.clear()


def _has_fd(stream) -> bool:
    """Whether ``stream`` is backed by a file descriptor, which faulthandler needs (pytest's
    captured stderr, a notebook's or a StringIO is not: faulthandler would raise there)."""
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both of the last two
        return False
    return True


class Watchdog:
    """Report where the step is when nothing progresses for ``seconds`` (see the module docstring).

    A daemon thread polls the time of the last phase or module start (progress costs the step
    nothing but that timestamp) and, each period without progress, prints ``where()`` and every
    thread's stack. While it runs it also keeps re-arming ``faulthandler.dump_traceback_later`` at
    twice the period: that C-level timer fires only if this thread stops running, i.e. when the
    stalled main thread holds the GIL."""

    def __init__(self, seconds: float, stream=None, on_stall=None) -> None:
        self.seconds, self.stream, self.on_stall = float(seconds), stream or sys.stderr, on_stall
        self.poll = min(1.0, self.seconds / 4)
        self.fired = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zobench-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seen = last = _state["since"]
        while not self._stop.wait(self.poll):
            if self.stream is sys.stderr and _has_fd(sys.stderr):  # exits too where a stall would: inside a step
                guarding = self.on_stall is not None and _state["step"] is not None
                faulthandler.dump_traceback_later(2 * self.seconds, file=sys.stderr, exit=guarding)
            since, now = _state["since"], time.monotonic()
            if since != seen:  # progress since the last look
                seen = last = since
            if now - last < self.seconds:
                continue
            last = now
            self.fired += 1
            print(f"zobench: watchdog: no progress for {now - since:.0f} s; {where()}", file=self.stream, flush=True)
            if _has_fd(self.stream):  # faulthandler writes to a file descriptor, not a Python stream
                faulthandler.dump_traceback(file=self.stream, all_threads=True)
            if self.on_stall is not None and _state["step"] is not None:
                self.on_stall(f"{_state['step']} made no progress for {now - since:.0f} s ({where()})")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.stream is sys.stderr:
            faulthandler.cancel_dump_traceback_later()
