"""One run dir for all ranks: rank 0 alone writes it (config.yaml, metrics.jsonl, summary.json,
checkpoints, W&B, the lock); the other ranks read what it wrote (the checkpoint to resume,
best-dev weights) and write nothing.

* ``SharedRunDir`` (a Hydra callback, ``hydra.callbacks`` in conf/config.yaml) joins the process
  group before Hydra makes the run dir, so rank 0 decides the dir (``hydra.run.dir`` holds
  ``${now:...}``: ranks started a second apart would each make their own) and broadcasts it; on
  the other ranks Hydra writes no ``.hydra/`` and no log file there (console, warnings only).
* ``leading(ctx)``: rank 0's side of ``run.py``: ``go()`` tells the others that the lock is held,
  the checkpoint decided and config.yaml written (or that the run dir holds a completed run);
  an error before that is sent to them, so every rank stops with the same one line.
* ``follow(...)``: the other ranks' ``run``: wait for rank 0's word, then the same recipe with no
  logger, returning the summary rank 0 writes.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import open_dict, read_write

from ..config import validate_dist
from ..errors import ConfigError
from .context import DistContext, current, launch_env, setup

_WORD: dict = {"sent": True}


class NullLogger:
    """The loggers of a rank other than 0: nothing is written."""

    offset = 0

    def log(self, event: dict) -> None:
        pass

    def sync(self) -> None:
        pass

    def summary(self, summary: dict) -> None:
        pass

    def finish(self) -> None:
        pass


def start(cfg) -> DistContext:
    """The run's context (joining the process group if the launcher started several ranks)."""
    validate_dist(cfg)  # before joining: this runs from a Hydra callback, ahead of config.validate
    return setup(cfg.dist) if cfg.get("dist") is not None else current()


#: keys a rank may set for its own node (paths, device, logging: rank 0 alone logs); every other
#: key changes the numbers, and ranks that differ in one would fail the replica check later
PER_RANK_KEYS = ("cache_dir", "data.dir", "device", "debug", "logger")


def check_same_config(ctx: DistContext, config: dict) -> None:
    """Every rank runs rank 0's config: one all-gather of each rank's resolved (redacted) config
    and its sha256 at start, before any work; a difference outside ``PER_RANK_KEYS`` stops every
    rank with the same line naming the keys (rather than a replica mismatch at the first
    checkpoint, hundreds of steps later)."""
    if not ctx.active:
        return
    import hashlib
    import json

    from ..run import changed_keys

    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    gathered = ctx.gather_objects((digest, config))
    differing = [
        (rank, keys)
        for rank, (other_digest, other) in enumerate(gathered)
        if other_digest != gathered[0][0] and (keys := changed_keys(gathered[0][1], other, PER_RANK_KEYS))
    ]
    if differing:
        rank, keys = differing[0]
        more = f" (and {len(differing) - 1} more ranks)" if len(differing) > 1 else ""
        raise ConfigError(
            f"rank {rank}'s config differs from rank 0's in {', '.join(keys[:8])}{more}; "
            "start every rank with the same overrides"
        )


class SharedRunDir(Callback):
    """Rank 0's ``hydra.run.dir`` on every rank; Hydra's own files from rank 0 only."""

    def on_run_start(self, config, **kwargs) -> None:
        try:
            ctx = start(config)
        except ConfigError as err:
            print(f"zobench: error: {err}", file=sys.stderr)
            sys.exit(2)
        if not ctx.active:
            return
        chosen = ctx.broadcast_object(str(config.hydra.run.dir) if ctx.leader else None)
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.run.dir = chosen
            if not ctx.leader:
                config.hydra.output_subdir = None
                logging_cfg = config.hydra.job_logging
                if logging_cfg is not None and "root" in logging_cfg:
                    logging_cfg.root.handlers = ["console"]
                    logging_cfg.root.level = "WARNING"

    def on_multirun_start(self, config, **kwargs) -> None:
        """A sweep under torchrun: rank 0's ``hydra.sweep.dir`` (also time-stamped) on every rank.
        (A Slurm sweep's submitter is one process: its jobs get the dir it resolved.)"""
        try:
            ctx = start(config)
        except ConfigError as err:
            print(f"zobench: error: {err}", file=sys.stderr)
            sys.exit(2)
        if ctx.active:
            chosen = ctx.broadcast_object(str(config.hydra.sweep.dir) if ctx.leader else None)
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.sweep.dir = chosen

    def on_job_start(self, config, **kwargs) -> None:
        """A sweep's job (Slurm tasks under hydra-submitit-launcher): Hydra has set up its log file
        in every task; ranks other than 0 drop it and keep the console for warnings."""
        try:
            found = launch_env()
        except ConfigError as err:  # a Slurm job's first look at its environment
            print(f"zobench: error: {err}", file=sys.stderr)
            sys.exit(2)
        if found is None or found["rank"] == 0:
            return
        root = logging.getLogger()
        for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(logging.WARNING)


@contextlib.contextmanager
def leading(ctx: DistContext):
    """Rank 0 around its run: an error before ``go()`` is sent to the other ranks."""
    _WORD["sent"] = not ctx.active
    try:
        yield
    except BaseException as err:
        if not _WORD["sent"]:
            _send({"error": str(err), "config": isinstance(err, ConfigError), "done": None})
        raise


def go(done: dict | None = None) -> None:
    """Rank 0: the run dir is ready (``done``: the summary of the completed run it holds)."""
    if not _WORD["sent"]:
        _send({"error": None, "config": False, "done": done})


def _send(word: dict) -> None:
    _WORD["sent"] = True
    current().broadcast_object(word)


def follow(cfg, run_dir: Path, started: float) -> dict:
    """A rank other than 0: the same recipe once rank 0 has the run dir ready; returns the
    summary's numbers (rank 0 writes them)."""
    from ..checkpoint import load_checkpoint
    from ..signals import StopRequest
    from ..train.recipe import Recipe

    word = current().broadcast_object(None)
    if word["error"] is not None:
        raise (ConfigError if word["config"] else RuntimeError)(f"rank 0: {word['error']}")
    if word["done"] is not None:
        return word["done"]
    checkpoint = load_checkpoint(Path(run_dir) / "checkpoint")
    before = checkpoint[0]["elapsed"] if checkpoint else 0.0
    with StopRequest() as stop:
        recipe = Recipe(cfg, run_dir, [NullLogger()], stop, lambda: before + time.perf_counter() - started)
        recipe.setup(checkpoint)
        return recipe.finish(recipe.train())
