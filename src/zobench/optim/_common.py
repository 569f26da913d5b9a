"""Shared machinery of the ZO optimizers: stable parameter ids, per-step seeds, decay groups."""

from __future__ import annotations

import inspect
import math
import numbers
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..engine import Direction, Engine, InPlaceEngine, mix_seed
from ..engine.sharded import is_sharded, local_tensor, shard_of
from .registry import register

#: ``closure()`` -> the batch loss; a closure of the batched contract also takes ``replicas=N``
Closure = Callable[..., torch.Tensor]


def accepts_replicas(closure) -> bool:
    """Whether ``closure`` takes a ``replicas`` argument (the batched-evaluation contract:
    ``closure(replicas=N)`` evaluates the batch repeated N times and returns N losses)."""
    try:
        return "replicas" in inspect.signature(closure).parameters
    except (TypeError, ValueError):
        return False


def decay_groups(
    named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float, names: bool = False
) -> list[dict]:
    """Two param groups: matrices decay, vectors (biases, norm weights: ``p.ndim < 2``) don't.

    This is the MeZO reference rule ("no decay on bias and layer norm") stated by shape rather than
    by name, so it holds for every architecture. ``names``: the groups hold ``(name, p)`` pairs,
    which torch keeps as ``param_names`` (for methods that read the model's structure from the
    names, ``takes_names``: LeZO's blocks, DiZO's projected matrices).
    """
    decay: list = []
    no_decay: list = []
    for name, p in named_params:
        (decay if p.ndim >= 2 else no_decay).append((name, p) if names else p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


#: kind -> (test, what is allowed): the hyperparameter checks every optimizer shares
HYPERPARAMETER_KINDS = {
    "nonnegative": (lambda v: _real(v) and v >= 0, "must be a finite number >= 0"),
    "positive": (lambda v: _real(v) and v > 0, "must be a finite number > 0"),
    "count": (lambda v: _integer(v) and v >= 1, "must be an integer >= 1"),
    "natural": (lambda v: _integer(v) and v >= 0, "must be an integer >= 0"),
    "fraction": (lambda v: _real(v) and 0 <= v < 1, "must be in [0, 1)"),
    "unit": (lambda v: _real(v) and 0 <= v <= 1, "must be in [0, 1]"),
    "betas": (
        lambda v: isinstance(v, (tuple, list)) and len(v) == 2 and all(_real(b) and 0 <= b < 1 for b in v),
        "must be two numbers in [0, 1)",
    ),
}


def check_hyperparameters(kinds: dict[str, str], values: dict) -> None:
    """Raise ``ValueError("key=value: what is allowed")`` for the first value in ``values`` whose
    key ``kinds`` declares and whose value is not of that kind (run.py turns it into the one-line
    ``optimizer.key=value`` config error)."""
    for key, kind in kinds.items():
        if key in values:
            test, allowed = HYPERPARAMETER_KINDS[kind]
            if not test(values[key]):
                raise ValueError(f"{key}={values[key]!r}: {allowed}")


class ZOOptimizer(torch.optim.Optimizer):
    """Base of every zeroth-order method (the "Optimizer" contract of docs/design.md).

    * ``step(closure)``: ``closure()`` evaluates the loss of the current batch at the *current*
      parameters, forward only; the method calls it under perturbations made by ``self.engine``.
    * Each parameter gets a stable id (its index in the flat list of all groups) that seeds z.
    * The step counter and the base seed live in ``param_groups`` and all other state in
      ``self.state``, so ``state_dict()`` captures everything a bit-identical resume needs.
    * Subclasses declare ``forward_passes_per_step``; the loop counts the real passes with a hook.

    Args:
        params: parameters or param groups, as for any ``torch.optim.Optimizer``.
        defaults: the method's hyperparameters, checked against ``hyperparameters`` (and again in
            every param group, which may override them).
        engine: perturbation engine (``zobench.engine``); defaults to the in-place torch engine.
        seed: base seed of this optimizer's direction stream (an integer).
    """

    #: forward passes of one step (an average where steps differ: DiZO, MeZO-SVRG)
    forward_passes_per_step: float = 0
    #: parameter-sized float32 buffers kept per parameter (the honest memory overhead)
    state_buffers_per_param: int = 0
    #: hyperparameter -> kind (``HYPERPARAMETER_KINDS``), checked in ``__init__`` in the defaults and
    #: in every param group. Subclasses declare only their own keys; the dicts of the MRO are merged.
    hyperparameters: dict[str, str] = {"lr": "nonnegative", "eps": "positive", "weight_decay": "nonnegative"}
    #: the step evaluates several directions whose results only meet in the update (FZOO's N, MeZO's
    #: q): ``dist.mode=directions`` may split them over ranks (``_each_direction``)
    splits_directions: bool = False
    #: how a step's directions are evaluated when they are split (``share_directions``); None: all here
    _direction_share: Callable[[int, Callable[[list[int]], list]], list] | None = None
    #: torch's per-parameter state (tensor keys) plus a method's few scalars under string keys
    #: ("zo", "svrg", "fzoo_reuse"): torch's ``state_dict`` keeps non-tensor keys as they are
    state: defaultdict[Any, Any]

    def __init_subclass__(cls, method: str | None = None, **kwargs) -> None:
        """A method registers itself by subclassing (``zobench.optim.registry``)."""
        super().__init_subclass__(**kwargs)
        register(cls, method)

    @classmethod
    def hyperparameter_kinds(cls) -> dict[str, str]:
        kinds: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            kinds.update(vars(klass).get("hyperparameters", {}))
        return kinds

    def __init__(self, params, defaults: dict, engine: Engine | None = None, seed: int = 0) -> None:
        kinds = self.hyperparameter_kinds()
        check_hyperparameters(kinds, defaults)
        if not _integer(seed):
            raise ValueError(f"seed={seed!r}: must be an integer")
        defaults = {**defaults, "seed": int(seed), "step": 0}
        super().__init__(params, defaults)
        for group in self.param_groups:  # a group may override a default (e.g. its own lr)
            check_hyperparameters(kinds, group)
        self.engine = engine if engine is not None else InPlaceEngine()
        flat = [p for group in self.param_groups for p in group["params"]]
        self._group_params = []
        pid = 0
        for group in self.param_groups:
            entries = []
            for p in group["params"]:
                entries.append((pid, p))
                pid += 1
            self._group_params.append(entries)
        self._all_params = [entry for entries in self._group_params for entry in entries]
        if len({id(p) for p in flat}) != len(flat):
            raise ValueError("a parameter appears in more than one param group")

    # -- seeds ---------------------------------------------------------------------------------
    def _advance(self) -> int:
        """Increment the step counter (kept in every group) and return the new step number."""
        step = self.param_groups[0]["step"] + 1
        for group in self.param_groups:
            group["step"] = step
        return step

    def direction(self, step: int, index: int = 0, distribution: str = "gaussian") -> Direction:
        """Direction ``index`` of step ``step``: a pure function of (seed, step, index)."""
        return Direction(mix_seed(self.param_groups[0]["seed"], step, index), distribution)

    def share_directions(self, share: Callable[[int, Callable[[list[int]], list]], list] | None) -> None:
        """Evaluate a step's directions through ``share(count, evaluate) -> results`` (every
        direction's result, in order) instead of ``evaluate(list(range(count)))``: a
        direction-parallel run (``zobench.dist.directions.DirectionShare``) evaluates this
        rank's share and gathers the others'. Only methods with ``splits_directions`` call it
        (``_each_direction``); None: every direction here again."""
        self._direction_share = share

    def _each_direction(self, count: int, evaluate: Callable[[list[int]], list]) -> list:
        """``evaluate(list(range(count)))``: the results (float or tuples of floats) of directions
        0..count-1, or those the ``share_directions`` seam gathers (the same list on every rank)."""
        if self._direction_share is None:
            return evaluate(list(range(count)))
        return self._direction_share(count, evaluate)

    def _shared(self, key: str):
        """A hyperparameter that must be equal across groups (e.g. ε: one perturbation per step)."""
        values = {group[key] for group in self.param_groups}
        if len(values) != 1:
            raise ValueError(f"{key} must be the same in every param group, got {sorted(values)}")
        return values.pop()

    def _two_sided(
        self, closure: Closure, direction: Direction, eps: float, params: list | None = None
    ) -> tuple[float, float, float]:
        """SPSA: (g, ℓ+, ℓ-) with g = (L(θ+εz) - L(θ-εz)) / 2ε over ``params`` (default: all); the
        engine is left at θ-εz or, after a mirrored pair, with nothing applied (``restore`` or
        ``restore_and_update`` next). Two forward passes: one batched call of the pair when the
        engine and the closure can (``Engine.mirrored``: z drawn once for both), else one after
        the other."""
        if params is None:
            params, mirror = self._all_params, self._can_mirror(closure)
        else:  # a subset that may change every step (LeZO's blocks): asked every time
            mirror = accepts_replicas(closure) and self.engine.mirror_support(params) is None
        if mirror:
            with self.engine.mirrored(params, direction, eps):
                losses = torch.as_tensor(closure(replicas=2)).reshape(-1)
            if losses.numel() != 2:
                raise ValueError(
                    f"closure(replicas=2) returned {losses.numel()} losses; it must return "
                    "one loss per replica, shape (2,)"
                )
            loss_plus, loss_minus = float(losses[0]), float(losses[1])
        else:
            self.engine.perturb(params, direction, +eps)
            loss_plus = float(closure())
            self.engine.perturb(params, direction, -eps)
            loss_minus = float(closure())
        return (loss_plus - loss_minus) / (2 * eps), loss_plus, loss_minus

    def _can_mirror(self, closure: Closure) -> bool:
        """Whether the ± pair can be one batched call (checked once per engine: the model's
        modules do not change between steps)."""
        if not accepts_replicas(closure):
            return False
        if getattr(self, "_mirror_engine", None) is not self.engine:
            self._mirror_engine = self.engine
            self._mirror_ok = self.engine.mirror_support(self._all_params) is None
        return self._mirror_ok

    def _spsa_estimate(self, closure: Closure, distribution: str = "gaussian"):
        """Advance the step, estimate g along a fresh z, put θ back, record the scalars:
        ``(step, direction, g, ℓ+, ℓ-)``. The prologue of methods with their own update rule."""
        step = self._advance()
        direction = self.direction(step, distribution=distribution)
        g, loss_plus, loss_minus = self._two_sided(closure, direction, self._shared("eps"))
        self.engine.restore(self._all_params)
        self._record(projected_grad=g, loss_plus=loss_plus, loss_minus=loss_minus)
        return step, direction, g, loss_plus, loss_minus

    def _spsa_sgd(
        self, closure: Closure, direction: Direction, gain: Callable[[float], float] | None = None
    ) -> torch.Tensor:
        """One ZO-SGD step along ``direction`` (any z: masked, low-rank, ...): SPSA estimate g,
        then θ ← (1 - ηλ) θ - η gain(g) z fused with the restore (gain: identity, or e.g. the
        sign of g for ZO-SGD-Sign). Returns (ℓ+ + ℓ-)/2."""
        g, loss_plus, loss_minus = self._two_sided(closure, direction, self._shared("eps"))
        self._record(projected_grad=g, loss_plus=loss_plus, loss_minus=loss_minus)
        if not math.isfinite(g):  # never write NaN/inf into the weights
            self.engine.restore(self._all_params)
        else:
            coeff = g if gain is None else gain(g)
            for group, params in zip(self.param_groups, self._group_params):
                lr = group["lr"]
                self.engine.restore_and_update(params, direction, coeff=-lr * coeff, decay=lr * group["weight_decay"])
        return torch.tensor((loss_plus + loss_minus) / 2)

    def _param_state(self, p: torch.Tensor, key: str, dtype=torch.float32) -> torch.Tensor:
        """A parameter-sized buffer in ``self.state`` (so ``state_dict`` saves it), zero-initialised."""
        state = self.state[p]
        if key not in state:
            # contiguous whatever p's layout: ``Piece.of`` slices it flat; an FSDP2-sharded p
            # (dist.mode=sharded) keeps this rank's shard only
            state[key] = torch.zeros_like(local_tensor(p), dtype=dtype, memory_format=torch.contiguous_format)
        return state[key]

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's, but each state tensor keeps the dtype and the values it was saved with: torch
        casts floating state to its parameter's dtype (its class-qualified
        ``_process_value_according_to_param_policy``), which would round float32 moments of an fp16
        model to fp16 (or turn ZO-Adam's bfloat16 state of an fp32 model into float32): another
        optimizer after a resume."""
        saved = [p for group in state_dict["param_groups"] for p in group["params"]]
        tensors = {
            index: {key: value for key, value in entry.items() if isinstance(value, torch.Tensor)}
            for index, entry in state_dict["state"].items()
            if isinstance(entry, dict)
        }
        super().load_state_dict(state_dict)
        for index, p in zip(saved, (p for group in self.param_groups for p in group["params"])):
            for key, value in tensors.get(index, {}).items():
                if is_sharded(p) and value.shape == p.shape:  # dist.mode=sharded: this rank's rows
                    value = shard_of(p, value)
                self.state[p][key] = value.to(device=p.device, copy=True)

    def _record(self, **scalars: float) -> None:
        """Scalars of the last step (projected gradient, losses) for the loop to log."""
        self.state["zo"] = {k: float(v) for k, v in scalars.items()}

    @property
    def last_step_info(self) -> dict:
        return dict(self.state.get("zo", {}))
