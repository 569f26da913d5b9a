"""A run's model: loaded (``models.loading``), tuned (full / LoRA / prefix, ``models.tuning``),
prepared by the run's parallel strategy, and its training objective (``models.objective``)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from ..models import apply_tuning, load_model
from ..models import build_objective as objective_for
from ..models.loading import default_cache_dir
from ..models.objective import check_objective
from ..offload import setup as offload
from ..tasks import TaskSpec
from ..telemetry import clock, heartbeat
from .by_shards import load_meta

log = logging.getLogger(__name__)


def load_model_or_explain(cfg: DictConfig, device: torch.device | str):
    """``load_model``, with a cache dir that cannot be written or holds a damaged converted model
    or tokenizer reported in one line naming it (the fix: another ``cache_dir``, or delete the
    damaged folder so that it is converted again)."""
    cache_dir = cfg.get("cache_dir") or default_cache_dir()
    cache = Path(os.path.expanduser(cache_dir))
    try:
        return load_model(cfg.model, device, cache_dir)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - only what comes from the cache dir becomes one line
        if isinstance(err, OSError) and err.filename and str(err.filename).startswith(str(cache)):
            raise ConfigError(
                f"cache_dir={cache_dir}: cannot use {err.filename} ({err.strerror}); set cache_dir / "
                "ZOBENCH_CACHE to a writable folder"
            ) from err
        damaged = [str(f) for f in _cached_folders(cfg.model, cache)]
        if not damaged:  # not from a cached conversion: a bug, keep the traceback
            raise
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(
            f"cache_dir={cache_dir}: loading the converted model in {' / '.join(damaged)} failed "
            f"({type(err).__name__}: {first[:200]}); delete that folder to convert it again"
        ) from err


def _cached_folders(model_cfg, cache: Path) -> list[Path]:
    """The converted copies under ``<cache>/models/`` a model config reads (its own, and that of
    the model it borrows a tokenizer from)."""
    names = [model_cfg.name, *([model_cfg.tokenizer_from] if model_cfg.get("tokenizer_from") else [])]
    return [cache / "models" / name for name in names if (cache / "models" / name).is_dir()]


def build_model(
    cfg: DictConfig,
    device: torch.device | str,
    *,
    tune: bool = True,
    prepare_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    run_dir: Path | None = None,
    resume: int | None = None,
    by_shards: bool = False,
):
    """``(model, tokenizer)``: ``cfg.model`` loaded on ``device`` (eval mode, frozen), then with
    ``tune`` the ``cfg.tuning`` applied (full: every weight trains; LoRA / prefix: a peft wrapper
    seeded by ``cfg.seed``), then ``prepare_model(model)`` (the run's parallel strategy: e.g.
    sharding the parameters) before any engine or optimizer sees the parameters. With ``offload``
    (``cpu`` / ``disk``) and a ``run_dir``, the blocks go into the store (``zobench/offload``; the
    disk store under ``<run_dir>/offload`` unless ``offload.dir``); without a run dir (replay,
    export) the model is loaded whole, as the run's base (``zobench.trajectory.stream`` replays
    an offloaded run without it). ``resume``: the step of the checkpoint
    the run resumes from (``offload=disk`` then keeps the store the run trained). ``by_shards``
    (``dist.mode=sharded``): the model and its tuning built on meta (``by_shards.load_meta``),
    ``prepare_model`` then shards it and fills each rank's shards: no rank holds the whole model."""
    if by_shards:
        with heartbeat(f"loading model {cfg.model.name} by shards"):
            model, tokenizer = load_meta(cfg, device, lambda m: _tuned(cfg, m) if tune else m)
            return (prepare_model(model) if prepare_model is not None else model), tokenizer
    with heartbeat(f"loading model {cfg.model.name}"):
        started = time.perf_counter()
        if run_dir is not None and offload.offloaded(cfg):
            model, tokenizer = offload.load_model(cfg, torch.device(device), run_dir, load_model_or_explain, resume)
        else:  # an offloaded run's base is offload=none's (a *-random model: the same draws)
            model, tokenizer = load_model_or_explain(cfg, device)
    log.info("loaded model %s in %s", cfg.model.name, clock(time.perf_counter() - started))
    if tune:
        model = _tuned(cfg, model)
    if prepare_model is not None:
        model = prepare_model(model)
    return model, tokenizer


def _tuned(cfg: DictConfig, model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with ``cfg.tuning`` applied (LoRA / prefix seeded by ``cfg.seed``)."""
    return apply_tuning(model, OmegaConf.to_container(cfg.tuning, resolve=True), cfg.model.family, seed=cfg.seed)


def objective_length(cfg: DictConfig) -> int:
    """The token budget of an encoded example: ``task.max_length``; masked LMs have their own
    (``task.masked_max_length``, LM-BFF's 128 / 256) where a task serves both families."""
    if cfg.model.family == "masked":
        return int(cfg.task.get("masked_max_length", cfg.task.max_length))
    return int(cfg.task.max_length)


def build_objective(cfg: DictConfig, spec: TaskSpec, model, tokenizer, device: torch.device | str):
    """The training / evaluation objective of ``spec`` on ``model`` (candidate scoring, masked
    verbalizers or generation, ``models/objective.py``); ``objective=`` must be ``loss`` or the
    task's metric."""
    objective = objective_for(spec, cfg.model.family, model, tokenizer, objective_length(cfg), device)
    check_objective(str(cfg.get("objective", "loss")), objective.metric)
    return objective
