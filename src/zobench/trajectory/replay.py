"""Replay: the trainable weights of a ZO run at any step, from its base model and its trajectory.

The run's model is rebuilt by the factory that built it for the run (``zobench.build``: same
config, base weights, tuning and its seeded initialisation), its optimizer likewise (same engine,
seed, hyperparameters), and ``optimizer.step`` is called once per logged step on a
closure that returns the logged values (``tape.ReplayTape``): no forward pass, and the update
arithmetic is the training's, so the weights are bit-identical to the trained ones on the same
device and engine (tests/trajectory/test_replay.py checks every registered method, fp32 and
bf16, full / LoRA / prefix). The cost is the update sweeps of each step (with
``engine.mode=inplace`` also the perturb / restore sweeps the method makes); MeZO PR #26
(``reconstruct_updates``, princeton-nlp/MeZO, never merged) proposed the same for MeZO alone.

The base weights are checked first: the sha256 of the trainable tensors before step 1 is in the
log's header, and a different base (another checkpoint of the model, another LoRA init) is
refused in one line, as is a config whose update-relevant keys differ from the log's.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import DictConfig, OmegaConf

from ..build import Components, build_learner
from ..config import check_device
from ..errors import CheckpointError, ConfigError
from .log import FILENAME, Header, Trajectory, check_sealed, read, weights_sha256
from .tape import ReplayTape, replay_steps

logger = logging.getLogger(__name__)

#: the config keys a step's update depends on (the log's ``config_sha256`` covers these)
UPDATE_KEYS = ("model", "tuning", "optimizer", "engine", "seed", "objective", "train.batch_size")
#: keys under UPDATE_KEYS that guard a run without changing its updates (left out of the hash)
GUARD_KEYS = ("self_check", "watchdog_s")


def config_sha256(cfg: DictConfig) -> str:
    """sha256 of the update-relevant keys of a run config (``UPDATE_KEYS``)."""
    picked = {key: _resolved(cfg, key) for key in UPDATE_KEYS}
    if isinstance(picked["engine"], dict):
        picked["engine"] = {k: v for k, v in picked["engine"].items() if k not in GUARD_KEYS}
    return hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()


def _resolved(cfg: DictConfig, key: str):
    """The value at ``key``, interpolations resolved against the whole config (an experiment's
    ``optimizer.lr: ${lr_table.${optimizer.name}}`` reads keys outside the node)."""
    value = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def check_base(header: Header, named, where: Path) -> None:
    """Refuse base weights other than those the run started from (``named``: (name, tensor)
    pairs, or their ``weights_sha256`` digest)."""
    found = named if isinstance(named, str) else weights_sha256(named)
    if found != header.base_sha256:
        raise CheckpointError(
            f"{where}: the base model's trainable weights differ from those the run started from "
            f"(sha256 {found[:12]} != {header.base_sha256[:12]}): replay needs the same base model, tuning and seed"
        )


def check_config(header: Header, cfg: DictConfig, where: Path) -> None:
    if config_sha256(cfg) != header.config_sha256:
        raise CheckpointError(
            f"{where}: config.yaml's {', '.join(UPDATE_KEYS)} differ from the run's (the log's config hash); "
            "restore the config the run was trained with"
        )


def replay_into(optimizer, log: Trajectory, step: int, batch_size: int) -> None:
    """Steps 1..``step`` of ``log`` through ``optimizer`` (at step 0, on the base weights)."""
    if not 0 <= step <= log.last_step:
        raise CheckpointError(f"--step {step}: {log.path} holds steps 0..{log.last_step}")
    replay_steps(optimizer, ReplayTape(log.header.replicas), log.steps[:step], batch_size)


@dataclass
class Replayed:
    """A run's model at ``step``: ``model`` (peft-wrapped for LoRA / prefix), ``named`` (its
    trainable parameters), ``tokenizer``, ``cfg`` (the run's config)."""

    model: Any
    tokenizer: Any
    named: list
    cfg: DictConfig
    step: int


def load_run_config(run_dir: Path) -> DictConfig:
    path = Path(run_dir) / "config.yaml"
    if not Path(run_dir).is_dir():
        raise ConfigError(f"{run_dir}: no such run dir")
    if not path.is_file():
        raise ConfigError(f"{path}: missing; not a zobench run dir")
    return cast(DictConfig, OmegaConf.load(path))


def run_device(cfg: DictConfig, device: str | None, run_dir: Path) -> torch.device:
    """``--device``, else the run's own device, checked against this machine first: a device it
    lacks is one line, not torch's error from inside the model load."""
    from ..train.setup import resolve_device

    if device:
        check_device("--device", device, sep=" ")
    else:
        check_device(f"{run_dir / 'config.yaml'}: device", cfg.device, instead="pass --device cpu")
    return resolve_device(device or cfg.device)


def open_run(run_dir: Path, step: int | str | None) -> tuple[DictConfig, Trajectory, int]:
    """``(config, log, step)`` of the run in ``run_dir``: its log whole up to ``step`` and written
    by that config, ``step`` resolved (``resolve_step``)."""
    cfg = load_run_config(run_dir)
    log = read(run_dir / FILENAME)
    check_whole(run_dir, log, "last" if step is None else step)
    check_config(log.header, cfg, run_dir / "config.yaml")
    return cfg, log, resolve_step(run_dir, log, step)


def check_engine(run_dir: Path, header: Header, engine: str) -> None:
    """The replay's engine is the run's: another backend draws other z."""
    if engine != header.engine:
        raise CheckpointError(
            f"{run_dir / FILENAME}: the run used engine {header.engine}, this replay gets {engine} "
            "(z differs between backends); replay on the device kind the run trained on"
        )


def replay(run_dir: Path, step: int | str | None = None, device: str | None = None) -> Replayed:
    """The weights of the run in ``run_dir`` after ``step`` (None or ``last``: the log's last
    step; ``best``: summary.json's ``best_step``), rebuilt from the base model and the log."""
    run_dir = Path(run_dir)
    cfg, log, target = open_run(run_dir, step)
    base = Components.build(cfg, run_device(cfg, device, run_dir), data=False, learner=False)
    model, tokenizer, named = base.model, base.tokenizer, base.named
    check_base(log.header, named, run_dir / FILENAME)
    learner = build_learner(cfg, model, named, None)  # the run's optimizer at step 0, no objective
    check_engine(run_dir, log.header, learner.engine_name)
    replay_into(learner.optimizer, log, target, int(cfg.train.batch_size))
    return Replayed(model, tokenizer, named, cfg, target)


def read_summary(run_dir: Path, why: str) -> dict:
    """``run_dir``'s summary.json ({} if none); one that is not a JSON object: CheckpointError
    naming it and ``why`` it matters."""
    path = Path(run_dir) / "summary.json"
    try:
        summary = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        raise CheckpointError(f"{path}: unreadable; {why}") from None
    if not isinstance(summary, dict):
        raise CheckpointError(f"{path}: not a JSON object; {why}")
    return summary


def check_whole(run_dir: Path, log: Trajectory, asked) -> None:
    """A completed run's log must be the one its summary.json sealed (``log.check_sealed``): a
    cut or changed log would replay an earlier step. A torn last record is expected only of a
    run that has not completed (killed: its resume cuts it off), and is said so."""
    summary = read_summary(run_dir, f"cannot tell whether {log.path} is whole")
    sealed = summary.get("trajectory")
    if summary.get("status") == "completed" and sealed is not None:
        check_sealed(log, sealed, asked)
    elif log.tail:
        logger.warning(
            "%s: a torn last record (%d bytes) after step %d: the run did not complete (killed mid-write)",
            log.path,
            log.tail,
            log.last_step,
        )


def resolve_step(run_dir: Path, log: Trajectory, step: int | str | None) -> int:
    """``step`` as a step number of ``log``: N, ``last`` (None) or ``best`` (summary.json)."""
    if step is None or step == "last":
        return log.last_step
    if step == "best":
        summary = run_dir / "summary.json"
        best = read_summary(run_dir, "cannot tell the best step").get("best_step")
        if best is None:
            raise ConfigError(f"--step best: {summary} records no best_step (no dev set, or the run has not finished)")
        return int(best)
    try:
        value = int(step)
    except ValueError:
        raise ConfigError(f"--step {step}: allowed best, last or a step number") from None
    if not 0 <= value <= log.last_step:
        raise ConfigError(f"--step {value}: {log.path} holds steps 0..{log.last_step}")
    return value
