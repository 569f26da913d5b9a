"""The optimizer and the perturbation engine a config names, and ``_target_`` resolved one way.

``_target_`` strings (``optimizer._target_: zobench.optim.MeZO``, the linear probe's
``zobench.models.linear_probe.fit``) are resolved by Hydra's ``get_class`` / ``get_method``
(``hydra.utils``), the resolver Hydra's own ``instantiate`` uses; a target that cannot be imported
is one line naming the key. The engine comes from the ``engine`` node (``engine/__init__.py::
build_engine``), with the start-up self-check of a Triton engine for runs (``engine/selfcheck``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, cast

from hydra.utils import get_class, get_method
from omegaconf import DictConfig, OmegaConf

from ..engine import build_engine, trace
from ..engine.selfcheck import checked_engine
from ..engine.sharded import ShardedEngine, is_sharded
from ..errors import ConfigError
from ..optim import decay_groups


def resolve_target(target: str, key: str, kind: str = "class") -> Any:
    """The class (``kind="class"``) or function (``"method"``) the ``_target_`` string at config
    ``key`` names (``zobench.optim.MeZO``); one that cannot be imported: one ConfigError line."""
    locate: Callable[[str], Any] = get_class if kind == "class" else get_method
    hydra_log = logging.getLogger("hydra.utils")
    level = hydra_log.level
    hydra_log.setLevel(logging.CRITICAL)  # Hydra logs the failure over several lines first: ours is the one line
    try:
        return locate(str(target))
    except (ImportError, ValueError) as err:
        cause = err.__cause__ or err  # Hydra's ImportError wraps the import's own error
        why = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise ConfigError(f"{key}={target}: cannot import it ({type(cause).__name__}: {why})") from None
    finally:
        hydra_log.setLevel(level)


def engine_for(engine_cfg: Mapping, model, backend: str | None = None):
    """The engine an ``engine`` node asks for (``backend``, ``mode``, ``paired``,
    ``fused_linear``) on ``model``, without the self-check; ``backend`` overrides the node's (the
    self-check's fallback builds ``torch``, on which ``fused_linear`` does not apply). A model
    whose parameters the strategy sharded (``dist.mode=sharded``) gets ``sharded_engine``'s."""
    if model is not None and any(is_sharded(p) for p in model.parameters()):
        return sharded_engine(engine_cfg, model)
    chosen = str(backend or engine_cfg["backend"])
    fused = bool(engine_cfg.get("fused_linear", False))
    if backend is not None:
        fused = fused and backend != "torch"
    paired = bool(engine_cfg.get("paired", True))
    return build_engine(chosen, str(engine_cfg.get("mode", "inplace")), model, paired=paired, fused_linear=fused)


def sharded_engine(engine_cfg: Mapping, model) -> ShardedEngine:
    """The in-place torch engine on each rank's shards (``engine/sharded.py``: the same moves, by
    global element index, as one in-place process); the node must ask for that engine (``auto``
    could resolve to Triton's, which does not move shards)."""
    backend, mode = engine_cfg["backend"], engine_cfg.get("mode", "inplace")
    if mode != "inplace" or backend != "torch":
        raise ConfigError(
            f"dist.mode=sharded moves each rank's shards in place with the torch engine; got "
            f"engine.backend={backend} engine.mode={mode}: set engine.backend=torch engine.mode=inplace"
        )
    trace.install(model)  # ZOBENCH_TRACE / ZOBENCH_WATCHDOG, as build_engine does
    return ShardedEngine(model)  # the model: forward gradient's dual forward (ShardedEngine.dual)


def build_checked_engine(cfg: DictConfig, model, named, distribution: str):
    """The engine ``cfg.engine`` asks for, with the start-up check of a Triton engine
    (``engine.self_check``, ``engine/selfcheck.py``): (engine, what ran). ``engine=auto`` falls back
    to the torch engine when the check fails; ``engine=triton`` stops with one line."""
    engine_cfg = cfg.engine

    def build(backend: str):
        return engine_for(engine_cfg, model, backend=backend)

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


def zo_param_groups(optimizer_cls, named, weight_decay: float) -> list[dict]:
    """A ZO method's parameter groups: decay / no-decay (``optim.decay_groups``), with the
    parameter names for the methods that take them (LeZO's layer blocks)."""
    return decay_groups(named, weight_decay, names=getattr(optimizer_cls, "takes_names", False))


def zo_optimizer(opt_cfg: Mapping, named, engine, seed: int):
    """The configured zeroth-order method (``conf/optimizer``, a node or dict with ``name`` and
    ``_target_``) on ``engine`` and the parameters ``named``, its groups as the recipe's learner
    builds them: the bare optimizer the benchmarks time. First-order and probing baselines are
    refused with a one-line error."""
    given = OmegaConf.to_container(opt_cfg, resolve=True) if OmegaConf.is_config(opt_cfg) else opt_cfg
    kwargs = {str(k): v for k, v in cast(Mapping, given).items()}
    name = kwargs.pop("name")
    if kwargs.pop("first_order", False) or kwargs.pop("linear_probe", False):
        raise ConfigError(
            f"optimizer={name}: the benchmark times zeroth-order steps; "
            "allowed: a ZO method of conf/optimizer (mezo, hizoo, fzoo, zo_adam, ...)"
        )
    weight_decay = kwargs.pop("weight_decay", 0.0)
    cls = resolve_target(kwargs.pop("_target_"), "optimizer._target_")
    return cls(zo_param_groups(cls, named, weight_decay), engine=engine, seed=seed, **kwargs)
