"""The trajectory of a running ZO run, and trajectory checkpoints (``train.checkpoint``).

``RunTrajectory`` is what the recipe holds: it writes ``trajectory.bin`` (a new log at step 0,
or the log of a resumed run cut back to the checkpoint's step), appends each step's closure
values, and syncs with metrics.jsonl.

With ``train.checkpoint=trajectory`` (the default; it applies to ZO learners, whose replay is
exact: first-order baselines and linear probing always checkpoint weights) a checkpoint holds
``loop.json`` and no tensors: ``trainable.safetensors`` and ``optimizer.pt`` are empty, a few
bytes. Resuming replays the log from the base weights to the checkpoint's step with the run's
own optimizer, which then holds exactly the state (moments, Hessian diagonal, step counter) of
the uninterrupted run. With ``offload=disk`` the blocks come from the store the run trained
(pinned by each checkpoint), and the replay applies to each block only the updates it lacks.
``train.keep_best`` keeps the best-dev step number instead of a weight
copy; the test evaluation of that state resets the weights to the base and replays up to it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from ..build import Components, build_learner
from ..checkpoint import copy_into
from ..config.schema import CHECKPOINT_MODES
from ..errors import CheckpointError
from ..offload.setup import reset_to_base, resume_store, stored_weights
from . import log as trajlog
from .replay import check_base, config_sha256, replay_into

logger = logging.getLogger(__name__)

MODES = CHECKPOINT_MODES  # train.checkpoint: the config's choices


def checkpoint_mode(cfg: DictConfig, zo: bool) -> str:
    """``train.checkpoint`` for this learner: trajectory only for ZO learners."""
    mode = str(cfg.train.get("checkpoint", "trajectory"))
    return mode if zo else "weights"


def has_log(run_dir: Path) -> bool:
    return (Path(run_dir) / trajlog.FILENAME).is_file()


class RunTrajectory:
    """The log of this run (``<run dir>/trajectory.bin``): opened at setup, before any weight of
    a checkpoint is loaded, so the base weights can be hashed and checked."""

    def __init__(
        self, cfg: DictConfig, run_dir: Path, learner, model, named, resume_step: int | None, base=None
    ) -> None:
        """``base``: the digest of the base weights, where the strategy computed it (a sharded
        run's, ``trajlog.weights_sha256`` streamed over the gathered parameters one at a time:
        the digest of one process's ``named``); None: the header hashes ``named``."""
        self.cfg, self.path, self.learner, self.named = cfg, Path(run_dir) / trajlog.FILENAME, learner, named
        self.model = model
        # what the header hashes: an offloaded run's stored blocks (read block by block, once per
        # use: never all in memory; its ``named`` holds placeholders), else ``named``
        weights = lambda: stored_weights(model, named)  # noqa: E731 - read anew at each use
        digest = lambda: base if base is not None else trajlog.weights_sha256(weights())  # noqa: E731
        if resume_step is None:
            header = trajlog.Header(
                config_sha256=config_sha256(cfg),
                base_sha256=digest(),
                optimizer=str(cfg.optimizer.name),
                engine=learner.engine_name,
                replicas=bool(learner.replicas),
            )
            self.writer = trajlog.create(self.path, header)
            self.log = trajlog.read(self.path)
            return
        if not self.path.is_file():
            raise CheckpointError(
                f"{self.path} is missing: the checkpoint's run wrote a trajectory log; delete "
                f"{self.path.parent / 'checkpoint'} to start the run afresh"
            )
        self.log, self.writer = trajlog.open_for_append(self.path, resume_step)
        # offload=disk: the store is the run's state, not the base: brought to the checkpoint's
        # step from its pin, which carries the log's base hash (offload/store.py)
        if not resume_store(model, Path(run_dir), self.log.header.base_sha256):
            check_base(self.log.header, digest(), self.path)
        if self.log.header.config_sha256 != config_sha256(cfg):
            raise CheckpointError(f"{self.path} belongs to another config; use another hydra.run.dir")

    def append(self, step: int, calls: list) -> None:
        self.writer.append(step, calls)

    def sync(self) -> None:
        self.writer.sync()

    def close(self) -> None:
        self.writer.close()

    def seal(self) -> dict:
        """The log's record count, size and sha256, for summary.json (``log.seal``)."""
        self.writer.sync()
        return trajlog.seal(self.path)

    def replay_to(self, step: int, optimizer=None) -> None:
        """The weights (and, for ``optimizer``, the state) at ``step``: the resumed run's own
        optimizer from step 0, on the base weights this process loaded."""
        self.writer.sync()
        current = trajlog.read(self.path)
        replay_into(optimizer or self.learner.optimizer, current, step, int(self.cfg.train.batch_size))

    def rebuild(self, step: int, device) -> None:
        """The weights at ``step`` in the run's parameters, from the base weights (loaded once
        more: the model briefly exists twice) through a fresh optimizer on the run's engine. An
        offloaded model is reset to its base block by block in its own store instead
        (``offload.reset_to_base``), and replayed with deferred updates: never whole in memory."""
        if getattr(self.model, "zobench_offloader", None) is not None:
            reset_to_base(self.cfg, self.model, device)
            check_base(self.log.header, stored_weights(self.model, self.named), self.path)
            learner = build_learner(self.cfg, self.model, self.named, None, engine=self.learner.engine)
            self.replay_to(step, learner.optimizer)
            self.model.zobench_offloader.flush()  # every block at ``step`` in the store
            logger.info("rebuilt the weights of step %d from the trajectory, block by block", step)
            return
        base = Components.build(self.cfg, device, data=False, learner=False)
        check_base(self.log.header, base.named, self.path)
        copy_into(self.named, dict(base.named), self.path)
        del base
        learner = build_learner(self.cfg, self.model, self.named, None, engine=self.learner.engine)
        self.replay_to(step, learner.optimizer)
        logger.info("rebuilt the weights of step %d from the trajectory", step)
