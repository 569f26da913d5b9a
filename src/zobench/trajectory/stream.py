"""Streamed replay: a run's weights at a step rebuilt block by block, never whole in memory.

``replay.py`` loads the base model whole and replays the log into it: for a model that never
fits (the reason a run was offloaded) that cannot work. Here the base is built as an
``offload=disk`` run builds it, into a disk store in a work folder (``*-random``: offload=none's
draws, block by block; a checkpoint: read lazily, tensor by tensor), and the log is replayed
through the run's own optimizer on the offload engine (``offload/engine.py``): no forward pass,
so every block update is deferred, and ``flush`` then brings each block in once, applies every
logged update of its parameters in step order (z regenerated from the step's seed by global
element index, the engine's own ``update``, the same arithmetic as the whole-model replay) and
writes it back. Memory: the resident layers + a block or two (``docs/offload.md``); storage
traffic: one read and one write of every block, after the base is written once.

``save_sharded`` (``offload/export.py``) then writes the result as a sharded Hugging Face
checkpoint, block by block (``python -m zobench.replay`` / ``export``: the default for a run that
was offloaded, ``--stream on|off`` to choose). tests/trajectory/test_stream.py: equal bit for bit
to the whole-model replay and export.
"""

from __future__ import annotations

import copy
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from ..build import build_learner
from ..build.model import build_model
from ..config.rules import offload_problem
from ..errors import ConfigError
from ..models import trainable
from ..offload.setup import offloaded, stored_weights
from .log import FILENAME
from .replay import Replayed, check_base, check_engine, load_run_config, open_run, replay_into, run_device

#: ``--stream``: auto (stream a run that was offloaded), on, off
STREAM_CHOICES = ("auto", "on", "off")


def wants_stream(run_dir: Path, stream: str) -> bool:
    """Whether ``--stream`` (``STREAM_CHOICES``) streams the replay of ``run_dir``."""
    if stream not in STREAM_CHOICES:
        raise ConfigError(f"--stream {stream}: allowed {', '.join(STREAM_CHOICES)}")
    return stream == "on" or (stream == "auto" and offloaded(load_run_config(run_dir)))


def streamed_config(cfg: DictConfig, work: Path) -> DictConfig:
    """``cfg`` with ``offload=disk`` into ``work`` (its store folder); refused in one line where
    the run's method, engine or tuning does not stream (``config.rules.offload_problem``)."""
    out = copy.deepcopy(cfg)
    with open_dict(out):
        OmegaConf.update(out, "offload", {"mode": "disk", "dir": str(Path(work) / "store"), "prefetch": True})
    problem = offload_problem(out)
    if problem:
        raise ConfigError(f"--stream: {problem.replace('offload=disk', 'a streamed replay')}")
    return out


def replay_streamed(run_dir: Path, step: int | str | None, work: Path, device: str | None = None) -> Replayed:
    """The weights of the run in ``run_dir`` after ``step`` (``replay.replay``'s choices), rebuilt
    block by block in a disk store under ``work`` (module docstring). The model returned is
    offloaded (``model.zobench_offloader``, flushed: its store holds the step's blocks); the
    caller closes it and removes ``work``."""
    run_dir = Path(run_dir)
    cfg, log, target = open_run(run_dir, step)
    streamed = streamed_config(cfg, work)
    model, tokenizer = build_model(streamed, run_device(cfg, device, run_dir), run_dir=Path(work))
    named = trainable(model)
    check_base(log.header, stored_weights(model, named), run_dir / FILENAME)
    learner = build_learner(streamed, model, named, None)
    check_engine(run_dir, log.header, learner.engine_name)
    replay_into(learner.optimizer, log, target, int(cfg.train.batch_size))
    model.zobench_offloader.flush()
    return Replayed(model, tokenizer, named, cfg, target)
