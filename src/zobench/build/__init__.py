"""cfg → components: the one factory of a run's parts.

Everything a run, a replay, an export, a benchmark or an integration builds from a config is
built here, and only here: the task spec and its splits (``build_task``), the model with its
tuning (``build_model``: the only caller of ``models.load_model`` and ``apply_tuning``), the
objective (``build_objective``), the encoded examples (``encode_examples``), the engine and the
optimizer (``build_learner``, ``build_checked_engine``, ``engine_for``, ``zo_optimizer``: the only
places an engine or a ``_target_`` optimizer is built), and ``_target_`` strings, resolved by
Hydra's ``get_class`` / ``get_method`` (``resolve_target``). ``Components.build`` composes them in
the order a run needs them::

    cfg ─ build_task ─→ spec, splits ──────────────────────────┐
        └ build_model ─→ model (loaded, tuned, prepare_model) ─┼→ build_objective → encode_examples
                                 └→ named (trainable) ─→ build_learner (engine + optimizer)

``prepare_model`` is the parallel strategy's seam: called on the tuned model before any engine or
optimizer sees its parameters (sharding wraps them there). The model step is one function
(``build_model``) that an offloading store can wrap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from ..models import trainable
from ..tasks import Splits, TaskSpec
from .data import build_task, encode_examples, protocol
from .learners import (
    BackpropLearner,
    Learner,
    ZOLearner,
    build_learner,
    fit_linear_probe,
    is_linear_probe,
    optimizer_config,
)
from .model import build_model, build_objective, load_model_or_explain, objective_length
from .optimizers import build_checked_engine, build_optimizer, engine_for, resolve_target, zo_optimizer

__all__ = [
    "BackpropLearner",
    "Components",
    "Learner",
    "ZOLearner",
    "build_checked_engine",
    "build_learner",
    "build_model",
    "build_objective",
    "build_optimizer",
    "build_task",
    "encode_examples",
    "engine_for",
    "fit_linear_probe",
    "is_linear_probe",
    "load_model_or_explain",
    "objective_length",
    "optimizer_config",
    "protocol",
    "resolve_target",
    "zo_optimizer",
]


@dataclass
class Components:
    """A run's parts built from its config. ``spec`` / ``splits`` / ``objective`` / ``examples``
    are None when built without data (replay, export); ``learner`` is None when not asked for, and
    for a linear probe (it takes no steps: ``fit_linear_probe``)."""

    model: Any
    tokenizer: Any
    named: list[tuple[str, torch.Tensor]]
    spec: TaskSpec | None = None
    splits: Splits | None = None
    objective: Any = None
    examples: dict[str, list] | None = None
    learner: Any = None

    @classmethod
    def build(
        cls,
        cfg: DictConfig,
        device: torch.device | str,
        *,
        data: bool = True,
        learner: bool = True,
        prepare_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    ) -> Components:
        """The parts of ``cfg`` on ``device``: with ``data`` the task, splits, objective and
        encoded examples; with ``learner`` the engine and optimizer (at step 0, with the objective
        when there is one). ``prepare_model``: see the module docstring."""
        torch.set_grad_enabled(False)  # zeroth order: no autograd (a backprop learner enables it per step)
        spec, splits = build_task(cfg) if data else (None, None)
        model, tokenizer = build_model(cfg, device, prepare_model=prepare_model)
        parts = cls(model, tokenizer, trainable(model), spec, splits)
        if spec is not None and splits is not None:
            parts.objective = build_objective(cfg, spec, model, tokenizer, device)
            parts.examples = encode_examples(cfg, spec, splits, parts.objective)
        if learner and not is_linear_probe(cfg):
            parts.learner = build_learner(cfg, model, parts.named, parts.objective)
        return parts
