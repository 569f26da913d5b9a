"""Learners: what one training step does to the weights, behind ``step(batch) -> (loss, info)``,
and ``build_learner``, the one place a config's ``optimizer`` node becomes one.

* ``ZOLearner``: a zeroth-order method (``zobench.optim``, the ``ZOOptimizer`` contract of
  docs/design.md) on a perturbation engine; ``step`` is ``optimizer.step(closure)``, where the
  closure evaluates the task loss of the batch forward only (``models/objective.py::zo_closure``).
* ``BackpropLearner``: the fine-tuning baselines (FT rows of MeZO, Malladi et al. 2023, Table 1):
  a torch optimizer on gradients from backpropagation.

Linear probing is not a learner: it takes no steps (``fit_linear_probe`` replaces the objective).

``info`` holds the step's scalars as the method records them (``projected_grad``, ``loss_plus`` /
``loss_minus``, ...); the loop logs them beside the loss and the learning rate. With the method's
seed and step (``optimizer.param_groups``) they are all a ZO step's trajectory needs (the update is
a function of them), so a per-step trajectory record belongs beside the train event. Loss sums
over a batch come from the closure (``models/objective.py``), the place for a data-parallel
all-reduce.
"""

from __future__ import annotations

from typing import Protocol, cast

import torch
from omegaconf import DictConfig, OmegaConf

from ..engine.selfcheck import describe
from ..errors import ConfigError
from ..models import zo_closure
from ..offload import setup as offload
from ..optim import decay_groups
from ..optim._common import accepts_replicas
from ..telemetry import ForwardCounter, heartbeat
from ..trajectory.tape import Tape
from .optimizers import build_checked_engine, build_optimizer, resolve_target, zo_param_groups


class Learner(Protocol):
    """One training step on a batch of encoded examples; ``state_dict`` is ``optimizer.pt``."""

    optimizer: torch.optim.Optimizer
    engine_name: str  # the summary's ``engine``: ``<backend>/<mode>`` or ``autograd``
    engine_info: dict | None  # the summary's ``engine_used`` (``selfcheck.describe``); None: no engine

    def step(self, batch: list) -> tuple[float, dict]: ...


class ZOLearner:
    """A ZO method: every step is ``optimizer.step(closure)`` on the engine's perturbations."""

    def __init__(self, optimizer, engine, objective, which: str, engine_name: str, engine_info=None) -> None:
        self.optimizer, self.engine, self.engine_name = optimizer, engine, engine_name
        self.engine_info = engine_info
        self.objective, self.which = objective, which  # the closure: task loss, or minus accuracy / F1
        # the values every closure of a step returns, for the trajectory log (zobench/trajectory)
        self.tape = Tape()
        self.replicas = objective is not None and accepts_replicas(zo_closure(objective, [], which))

    def closure(self, batch: list):
        return self.tape.wrap(zo_closure(self.objective, batch, self.which), self.replicas)

    def step(self, batch: list) -> tuple[float, dict]:
        self.tape.start()
        loss = float(self.optimizer.step(self.closure(batch)))
        return loss, self.optimizer.last_step_info

    def bind_data(self, next_batch, batch_size: int) -> None:
        """Methods that take extra batches (DiZO's projection rounds, MeZO-SVRG's anchor) draw them
        from the loop's stream through ``next_batch()``, so a resumed run sees the same batches;
        their forwards are counted like the step's."""
        if hasattr(self.optimizer, "bind_data"):
            self.optimizer.bind_data(lambda: self.closure(next_batch()), batch_size)


class BackpropLearner:
    """One backprop step: loss, backward, update; a non-finite loss is not applied."""

    engine_name = "autograd"
    engine_info = None

    def __init__(self, optimizer, objective) -> None:
        self.optimizer, self.objective = optimizer, objective

    def step(self, batch: list) -> tuple[float, dict]:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():  # the loop runs without autograd (zeroth order)
            loss = self.objective.loss(batch)
            if not torch.isfinite(loss):
                return float(loss), {}
            loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # gradients are parameter-sized: free them between steps
        return float(loss), {}


def optimizer_config(cfg: DictConfig) -> dict:
    """The ``optimizer`` node, resolved, without its ``name``: the keys ``build_learner`` reads."""
    opt_cfg = cast(dict, OmegaConf.to_container(cfg.optimizer, resolve=True))
    opt_cfg.pop("name")
    return opt_cfg


def is_linear_probe(cfg: DictConfig) -> bool:
    """``optimizer=linear_probe``: a classifier fitted on frozen features, no learner."""
    return bool(cfg.optimizer.get("linear_probe", False))


def build_learner(cfg: DictConfig, model, named, objective, engine=None):
    """The learner ``optimizer=...`` asks for on ``named`` (``model``'s trainable parameters);
    ``objective`` None: a learner without one (replay's, an integration's: the host's closure is the
    loss); ``engine``: an engine already built on ``model`` (a replay's fresh optimizer reuses it)."""
    opt_cfg = optimizer_config(cfg)
    if opt_cfg.pop("linear_probe", False):
        raise ConfigError(f"optimizer={cfg.optimizer.name}: a linear probe takes no steps; it has no learner")
    optimizer_cls = resolve_target(opt_cfg.pop("_target_"), "optimizer._target_")
    weight_decay = opt_cfg.pop("weight_decay", 0.0)
    if opt_cfg.pop("first_order", False):
        return BackpropLearner(
            build_optimizer(cfg, optimizer_cls, decay_groups(named, weight_decay), **opt_cfg), objective
        )
    if engine is None:
        engine, info = build_checked_engine(cfg, model, named, str(opt_cfg.get("distribution", "gaussian")))
    else:
        info = describe(engine, model)
    groups = zo_param_groups(optimizer_cls, named, weight_decay)
    engine = offload.wrap_engine(engine, model)  # offload=cpu|disk: block updates deferred to arrival
    optimizer = build_optimizer(cfg, optimizer_cls, groups, engine=engine, seed=cfg.seed, **opt_cfg)
    offload.bind(optimizer, cfg.optimizer.name)
    return ZOLearner(optimizer, engine, objective, cfg.objective, f"{info['backend']}/{info['mode']}", info)


def fit_linear_probe(cfg: DictConfig, objective, train: list, counter: ForwardCounter):
    """``optimizer=linear_probe``: the objective of a classifier fitted on ``objective``'s frozen
    features of ``train`` (``models/linear_probe.py``); it takes no steps, so ``train.steps`` must be
    0. The training examples' feature forwards are its training cost (counted as ``train``)."""
    if cfg.train.steps != 0:
        raise ConfigError(
            f"optimizer=linear_probe fits a classifier on frozen features and takes no steps; "
            f"set train.steps=0 (got {cfg.train.steps})"
        )
    opt_cfg = optimizer_config(cfg)
    opt_cfg.pop("linear_probe")
    fit = resolve_target(opt_cfg.pop("_target_"), "optimizer._target_", kind="method")
    with counter.phase("train"), heartbeat(f"fitting the linear probe on {len(train)} examples"):
        return fit(objective, train, cfg.train.eval_batch_size, seed=cfg.seed, **opt_cfg)
