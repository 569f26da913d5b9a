"""What every integration shares: a ZO method built from a config without the recipe
(``build_zo``), and ``ZOSession``, which takes one step of it on a closure the host framework
provides, with zobench's forward-pass count, peak memory and closure tape.

A host (Hugging Face ``Trainer``, TRL, Lightning, a plain loop) owns the data, the schedule and
the checkpoints; the session owns what a zobench step needs besides them:

* the method (``zobench.optim``) on a perturbation engine, built by the recipe's own
  ``build_learner`` (the factory, ``zobench.build``), so ``zo="mezo"`` in a Trainer is the optimizer
  ``optimizer=mezo`` is in ``python -m zobench``;
* a forward counter on the model (``telemetry.ForwardCounter``): passes made inside a step count
  as ``train``, every other forward (the host's evaluation) as ``eval``;
* the peak memory of the training steps (``telemetry.PeakMemory``);
* common random numbers: every closure call of one step runs under the same torch RNG state
  (seeded by the method's seed and the step), so a model in train mode draws one dropout mask
  per step and all of SPSA's evaluations see it. Without this, L(θ+εz) - L(θ-εz) would hold the
  difference of two dropout masks, O(1) against the O(ε) signal. The host's RNG stream is left
  as it was (``torch.random.fork_rng``). A model without dropout computes the same numbers.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..build import ZOLearner, build_learner
from ..engine import mix_seed
from ..errors import ConfigError
from ..models import hf_model, trainable
from ..optim import ZOOptimizer
from ..resources import conf_dir
from ..telemetry import ForwardCounter, PeakMemory
from ..trajectory.tape import Tape

#: a constant that separates the dropout seeds from the direction seeds of the same (seed, step)
_DROPOUT_STREAM = 0x5EED_D0


def method_config(zo: str | dict | DictConfig) -> dict:
    """The method's config as ``conf/optimizer/<name>.yaml`` holds it, with ``zo``'s keys on top:
    ``"mezo"``, ``{"name": "mezo", "eps": 1e-3}``, or a composed ``cfg.optimizer`` node.

    Raises:
        ConfigError: an unknown method name (naming the ones there are), or a first-order /
            linear-probe config (those are not ZO methods: use the host's own optimizer).
    """
    given = {"name": zo} if isinstance(zo, str) else OmegaConf.to_container(OmegaConf.create(zo), resolve=True)
    assert isinstance(given, dict)
    name = given.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"zo={zo!r}: name the method, e.g. zo='mezo' or zo={{'name': 'mezo', 'eps': 1e-3}}")
    path = conf_dir() / "optimizer" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"zo.name={name}: no such method; allowed {', '.join(known)}")
    shipped = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert isinstance(shipped, dict)
    cfg = {**shipped, **given}
    if cfg.get("first_order") or cfg.get("linear_probe"):
        raise ConfigError(
            f"zo.name={name} is not a zeroth-order method (first-order or linear probe); "
            "train it with the framework's own optimizer"
        )
    return cfg


def engine_config(engine: str | dict | DictConfig) -> dict:
    """``conf/engine/<name>.yaml`` (``"auto"``, ``"torch"``, ``"triton"``), or those keys given
    as a dict over the ``auto`` engine's (``{"mode": "inplace"}``)."""
    base = "auto" if not isinstance(engine, str) else engine
    path = conf_dir() / "engine" / f"{base}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in Path(path.parent).glob("*.yaml"))
        raise ConfigError(f"engine={engine!r}: allowed {', '.join(known)}, or a dict of engine keys")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert isinstance(cfg, dict)
    if not isinstance(engine, str):
        given = OmegaConf.to_container(OmegaConf.create(engine), resolve=True)
        assert isinstance(given, dict)
        unknown = sorted(set(given) - set(cfg))  # the shipped engine config is the list of keys
        if unknown:
            raise ConfigError(f"engine.{unknown[0]}: unknown key; allowed {', '.join(map(str, cfg))}")
        cfg.update(given)
    return cfg


def build_zo(
    model: nn.Module,
    zo: str | dict | DictConfig | ZOOptimizer,
    *,
    engine: str | dict | DictConfig = "auto",
    seed: int = 0,
    lr: float | None = None,
    weight_decay: float | None = None,
) -> ZOLearner:
    """The ZO method ``zo`` on ``model``'s trainable parameters (``requires_grad``), built as the
    recipe builds ``optimizer=<name>`` (``zobench.build.build_learner``: decay groups, the
    engine ``engine`` names, the direction seed ``seed``), with no objective: the host's closure is
    the loss. ``lr`` / ``weight_decay`` fill the method's keys when ``zo`` is a bare name or a
    dict without them (a config that sets them keeps its values). ``zo`` may also be an optimizer
    built by hand (``MeZO(params, engine=...)``): it is used as it is."""
    if isinstance(zo, ZOOptimizer):
        return ZOLearner(zo, zo.engine, None, "loss", f"{type(zo.engine).__name__}")
    if isinstance(zo, torch.optim.Optimizer):
        raise ConfigError(f"zo={type(zo).__name__}: not a zeroth-order method (a zobench.optim class)")
    given_keys = {"name"} if isinstance(zo, str) else set(OmegaConf.create(zo).keys())
    opt_cfg = method_config(zo)
    if lr is not None and "lr" not in given_keys:
        opt_cfg["lr"] = lr
    if weight_decay is not None and "weight_decay" not in given_keys:
        opt_cfg["weight_decay"] = weight_decay
    cfg = OmegaConf.create(
        {"seed": int(seed), "objective": "loss", "engine": engine_config(engine), "optimizer": opt_cfg}
    )
    named = trainable(model)
    if not named:
        raise ConfigError("the model has no trainable parameters (requires_grad=True): nothing for zo to train")
    learner = build_learner(cfg, model, named, None)  # the factory's: as the recipe builds optimizer=<name>
    assert isinstance(learner, ZOLearner)  # method_config refused first-order methods
    return learner


class HostView(torch.optim.Optimizer):
    """The ZO optimizer as a host's loop sees it: its param groups and state (so the host's LR
    scheduler and checkpoint act on the real thing), and a ``step(closure)`` that never steps it:
    ``ZOSession.step`` took the step, and the host calls ``step`` after it for its bookkeeping
    (the Trainer's scheduler; Lightning's step counter and its ``on_before_optimizer_step``
    hooks, which run in the closure Lightning passes: it is called once, as for any optimizer)."""

    def __init__(self, zo: torch.optim.Optimizer) -> None:  # no super().__init__: nothing of its own
        self.zo = zo
        self.defaults = zo.defaults

    @property  # type: ignore[override]  # torch declares an attribute; the view forwards it
    def param_groups(self):
        return self.zo.param_groups

    @param_groups.setter
    def param_groups(self, groups) -> None:
        self.zo.param_groups = groups

    @property  # type: ignore[override]  # torch declares an attribute; the view forwards it
    def state(self):
        return self.zo.state

    @state.setter
    def state(self, state) -> None:
        self.zo.state = state

    def step(self, closure=None):  # type: ignore[override]  # returns None: the step was taken
        if closure is not None:
            with torch.enable_grad():  # as torch optimizers run a closure
                closure()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """No gradients: a ZO step never writes ``param.grad``."""

    def state_dict(self):
        return self.zo.state_dict()

    def load_state_dict(self, state_dict) -> None:
        self.zo.load_state_dict(state_dict)

    def __repr__(self) -> str:
        return f"HostView({self.zo!r})"


class ZOSession:
    """One ZO method on one model, stepped on the host's closures.

    ``step(closure)`` is the method's step (``optimizer.step(closure)``) with the passes counted
    as ``train``, the closure values on ``tape`` (a step's trajectory record) and the peak memory
    of the step; ``counts()`` and ``metrics()`` are what the hosts log; ``state_dict`` is what a
    checkpoint needs besides the optimizer's own state (the counts and the peak so far).
    ``counted``: the module whose forward calls are counted (default: ``model``'s transformers
    model); each call is one forward pass.
    """

    def __init__(
        self,
        model: nn.Module,
        learner: ZOLearner,
        device: torch.device | str | None = None,
        counted: nn.Module | None = None,
    ) -> None:
        self.learner, self.optimizer, self.engine = learner, learner.optimizer, learner.engine
        first = next(model.parameters(), None)
        self.device = torch.device(device if device is not None else (first.device if first is not None else "cpu"))
        # one hook call per forward pass: the transformers model (inside a peft wrapper), or
        # ``counted``, the module a host's loss calls once per evaluation
        replicas = lambda: getattr(self.engine, "replica_count", 1)  # noqa: E731 - a batched call is N passes
        self.counter = ForwardCounter(counted or hf_model(model), replicas=replicas)
        self.counter.current = "eval"  # outside a step, a forward is the host's evaluation
        self.memory = PeakMemory(self.device)
        self.train_peak = 0
        self.tape: Tape = learner.tape

    @property
    def steps(self) -> int:
        return int(self.optimizer.param_groups[0]["step"])

    def _dropout_rng(self, step: int):
        """A context with the torch RNG (CPU and this device) seeded for ``step``, restored after."""
        devices = [self.device] if self.device.type == "cuda" else []

        @contextlib.contextmanager
        def scope():
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(mix_seed(self.optimizer.param_groups[0]["seed"], step, _DROPOUT_STREAM))
                yield

        return scope

    def step(self, closure) -> tuple[float, dict]:
        """One step of the method on ``closure`` (forward only: run under ``torch.no_grad``);
        returns the loss the method reports and its scalars (``projected_grad``, ...)."""
        scope = self._dropout_rng(self.steps + 1)

        def evaluate():
            with scope():
                return closure()

        self.tape.start()
        self.memory.reset()
        with torch.no_grad(), self.counter.phase("train"):
            loss = float(self.optimizer.step(self.tape.wrap(evaluate, False)))
        self.train_peak = max(self.train_peak, self.memory.peak())
        return loss, self.optimizer.last_step_info

    def counts(self) -> dict[str, int]:
        return {"forward_passes": self.counter["train"], "forward_passes_eval": self.counter["eval"]}

    def metrics(self) -> dict[str, Any]:
        """The numbers a host logs beside its loss: forward passes (train, eval) and the peak."""
        return {**self.counts(), "peak_memory_bytes": self.train_peak}

    def state_dict(self) -> dict:
        return {"counts": dict(self.counter.counts), "train_peak": self.train_peak}

    def load_state_dict(self, state: dict) -> None:
        self.counter.counts.clear()
        self.counter.counts.update(state.get("counts", {}))
        self.train_peak = int(state.get("train_peak", 0))

    def close(self) -> None:
        self.counter.remove()
