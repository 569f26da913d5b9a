"""The training loop as a recipe: learners behind ``step(batch) -> (loss, info)``, ``LoopState``
as exactly what a checkpoint holds, and the progress a log without a terminal shows."""

import dataclasses
import logging
import re

import pytest
import torch
from torch import nn

from tests.helpers import SMOKE, compose_run
from zobench.engine import InPlaceEngine
from zobench.optim import MeZO
from zobench.train import BackpropLearner, LoopState, ZOLearner


class _Objective:
    """loss(batch) = mean((w·x - y)²) over (x, y) pairs; records the batches it saw."""

    metric = "accuracy"

    def __init__(self, model: nn.Linear) -> None:
        self.model, self.seen = model, []

    def loss(self, batch):
        self.seen.append(batch)
        x, y = torch.tensor([b[0] for b in batch]), torch.tensor([b[1] for b in batch])
        return ((self.model(x).squeeze(-1) - y) ** 2).mean()


def test_the_zo_learner_steps_the_method_on_the_batch_and_returns_its_scalars():
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    objective, before = _Objective(model), model.weight.detach().clone()
    optimizer = MeZO(model.parameters(), lr=1e-2, eps=1e-3, engine=InPlaceEngine(), seed=3)
    learner = ZOLearner(optimizer, InPlaceEngine(), objective, "loss", "torch/inplace")
    batch = [([1.0, 2.0], 0.5), ([0.0, 1.0], -1.0)]
    loss, info = learner.step(batch)
    assert objective.seen == [batch, batch]  # the ± pair, both on this batch
    assert info == optimizer.last_step_info and {"projected_grad", "loss_plus", "loss_minus"} <= info.keys()
    assert loss == pytest.approx((info["loss_plus"] + info["loss_minus"]) / 2)
    assert not torch.equal(model.weight, before)


def test_the_backprop_learner_updates_on_a_finite_loss_and_never_on_a_non_finite_one():
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    learner = BackpropLearner(torch.optim.SGD(model.parameters(), lr=0.1), _Objective(model))
    before = model.weight.detach().clone()
    loss, info = learner.step([([1.0, 2.0], 0.5)])
    assert info == {} and loss > 0 and not torch.equal(model.weight, before)
    assert all(p.grad is None for p in model.parameters())  # gradients freed between steps
    after = model.weight.detach().clone()
    loss, _ = learner.step([([float("nan"), 2.0], 0.5)])
    assert loss != loss and torch.equal(model.weight, after)


def test_loop_state_is_loop_json_in_its_order_and_reads_older_files():
    state = LoopState(step=3, counts={"train": 6}, best_dev=0.5, metrics_offset=120, elapsed=1.5)
    keys = list(state.to_dict())
    assert keys[:3] == ["step", "epoch", "offset"] and keys[-2:] == ["metrics_offset", "elapsed"]
    assert LoopState.from_dict(state.to_dict()) == state
    # a key a later zobench does not know is ignored; one an older one did not write defaults
    assert LoopState.from_dict({"step": 2, "unknown": 1}) == LoopState(step=2)


@pytest.mark.slow
def test_a_run_without_a_terminal_logs_progress_evaluations_and_the_model_load(tmp_path, data_dir, caplog, monkeypatch):
    """What a Slurm log shows: a progress line every train.log_every steps, a heartbeat during a
    long evaluation, each evaluation's result, the model load; and a checkpoint's loop.json is
    exactly a LoopState."""
    import zobench.dist.strategy as writer  # the recipe's strategy calls save_checkpoint
    import zobench.telemetry
    from zobench.run import run

    saved, save = [], writer.save_checkpoint
    monkeypatch.setattr(writer, "save_checkpoint", lambda *a: saved.append(a[-1]) or save(*a))
    monkeypatch.setattr(zobench.telemetry, "HEARTBEAT_S", 0.001)  # every evaluation is "long"
    args = ("train.steps=4", "train.log_every=2", "train.eval_every=2", "train.checkpoint_every=4")
    with caplog.at_level(logging.INFO, logger="zobench"):
        summary = run(compose_run(*SMOKE, *args, f"data.dir={data_dir}"), tmp_path)
    messages = [r.getMessage() for r in caplog.records]
    steps = [m.split(" (")[0] for m in messages if m.startswith("step ") and "/" in m.split(":")[0]]
    assert steps == ["step 2/4", "step 4/4"]
    assert any(m.startswith("loaded model tiny-llama in ") for m in messages)
    assert any(m.startswith("step 2: evaluating dev (16 examples): ") and "forward passes" in m for m in messages)
    evaluations = [m.split(" accuracy ")[0] for m in messages if re.match(r"step \d+: \w+ accuracy \d", m)]
    assert evaluations == ["step 2: dev", "step 4: dev", f"step {summary['tested_step']}: test"]
    assert len(saved) == 1 and list(saved[0]) == [f.name for f in dataclasses.fields(LoopState)]


def test_a_weights_resume_on_another_engine_cuts_the_log_at_the_checkpoint(tmp_path, caplog):
    """engine=torch after a Triton run: the log, which replays with one engine, stops at the
    checkpoint's step and is not extended; a resume on the same engine keeps it."""
    from types import SimpleNamespace

    from zobench.train import guard
    from zobench.trajectory import log as trajlog

    path = tmp_path / trajlog.FILENAME
    header = trajlog.Header(
        config_sha256="c", base_sha256="b", optimizer="mezo", engine="triton/virtual", replicas=True
    )
    writer = trajlog.create(path, header)
    for step in (1, 2, 3):
        writer.append(step, [(torch.tensor([0.5, float(step)]),)])
    writer.close()
    learner = SimpleNamespace(engine_name="triton/virtual")
    assert not guard.log_of_another_engine(tmp_path, learner, 2) and len(trajlog.read(path).steps) == 3
    learner.engine_name = "torch/virtual"
    with caplog.at_level(logging.WARNING):
        assert guard.log_of_another_engine(tmp_path, learner, 2)
    assert [s[0] for s in trajlog.read(path).steps] == [1, 2] and "stops at step 2" in caplog.text


@pytest.mark.slow
def test_the_recipe_is_set_up_by_its_own_methods_and_the_strategy_it_is_given(tmp_path, data_dir):
    """Nothing outside the recipe replaces its attributes (its stop request, its methods) or the
    learner's: the strategy is passed in, and setup changes only what its own steps set."""
    from types import SimpleNamespace

    from zobench.dist.strategy import Single
    from zobench.telemetry import NullLogger
    from zobench.train import Recipe

    stop, strategy, metrics = SimpleNamespace(signum=None), Single(), NullLogger()
    cfg = compose_run(*SMOKE, f"data.dir={data_dir}", "optimizer=fzoo", "engine=torch")
    recipe = Recipe(cfg, tmp_path, [metrics], stop, lambda: 0.0, strategy=strategy, metrics=metrics)
    before = dict(vars(recipe))
    recipe.setup(None)
    assert recipe.stop is stop and recipe.strategy is strategy and recipe.metrics is metrics
    changed = {name for name, value in before.items() if vars(recipe)[name] is not value}
    # setup_model's, setup_learner's, restore's own
    assert changed == {"learner", "load_peak", "pre_load", "stream", "trajectory"}
    assert not set(vars(recipe)) & set(dir(Recipe))  # no method replaced on the instance
    learner = recipe.learner
    assert isinstance(learner, ZOLearner) and learner.objective is recipe.objective
    assert not set(vars(learner.optimizer)) & {"_direction_share", "share_directions", "_each_direction", "step"}
    assert recipe.first_step == 0 and recipe.strategy.summary(recipe.state, recipe.steps, 0) == {}
