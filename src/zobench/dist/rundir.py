"""One run dir for all ranks: rank 0 alone writes it (config.yaml, metrics.jsonl, summary.json,
checkpoints, W&B, the lock); the other ranks read what it wrote (the checkpoint to resume,
best-dev weights) and write nothing.

* ``SharedRunDir`` (a Hydra callback, ``hydra.callbacks`` in conf/config.yaml) joins the process
  group before Hydra makes the run dir, so rank 0 decides the dir (``hydra.run.dir`` holds
  ``${now:...}``: ranks started a second apart would each make their own) and broadcasts it; on
  the other ranks Hydra writes no ``.hydra/`` and no log file there (console, warnings only).
* ``joined(cfg)``: the context ``run()`` uses (the callback's, or joined there).
* ``check_same_config``: every rank runs rank 0's config (one all-gather at start).
* ``Handshake``: rank 0's word to the others in ``run()`` (``run.py``, one function for every
  rank): the run dir is ready, or holds a completed run, or rank 0 failed before that; every
  rank then runs the same recipe, and only rank 0 writes (``Strategy.leader``).
"""

from __future__ import annotations

import logging
import sys

from hydra.experimental.callback import Callback
from omegaconf import open_dict, read_write

from ..config import validate_dist
from ..configdiff import changed_keys
from ..errors import ConfigError
from .context import DistContext, current, launch_env, setup


def start(cfg) -> DistContext:
    """The run's context (joining the process group if the launcher started several ranks)."""
    validate_dist(cfg)  # before joining: this runs from a Hydra callback, ahead of config.validate
    return setup(cfg.dist) if cfg.get("dist") is not None else current()


def joined(cfg) -> DistContext:
    """The context of ``run()``: the process group ``SharedRunDir`` joined before Hydra made the
    run dir, else ``start(cfg)`` (a run started through the API; a job of a Slurm sweep, whose
    callback only sets up logging)."""
    ctx = current()
    return ctx if ctx.active else start(cfg)


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


class Handshake:
    """Rank 0's word to the other ranks, once per run: the run dir is ready (the lock is held, the
    checkpoint decided, config.yaml written), or it holds a completed run (its summary), or rank
    0 failed before that (its error, which every rank then raises: one line, the same on all).
    ``with Handshake(ctx) as word:`` around a run sends an error that escapes it before ``ready``."""

    def __init__(self, ctx: DistContext) -> None:
        self.ctx = ctx
        self.sent = not (ctx.active and ctx.leader)  # one process, or a rank that only listens

    def __enter__(self) -> Handshake:
        return self

    def __exit__(self, kind, err, tb) -> None:
        if err is not None and not self.sent:
            self._send({"error": str(err), "config": isinstance(err, ConfigError), "done": None})

    def ready(self, done: dict | None = None) -> dict | None:
        """Rank 0: send the word (``done``: the summary of the completed run the dir holds), and
        return ``done``. Another rank: wait for it; rank 0's error is raised here."""
        if self.ctx.leader:
            if not self.sent:
                self._send({"error": None, "config": False, "done": done})
            return done
        if not self.ctx.active:
            return done
        word = self.ctx.broadcast_object(None)
        if word["error"] is not None:
            raise (ConfigError if word["config"] else RuntimeError)(f"rank 0: {word['error']}")
        return word["done"]

    def _send(self, word: dict) -> None:
        self.sent = True
        self.ctx.broadcast_object(word)
