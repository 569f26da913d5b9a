"""What the recipe's setup needs besides the recipe itself: the device, the model load with
cache-dir errors in one line, the step schedule and the data protocol keys."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import DictConfig

from ..errors import ConfigError
from ..models import load_model


def resolve_device(name: str) -> torch.device:
    """``device=auto``: cuda if available, else cpu; otherwise the torch device named."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def protocol(cfg: DictConfig) -> dict:
    """The data protocol keys, for configs that have them (``data.protocol``, ``data.k``)."""
    return {key: cfg.data[key] for key in ("protocol", "k") if key in cfg.data}


def load_model_or_explain(cfg: DictConfig, device: torch.device):
    """``load_model``, with a cache dir that cannot be written or holds a damaged converted model
    or tokenizer reported in one line naming it (the fix: another ``cache_dir``, or delete the
    damaged folder so that it is converted again)."""
    cache = Path(os.path.expanduser(cfg.cache_dir))
    try:
        return load_model(cfg.model, device, cfg.cache_dir)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - only what comes from the cache dir becomes one line
        if isinstance(err, OSError) and err.filename and str(err.filename).startswith(str(cache)):
            raise ConfigError(
                f"cache_dir={cfg.cache_dir}: cannot use {err.filename} ({err.strerror}); set cache_dir / "
                "ZOBENCH_CACHE to a writable folder"
            ) from err
        damaged = [str(f) for f in _cached_folders(cfg.model, cache)]
        if not damaged:  # not from a cached conversion: a bug, keep the traceback
            raise
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(
            f"cache_dir={cfg.cache_dir}: loading the converted model in {' / '.join(damaged)} failed "
            f"({type(err).__name__}: {first[:200]}); delete that folder to convert it again"
        ) from err


def _cached_folders(model_cfg, cache: Path) -> list[Path]:
    """The converted copies under ``<cache>/models/`` a model config reads (its own, and that of
    the model it borrows a tokenizer from)."""
    names = [model_cfg.name, *([model_cfg.tokenizer_from] if model_cfg.get("tokenizer_from") else [])]
    return [cache / "models" / name for name in names if (cache / "models" / name).is_dir()]


def schedule(train_cfg: DictConfig, optimizer, not_zo: bool) -> tuple[int, int]:
    """``(steps, eval_every)``: from ``train.steps`` / ``train.eval_every``, or, with
    ``train.forward_budget``, from the method's declared forward passes per step, so that methods
    of 2 (MeZO), 3 (HiZOO) or N+1 (FZOO) passes per step get the same budget and, with
    ``train.eval_every_passes``, dev evaluations at the same forward-pass counts."""
    budget = train_cfg.get("forward_budget")
    if not budget:
        return int(train_cfg.steps), int(train_cfg.eval_every)
    if not_zo:
        raise ConfigError(
            "train.forward_budget counts a ZO method's forward passes; first-order and "
            "linear-probe baselines take train.steps (set train.forward_budget=null)"
        )
    exact = getattr(optimizer, "forward_passes", None)  # methods whose steps differ in cost
    per_step = optimizer.forward_passes_per_step  # (DiZO, MeZO-SVRG): an average, not an int
    steps = max(1, int(budget // per_step))
    if exact is not None:  # the most steps whose exact passes fit the budget (at least one)
        steps = 1
        while exact(steps + 1) <= budget:
            steps += 1
    every = train_cfg.get("eval_every_passes")
    return steps, max(1, int(int(every) // per_step)) if every else int(train_cfg.eval_every)
