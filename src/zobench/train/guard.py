"""The run's guards: the watchdog that ends a stalled step, what its stall line says about
resuming, the trajectory log a run keeps (and that of a run resumed on another engine), and the
policy for a non-finite step (``train.on_divergence``).

A step that makes no progress for ``engine.watchdog_s`` ends the run (``engine/trace.py``); its
line says whether the checkpoint resumes on another engine: a ``train.checkpoint=weights``
checkpoint does (``engine.backend`` is a resumable key), a trajectory log does not, since it
replays with the engine that wrote it (the Gaussian z differs between backends).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..engine import trace
from ..trajectory import log as trajlog
from ..trajectory.checkpoints import RunTrajectory, has_log

log = logging.getLogger("zobench.train.recipe")


def arm_watchdog(cfg, learner, model) -> None:
    """``engine.watchdog_s`` (ZOBENCH_WATCHDOG overrides it): a step that makes no progress for
    that long ends the run (``trace.exit_on_stall``). Off for kernels run by Triton's interpreter
    (seconds per launch) unless ZOBENCH_WATCHDOG asks for it."""
    seconds = cfg.engine.get("watchdog_s", 0)
    if "interpreter" in str((learner.engine_info or {}).get("triton") or ""):
        seconds = 0
    trace.resume_hint[0] = "no checkpoint was written yet (train.checkpoint_every): the run starts afresh"
    trace.install(model, seconds, on_stall=trace.exit_on_stall)


def note_checkpoint(mode: str, step: int) -> None:
    """What the watchdog's stall line says about resuming (``trace.resume_hint``), once the
    checkpoint of ``step`` (``train.checkpoint`` ``mode``) is complete."""
    trace.resume_hint[0] = (
        f"the checkpoint of step {step} is intact: run the same command with engine=torch to resume from it"
        if mode == "weights"
        else f"the checkpoint of step {step} is intact: run the same command to resume from it (a "
        "train.checkpoint=trajectory run replays with the engine that wrote it; engine=torch resumes "
        "train.checkpoint=weights runs)"
    )


def log_of_another_engine(run_dir: Path, learner, step: int) -> bool:
    """Whether ``run_dir``'s trajectory log was written by another engine than ``learner``'s
    (``engine.backend`` changed on a resume of a weights checkpoint). A log replays with one
    engine, so it is then cut after ``step`` (the checkpoint's) and not extended."""
    if not has_log(run_dir):
        return False
    path = Path(run_dir) / trajlog.FILENAME
    written = trajlog.read(path).header.engine
    if written == learner.engine_name:
        return False
    _, writer = trajlog.open_for_append(path, step)
    writer.close()
    log.warning(
        "%s was written by engine %s; this run resumes on %s, so the log stops at step %d (it replays "
        "with one engine) and the run continues without one",
        path, written, learner.engine_name, step,
    )  # fmt: skip
    return True


def open_log(
    cfg, run_dir: Path, learner, model, named, step: int | None, mode: str, base: str | None = None
) -> RunTrajectory | None:
    """The trajectory log of a ZO run (one that keeps a log) starting, or resuming at ``step``
    from a ``mode`` checkpoint: opened before the checkpoint's weights are loaded (its header
    hashes the base weights: ``base``, their digest where the strategy computed it (a sharded
    run's, streamed), else that of ``named``). A
    weights checkpoint resumes without one when the run dir has no log (an older zobench wrote
    none) or its log is another engine's (then cut at ``step``)."""
    if step is not None and mode == "weights":
        if log_of_another_engine(run_dir, learner, step):
            return None
        if not has_log(run_dir):
            log.warning("%s has no trajectory.bin: this run resumes without a trajectory log", run_dir)
            return None
    return RunTrajectory(cfg, run_dir, learner, model, named, step, base)


def skip_divergent(policy: str, state, info: dict) -> bool:
    """A non-finite loss or projected gradient at ``state.step``: skip the step (the method refused
    the update) with ``train.on_divergence=skip`` (``policy``), counting it in ``state``, else stop."""
    if policy == "skip":
        state.skipped_steps += 1
        log.warning("step %d: non-finite loss or projected gradient %s; step skipped", state.step, info)
        return True
    log.error(
        "step %d: non-finite loss or projected gradient %s; stopping (train.on_divergence=stop)", state.step, info
    )
    return False
