"""A zobench run in its run dir: ``run(cfg, run_dir)`` locks the dir, resumes or starts, runs the
recipe (``train/recipe.py``: setup, train, finish) and writes ``summary.json``. Every rank of a
multi-rank run calls it: the leader (rank 0) does all of that, the others wait for its word
(``dist/rundir.py::Handshake``) and run the same recipe, given the same ``dist/strategy.py``
strategy, writing nothing.

Files in the run dir (docs/design.md "Run directory"): ``config.yaml`` (resolved, secrets
redacted), ``metrics.jsonl`` (one event per line), ``summary.json`` (written once, at the end,
atomically, with ``status`` completed / failed / diverged / interrupted), ``checkpoint/`` (every
``train.checkpoint_every`` steps and on SIGTERM / SIGUSR1 / SIGUSR2 / SIGINT, ``signals.py``),
``.lock`` (held by the one process running in the dir, ``lock.py``). A run started in a dir that
holds a checkpoint resumes from it and ends bit-identical to an uninterrupted run; a completed run
dir is left as it is (bar leftovers of its clean-up) when started with its own config, and refused
with one line naming the keys when started with another (``_check_rerun``). The finishing sequence is: test evaluation →
``final/`` → summary.json → remove ``checkpoint/`` → remove ``best/``; each step is restartable,
so a kill between any two leaves a dir that the next start resumes or completes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from . import __version__
from .checkpoint import Checkpoint, fsync_dir, load_checkpoint, write_json_atomic, write_text_atomic
from .config import RESUMABLE_KEYS, validate
from .configdiff import differences
from .dist import rundir
from .dist.choice import strategy_for
from .dist.strategy import Strategy
from .engine import mix_seed
from .errors import CheckpointError
from .lock import RunDirLock
from .models import loading
from .provenance import git_sha
from .redaction import redact, redact_hydra_files
from .signals import STOP_SIGNALS, StopRequest
from .tasks.batches import BatchStream
from .telemetry import JsonlLogger, NullLogger, Sink, WandbLogger
from .train.recipe import Recipe
from .train.setup import resolve_device
from .train.setup import schedule as _schedule

# names other modules and tests import from here (bench: resolve_device; tests/optim: _schedule)
__all__ = ["STOP_SIGNALS", "BatchStream", "StopRequest", "_schedule", "redact", "resolve_device", "run"]

log = logging.getLogger(__name__)

#: keys a resume may change but that a completed run's result depends on (its steps, its final/)
RERUN_KEYS = ("train.steps", "train.save_final")
#: keys in which a rerun of a completed run dir may differ from it (where it logs, where it runs)
COMPLETED_EXEMPT = tuple(key for key in RESUMABLE_KEYS if key not in RERUN_KEYS)


# -- the run ------------------------------------------------------------------------------------
def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Execute (or resume) one run into ``run_dir``; returns the summary (also in summary.json).
    One process at a time per run dir (``RunDirLock``): a second one is refused with one line.
    Every rank of a multi-rank run calls it: rank 0 (the leader) locks and writes the run dir,
    the others wait for its word (``rundir.Handshake``) and run the same recipe writing nothing."""
    started = time.perf_counter()
    validate(cfg)  # once per run: every bad key, one line each
    loading.check_sources(cfg)  # a model or dataset that cannot be fetched: before any log or W&B run
    run_dir = Path(run_dir)
    ctx = rundir.joined(cfg)  # torchrun / Slurm tasks: the process group (dist/)
    config = redact(OmegaConf.to_container(cfg, resolve=True))  # what config.yaml holds, checks compare
    rundir.check_same_config(ctx, config)
    strategy = strategy_for(ctx, str(cfg.optimizer.name), cfg.get("dist"))
    lock = RunDirLock(run_dir) if strategy.leader else contextlib.nullcontext()
    with rundir.Handshake(ctx) as word, lock:
        done, checkpoint = _open(config, cfg, run_dir) if strategy.leader else (None, None)
        done = word.ready(done)  # the other ranks may read the run dir now
        if done is not None:  # a completed run: its summary
            return done
        if not strategy.leader:
            checkpoint = load_checkpoint(run_dir / "checkpoint")
        return _execute(cfg, config, run_dir, strategy, checkpoint, started)


def _open(config: dict, cfg: DictConfig, run_dir: Path) -> tuple[dict | None, Checkpoint | None]:
    """The leader, holding the lock: the completed run's summary if the dir holds one (None
    otherwise), and the checkpoint to resume (checked against the config); config.yaml written."""
    redact_hydra_files(run_dir)
    previous = _previous_summary(run_dir / "summary.json")
    if previous.get("status") == "completed":
        _check_rerun(config, run_dir)
        log.info("%s holds a completed run of this config; nothing to do", run_dir)
        _clean_up_finished(run_dir)  # a kill during the clean-up of the finished run left some of it
        return previous, None
    checkpoint = _without_lost_best_state(load_checkpoint(run_dir / "checkpoint"), run_dir)
    if checkpoint is not None:
        _check_resumable(config, run_dir / "config.yaml")
        _check_steps(cfg, checkpoint.step, run_dir)
    write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(config)))
    return None, checkpoint


def _execute(
    cfg: DictConfig, config: dict, run_dir: Path, strategy: Strategy, checkpoint: Checkpoint | None, started: float
) -> dict:
    """The recipe, and (the leader) its events and summary.json: status failed with the error if
    it raises, else its result; the dir cleaned up once a completed run's summary is safe."""
    leader = strategy.leader
    # events after the checkpoint are replayed, so the log is cut back to where the checkpoint was
    offset = checkpoint.metrics_offset if checkpoint else 0
    metrics: Sink = JsonlLogger(run_dir / "metrics.jsonl", truncate_at=offset) if leader else NullLogger()
    loggers: list[Sink] = [metrics]
    elapsed_before = checkpoint.elapsed if checkpoint else 0.0
    summary = _summary_header(cfg)

    def wall() -> float:  # the run's wall time, the time before a resume included
        return elapsed_before + time.perf_counter() - started

    try:
        if leader and cfg.logger.name == "wandb":
            loggers.append(WandbLogger(cfg.logger, run_dir, config, name=run_dir.name))
        # a repeated stop signal is noted until the summary is written (not a KeyboardInterrupt in it)
        # no_grad: the recipe turns autograd off for the run; the caller's mode comes back after it
        with StopRequest() as stop, torch.no_grad():
            recipe = Recipe(cfg, run_dir, loggers, stop, wall, strategy=strategy, metrics=metrics)
            recipe.setup(checkpoint)
            summary.update(recipe.finish(recipe.train()))
            _write_summary(run_dir, summary, wall(), loggers, leader)
    except BaseException as err:  # record why, then let the error surface
        summary.update(error=f"{type(err).__name__}: {err}", wall_s=wall())
        _record_failure(run_dir / "summary.json", summary, metrics, loggers, leader)
        raise
    return summary


def _write_summary(run_dir: Path, summary: dict, wall_s: float, loggers: list[Sink], leader: bool) -> None:
    """The loggers' summaries and finish (metrics.jsonl fsynced first), then summary.json (the
    leader's), then the clean-up of a completed run."""
    summary["wall_s"] = wall_s
    for logger in loggers:
        logger.summary(summary)
        logger.finish()  # metrics.jsonl fsynced before the summary that vouches for it
    if leader:
        write_json_atomic(run_dir / "summary.json", summary)
        if summary["status"] == "completed":  # checkpoint and best state are not needed once the summary is safe
            _clean_up_finished(run_dir)


def _record_failure(path: Path, summary: dict, metrics: Sink, loggers: list[Sink], leader: bool) -> None:
    """A run that raised: summary.json (the leader's) with status failed and the error."""
    try:  # on a full disk these fail too: the error that stopped the run is the one to report
        metrics.sync()
        if leader:
            write_json_atomic(path, summary)
    except OSError as also:
        log.warning("could not record the failure in %s (%s)", path, also)
    for logger in loggers:
        with contextlib.suppress(OSError):
            logger.finish()


def _summary_header(cfg: DictConfig) -> dict:
    """What summary.json says before the run has a result (status failed until it has one)."""
    return {
        "task": cfg.task.name,
        "model": cfg.model.name,
        "optimizer": cfg.optimizer.name,
        "tuning": cfg.tuning.name,
        "seed": int(cfg.seed),
        "steps": 0,
        "git_sha": git_sha(),
        "zobench_version": __version__,
        "status": "failed",
        "seeds": {
            "optimizer": int(cfg.seed),
            "data": int(cfg.data.seed),
            "eval_data": int(cfg.data.eval_seed),
            "batch_order": mix_seed(cfg.seed, 1),
            "model_init": cfg.model.get("init_seed"),
        },
    }


def _previous_summary(path: Path) -> dict:
    """summary.json of an earlier start ({} if none); it is written atomically, so an unreadable
    one was damaged from outside and is refused rather than overwritten."""
    if not path.is_file():
        return {}
    try:
        previous = json.loads(path.read_text())
    except (ValueError, OSError) as err:
        raise CheckpointError(
            f"{path} is unreadable ({type(err).__name__}: {err}); move it away to run again in this dir"
        ) from None
    if not isinstance(previous, dict):
        raise CheckpointError(f"{path} is not a JSON object; move it away to run again in this dir")
    return previous


def _clean_up_finished(run_dir: Path) -> None:
    """The last steps of the finishing sequence, in order, each one safe to repeat: the
    checkpoint first (its weights are the large part), then the best-dev state it refers to."""
    for name in ("checkpoint", "best"):
        if (run_dir / name).exists():
            shutil.rmtree(run_dir / name)
            fsync_dir(run_dir)


def _without_lost_best_state(checkpoint: Checkpoint | None, run_dir: Path) -> Checkpoint | None:
    """A checkpoint whose best-dev file is gone cannot give the run its test score. zobench
    removes best/ only after the summary, but an older version removed it before: a dir killed
    in that window is started afresh (runs are deterministic: the same result), not failed."""
    best_file = checkpoint.state.get("best_file") if checkpoint is not None else None
    if best_file is None or (run_dir / "best" / best_file).is_file():
        return checkpoint
    log.warning("%s: the checkpoint's best-dev state %s is gone; starting the run afresh", run_dir, best_file)
    shutil.rmtree(run_dir / "checkpoint")
    return None


def _check_steps(cfg: DictConfig, checkpoint_step: int, run_dir: Path) -> None:
    """A checkpoint past ``train.steps`` cannot be resumed into a run of fewer steps (it would
    report more steps than its config says, with weights trained past them)."""
    if cfg.train.get("forward_budget"):
        return  # steps follow from the budget: checked once the method's passes per step are known
    if checkpoint_step > int(cfg.train.steps):
        raise CheckpointError(
            f"train.steps={cfg.train.steps}: {run_dir / 'checkpoint'} is at step {checkpoint_step}; "
            f"resume it with train.steps >= {checkpoint_step}, or use another hydra.run.dir"
        )


def _check_resumable(config: dict, saved_path: Path) -> None:
    """A checkpoint is resumed only under the config it was written with (bar RESUMABLE_KEYS)."""
    detail = differences(config, saved_path, RESUMABLE_KEYS, "checkpoint")
    if detail:
        raise CheckpointError(
            f"{saved_path.parent} holds a checkpoint of a different config ({detail}); "
            "use another hydra.run.dir or restore those values"
        )


def _check_rerun(config: dict, run_dir: Path) -> None:
    """A completed run dir answers only the command that made it: another config (bar the keys a
    resume may change, except ``RERUN_KEYS``: the result depends on them) is refused, naming the
    keys, instead of returning the old result as if it were the one asked for."""
    detail = differences(config, run_dir / "config.yaml", COMPLETED_EXEMPT, "summary.json")
    if detail:
        raise CheckpointError(
            f"{run_dir} holds a completed run of a different config ({detail}); run it in a new dir "
            "(hydra.run.dir=<new dir>), or restore those values to read the completed result"
        )
