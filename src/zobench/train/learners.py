"""Learners: what one training step does to the weights, behind ``step(batch) -> (loss, info)``.

* ``ZOLearner``: a zeroth-order method (``zobench.optim``, the ``ZOOptimizer`` contract of
  docs/design.md) on a perturbation engine; ``step`` is ``optimizer.step(closure)``, where the
  closure evaluates the task loss of the batch forward only (``models/objective.py::zo_closure``).
* ``BackpropLearner``: the fine-tuning baselines (FT rows of MeZO, Malladi et al. 2023, Table 1):
  a torch optimizer on gradients from backpropagation.

Linear probing is not a learner: it takes no steps (``Recipe.setup_learner``).

``info`` holds the step's scalars as the method records them (``projected_grad``, ``loss_plus`` /
``loss_minus``, ...); the loop logs them beside the loss and the learning rate. With the method's
seed and step (``optimizer.param_groups``) they are all a ZO step's trajectory needs (the update is
a function of them), so a per-step trajectory record belongs beside the train event. Loss sums
over a batch come from the closure (``models/objective.py``), the place for a data-parallel
all-reduce.
"""

from __future__ import annotations

import re
from typing import Protocol

import torch
from omegaconf import DictConfig

from ..engine import build_engine
from ..engine.selfcheck import checked_engine, describe
from ..errors import ConfigError
from ..models import zo_closure
from ..offload import setup as offload
from ..optim import decay_groups
from ..optim._common import accepts_replicas
from ..trajectory.tape import Tape


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


def import_target(target: str):
    """The object a ``_target_`` string names (``zobench.optim.MeZO``)."""
    module, _, name = target.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)


def build_learner(cfg: DictConfig, opt_cfg: dict, model, named, objective, engine=None):
    """The learner ``optimizer=...`` asks for (``opt_cfg``: its config without name / flags);
    ``engine``: an engine already built on ``model`` (a replay's fresh optimizer reuses it)."""
    optimizer_cls = import_target(opt_cfg.pop("_target_"))
    weight_decay = opt_cfg.pop("weight_decay", 0.0)
    if opt_cfg.pop("first_order", False):
        return BackpropLearner(
            build_optimizer(cfg, optimizer_cls, decay_groups(named, weight_decay), **opt_cfg), objective
        )
    if engine is None:
        engine, info = build_checked_engine(cfg, model, named, str(opt_cfg.get("distribution", "gaussian")))
    else:
        info = describe(engine, model)
    groups = decay_groups(named, weight_decay, names=getattr(optimizer_cls, "takes_names", False))
    engine = offload.wrap_engine(engine, model)  # offload=cpu|disk: block updates deferred to arrival
    optimizer = build_optimizer(cfg, optimizer_cls, groups, engine=engine, seed=cfg.seed, **opt_cfg)
    offload.bind(optimizer, cfg.optimizer.name)
    return ZOLearner(optimizer, engine, objective, cfg.objective, f"{info['backend']}/{info['mode']}", info)


def build_checked_engine(cfg: DictConfig, model, named, distribution: str):
    """The engine ``cfg.engine`` asks for, with the start-up check of a Triton engine
    (``engine.self_check``, ``engine/selfcheck.py``): (engine, what ran). ``engine=auto`` falls back
    to the torch engine when the check fails; ``engine=triton`` stops with one line."""
    engine_cfg = cfg.engine

    def build(backend: str):
        fused = bool(engine_cfg.fused_linear) and backend != "torch"
        return build_engine(backend, engine_cfg.mode, model, paired=engine_cfg.paired, fused_linear=fused)

    setting = engine_cfg.get("self_check", "auto")
    return checked_engine(build, str(engine_cfg.backend), model, [p for _, p in named], distribution, setting)


def build_optimizer(cfg: DictConfig, optimizer_cls, params, **kwargs):
    """The optimizer, its hyperparameter checks (ValueError, "key=value: why") turned into the
    one-line config error of the key they name (optimizer.key=value: why)."""
    try:
        return optimizer_cls(params, **kwargs)
    except ValueError as error:
        message = str(error)
        named_key = re.match(r"\w+=", message) and message.split("=", 1)[0] in kwargs
        raise ConfigError(
            f"optimizer.{message}" if named_key else f"optimizer={cfg.optimizer.name}: {message}"
        ) from None
