"""Trajectory checkpoints in process, on a tiny model (the fast tier's guard of
zobench/trajectory/checkpoints.py; the run-level and SIGKILL tests are slow): a resumed
``RunTrajectory`` replays its log into a fresh optimizer and gets the weights and state of the
uninterrupted run at the checkpoint's step, then goes on identically; a changed base is refused."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tests.helpers import SMOKE, compose_run, tiny_model
from zobench.errors import CheckpointError
from zobench.models import apply_tuning, trainable
from zobench.train.learners import build_learner
from zobench.trajectory.checkpoints import RunTrajectory, checkpoint_mode
from zobench.trajectory.replay import optimizer_config


class TinyObjective:
    def __init__(self, model) -> None:
        self.model = model

    def loss(self, batch, replicas=1):
        losses = self.model(input_ids=batch.repeat(replicas, 1)).logits.float().logsumexp(-1).reshape(replicas, -1)
        return losses.mean(-1)[0] if replicas == 1 else losses.mean(-1)


def _setup(cfg, shift: float = 0.0):
    torch.set_grad_enabled(False)
    model = apply_tuning(tiny_model("llama"), OmegaConf.to_container(cfg.tuning), "causal", seed=0)
    named = trainable(model)
    named[0][1].data.add_(shift)
    return model, named, build_learner(cfg, optimizer_config(cfg), model, named, TinyObjective(model))


def _batches():
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, 64, (2, 6), generator=gen) for _ in range(4)]


def test_resume_replays_to_the_checkpoint_then_trains_on_identically(tmp_path):
    cfg = compose_run(*SMOKE, "optimizer=zo_adam", "optimizer.lr=1e-2", "engine=torch")
    model, named, learner = _setup(cfg)
    trajectory = RunTrajectory(cfg, tmp_path, learner, model, named, None)
    for step, batch in enumerate(_batches(), start=1):
        learner.step(batch)
        trajectory.append(step, learner.tape.calls)
        if step == 2:
            at_two = [p.clone() for _, p in named]
    trajectory.close()
    final = [p.clone() for _, p in named]

    model, named, learner = _setup(cfg)  # a restart: the base weights again, a fresh optimizer
    resumed = RunTrajectory(cfg, tmp_path, learner, model, named, 2)  # cuts steps 3 and 4 off the log
    resumed.replay_to(2)
    assert all(torch.equal(p, q) for (_, p), q in zip(named, at_two))
    for step, batch in enumerate(_batches()[2:], start=3):
        learner.step(batch)
        resumed.append(step, learner.tape.calls)
    assert all(torch.equal(p, q) for (_, p), q in zip(named, final))


def test_a_changed_base_is_refused_on_resume(tmp_path):
    cfg = compose_run(*SMOKE, "optimizer=mezo", "engine=torch")
    model, named, learner = _setup(cfg)
    trajectory = RunTrajectory(cfg, tmp_path, learner, model, named, None)
    learner.step(_batches()[0])
    trajectory.append(1, learner.tape.calls)
    trajectory.close()
    model, named, learner = _setup(cfg, shift=1e-3)
    with pytest.raises(CheckpointError, match="base model's trainable weights differ"):
        RunTrajectory(cfg, tmp_path, learner, model, named, 1)


def test_checkpoint_mode_is_trajectory_only_for_zo_learners():
    cfg = compose_run(*SMOKE)
    assert checkpoint_mode(cfg, zo=True) == "trajectory" and checkpoint_mode(cfg, zo=False) == "weights"
    weights = compose_run(*SMOKE, "train.checkpoint=weights")
    assert checkpoint_mode(weights, zo=True) == "weights"


def test_a_bad_checkpoint_mode_is_a_config_error_naming_the_key():
    from zobench.config import validate
    from zobench.errors import ConfigError

    with pytest.raises(ConfigError, match="train.checkpoint='tensors': allowed trajectory, weights"):
        validate(compose_run(*SMOKE, "train.checkpoint=tensors", "data.dir=/tmp"))
