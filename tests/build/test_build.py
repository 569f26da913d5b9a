"""The factory (``zobench.build``): a tiny config's components, the seam for the parallel
strategy, the family rule, ``_target_`` errors, and that every other module builds through it
(replay, export and the bench call its model builder; no module outside it loads, tunes or
builds an engine, objective or config optimizer)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import zobench
import zobench.build.model as factory_model
from tests.helpers import SMOKE, compose_config, compose_run
from zobench.build import Components, ZOLearner, build_learner, build_task, resolve_target, zo_optimizer
from zobench.errors import ConfigError
from zobench.models import trainable
from zobench.optim import MeZO

SRC = Path(zobench.__file__).parent
#: what only the factory calls: model loading, tuning, objectives, engines, ``_target_`` resolution
FACTORY_ONLY = {
    "load_model",
    "load_model_or_explain",
    "apply_tuning",
    "build_objective",
    "build_engine",
    "build_checked_engine",
    "get_class",
    "get_method",
    "instantiate",
}


@pytest.fixture
def counted_loads(monkeypatch):
    """The factory's model loads, counted (the real load still runs)."""
    calls, load = [], factory_model.load_model

    def counting(*args, **kwargs):
        calls.append(args[0]["name"])
        return load(*args, **kwargs)

    monkeypatch.setattr(factory_model, "load_model", counting)
    return calls


def test_the_components_of_a_tiny_config(data_dir):
    cfg = compose_run(*SMOKE, "engine=torch", f"data.dir={data_dir}")
    parts = Components.build(cfg, "cpu")
    assert parts.spec is not None and parts.spec.name == cfg.task.name
    assert parts.examples is not None and parts.splits is not None
    assert {k: len(v) for k, v in parts.examples.items()} == {"train": 32, "dev": 16, "test": 24}
    assert [n for n, _ in parts.named] == [n for n, _ in trainable(parts.model)] and parts.named
    assert isinstance(parts.learner, ZOLearner) and parts.learner.objective is parts.objective
    assert type(parts.learner.optimizer).__name__ == "MeZO" and parts.learner.engine_name == "torch/virtual"
    assert not torch.is_grad_enabled()  # zeroth order: built (and run) without autograd
    torch.set_grad_enabled(True)


def test_prepare_model_sees_the_tuned_model_before_the_engine_and_optimizer(monkeypatch):
    cfg = compose_run(*SMOKE, "engine=torch", "tuning=lora")
    seen = []

    def prepare(model):
        seen.append(sorted(n for n, _ in trainable(model)))
        model.prepared = True
        return model

    parts = Components.build(cfg, "cpu", data=False, prepare_model=prepare)
    assert len(seen) == 1 and seen[0] and all("lora_" in n for n in seen[0])  # after tuning
    assert getattr(parts.model, "prepared", False)
    params = {id(p) for group in parts.learner.optimizer.param_groups for p in group["params"]}
    assert params == {id(p) for _, p in parts.named}
    torch.set_grad_enabled(True)


def test_the_family_rule_is_checked_when_the_task_is_built(data_dir):
    cfg = compose_run("model=tiny-roberta", "task=copa", "logger=none", f"data.dir={data_dir}")
    message = "model=tiny-roberta is a masked LM; task=copa has prompts for causal LMs only"
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_task(cfg)


def test_a_target_that_cannot_be_imported_is_one_line(caplog):
    with pytest.raises(ConfigError) as err:
        resolve_target("zobench.optim.NoSuchMethod", "optimizer._target_")
    assert str(err.value) == (
        "optimizer._target_=zobench.optim.NoSuchMethod: cannot import it "
        "(ModuleNotFoundError: No module named 'zobench.optim.NoSuchMethod')"
    )
    assert not [r for r in caplog.records if r.name.startswith("hydra")]  # not Hydra's lines besides
    with pytest.raises(ConfigError, match="not_a_function: cannot import it"):
        resolve_target("zobench.optim.not_a_function", "optimizer._target_", kind="method")
    assert resolve_target("zobench.optim.MeZO", "optimizer._target_") is MeZO


def test_the_bench_optimizer_is_the_learners_optimizer():
    """The bare optimizer the bench times (``zo_optimizer``) has the learner's groups and state."""
    cfg = compose_run(*SMOKE, "engine=torch", "optimizer=lezo", "optimizer.weight_decay=0.1")
    parts = Components.build(cfg, "cpu", data=False)
    bare = zo_optimizer(cfg.optimizer, parts.named, parts.learner.engine, cfg.seed)
    run = parts.learner.optimizer
    assert type(bare) is type(run) and bare.defaults == run.defaults
    assert [{k: v for k, v in g.items() if k != "params"} for g in bare.param_groups] == [
        {k: v for k, v in g.items() if k != "params"} for g in run.param_groups
    ]
    torch.set_grad_enabled(True)


def test_replay_rebuilds_the_run_through_the_factory(tmp_path, counted_loads):
    """A run's trajectory, replayed: the model comes from the factory's one load, and the weights
    are the trained ones."""
    from zobench.trajectory.checkpoints import RunTrajectory
    from zobench.trajectory.replay import replay

    cfg = compose_run(*SMOKE, "engine=torch", "optimizer.lr=1e-2")
    parts = Components.build(cfg, "cpu", data=False)
    learner = build_learner(cfg, parts.model, parts.named, _Loss(parts.model))
    trajectory = RunTrajectory(cfg, tmp_path, learner, parts.model, parts.named, None)
    batch = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    for step in (1, 2):
        learner.step(batch)
        trajectory.append(step, learner.tape.calls)
    trajectory.close()
    OmegaConf.save(cfg, tmp_path / "config.yaml")
    counted_loads.clear()
    replayed = replay(tmp_path, device="cpu")
    assert counted_loads == ["tiny-llama"]
    assert all(torch.equal(p, q) for (_, p), (_, q) in zip(replayed.named, parts.named))
    torch.set_grad_enabled(True)


def test_the_bench_loads_its_model_through_the_factory(data_dir, counted_loads):
    from zobench.bench.harness import run_benchmark

    cfg = compose_config(
        "bench", "model=tiny-llama", "engine=torch", "device=cpu", f"data.dir={data_dir}", "bench.batch_size=2"
    )
    cfg.bench.repeats, cfg.bench.warmup, cfg.bench.baseline = 1, 0, False
    result = run_benchmark(cfg)
    assert counted_loads == ["tiny-llama"] and result["zobench"]["optimizer"] == "mezo"
    torch.set_grad_enabled(True)


def test_only_the_factory_loads_tunes_and_builds_engines_objectives_and_targets():
    """No module outside ``zobench/build`` imports (or calls) what the factory alone calls: one
    place builds a run's parts, so the recipe, replay, export, bench and integrations agree."""
    allowed = {  # where these are defined and re-exported, not called
        "models/__init__.py",
        "models/loading.py",
        "models/tuning.py",
        "models/objective.py",
        "engine/__init__.py",
    }
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("build/") or rel in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] != "build":
                found += [f"{rel}:{node.lineno} imports {a.name}" for a in node.names if a.name in FACTORY_ONLY]
            elif isinstance(node, ast.Attribute) and node.attr in FACTORY_ONLY and isinstance(node.ctx, ast.Load):
                found.append(f"{rel}:{node.lineno} uses .{node.attr}")
    assert found == []


class _Loss:
    """A smooth loss of the tiny model's logits (the closure contract: ``replicas=N`` gives N)."""

    def __init__(self, model) -> None:
        self.model = model

    def loss(self, batch, replicas=1):
        losses = self.model(input_ids=batch.repeat(replicas, 1)).logits.float().logsumexp(-1).reshape(replicas, -1)
        return losses.mean(-1)[0] if replicas == 1 else losses.mean(-1)
