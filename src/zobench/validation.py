"""Check a composed config before any work starts: every bad value is named with what is allowed."""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError

# keys that may change between a checkpoint and its resume (they do not change the numbers)
RESUMABLE_KEYS = (
    "train.steps",
    "train.checkpoint_every",
    "train.log_every",
    "train.save_final",
    "logger",
    "device",
    "debug",
    "cache_dir",
    "data.dir",
    "train.eval_batch_size",
    "dist",  # a checkpoint holds one copy of the state: resumable with another world size or mode
    # the engine that computes the steps to come: a weights checkpoint resumes on another one (engine=torch
    # after a failed or hung Triton engine); a trajectory log refuses it (it replays with one engine)
    "engine.backend",
    "engine.fused_linear",
    "engine.self_check",
    "engine.watchdog_s",
)

DIVERGENCE_POLICIES = ("stop", "skip")
SEED_MAX = 2**32 - 1  # numpy's RandomState takes seeds in 0..2**32-1


def _get(cfg: DictConfig, key: str):
    value = OmegaConf.select(cfg, key, throw_on_missing=False, default="__absent__")
    if value == "__absent__":
        raise ConfigError(f"{key} is missing from the config")
    return value


def _integer(cfg, key: str, minimum: int, maximum: int | None = None) -> None:
    value = _get(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"{key}={value!r}: expected an integer >= {minimum}"
            if maximum is None
            else f"{key}={value!r}: expected an integer in {minimum}..{maximum}"
        )
    if maximum is not None and value > maximum:
        raise ConfigError(f"{key}={value!r}: expected an integer in {minimum}..{maximum}")


def _positive_number(cfg, key: str, zero_ok: bool = False) -> None:
    """A finite number > 0 (>= 0): nan and inf are config errors, not a "divergence" later."""
    value = _get(cfg, key)
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= 0 if zero_ok else value > 0)
    )
    if not ok:
        raise ConfigError(f"{key}={value!r}: expected a finite number {'>= 0' if zero_ok else '> 0'}")


def _boolean(cfg, key: str) -> None:
    if not isinstance(_get(cfg, key), bool):
        raise ConfigError(f"{key}={_get(cfg, key)!r}: expected true or false")


def _choice(cfg, key: str, allowed) -> None:
    value = _get(cfg, key)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r}: allowed {', '.join(map(str, allowed))}")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first bad key; types, ranges, choices and devices."""
    _check_train_and_data(cfg)
    _check_flags_and_icl(cfg)
    _check_optimizer_and_model(cfg)
    _check_engine_and_device(cfg)
    from .offload.setup import check_config as check_offload  # offload.*: values and what it excludes

    check_offload(cfg)


def validate_bench(cfg: DictConfig) -> None:
    """``python -m zobench.bench``'s config (conf/bench.yaml): its ``bench.*`` keys, the seeds, and
    the optimizer, model, engine and device checks of a run."""
    from .models.loading import DTYPES

    for key in ("seed", "data.seed"):
        _integer(cfg, key, 0, SEED_MAX)
    for key in ("bench.batch_size", "bench.repeats", "bench.numerics_max_elements", "task.max_length"):
        _integer(cfg, key, 1)
    for key in ("bench.warmup", "bench.numerics_steps", "bench.virtual_lr0_steps"):
        _integer(cfg, key, 0)
    _boolean(cfg, "bench.baseline")
    dtypes = _get(cfg, "bench.numerics_dtypes")
    if not OmegaConf.is_list(dtypes) or any(d not in DTYPES for d in dtypes):
        raise ConfigError(f"bench.numerics_dtypes={dtypes!r}: expected a list of {', '.join(DTYPES)}")
    for key in ("bench.out", "bench.name"):
        if not isinstance(_get(cfg, key), str) and not (key == "bench.name" and _get(cfg, key) is None):
            raise ConfigError(f"{key}={_get(cfg, key)!r}: expected a string")
    check_output_folder("bench.out", _get(cfg, "bench.out"), sep="=")
    _check_optimizer_and_model(cfg)
    _check_engine_and_device(cfg)


def check_device(option: str, device, sep: str = "=", instead: str | None = None) -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` that this machine has (the run's ``device``,
    ``--device`` of replay and export), before a model is moved there: torch's own error for a
    missing device comes from deep inside the model load."""
    if not (isinstance(device, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", device)):
        raise ConfigError(f"{option}{sep}{device!r}: allowed auto, cpu, cuda, cuda:N")
    instead = instead or f"use {option}{sep}cpu or auto"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{option}{sep}{device}: no CUDA device is available here; {instead}")
    index = int(device.partition(":")[2] or 0)
    if device.startswith("cuda") and index >= torch.cuda.device_count():
        raise ConfigError(
            f"{option}{sep}{device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
            f"cuda:0..cuda:{torch.cuda.device_count() - 1}"
        )


def check_output_folder(option: str, path, sep: str = " ") -> Path:
    """An output folder given on a command line (``--out`` of replay, export and report,
    ``bench.out``): not empty (an unset shell variable would write into the current directory)
    and one that can be made and written (not below a regular file, not in ``/proc``, not on a
    read-only mount), checked before any work; ``ConfigError`` naming the option otherwise."""
    from .lock import unusable_run_dir

    if path is None or not str(path).strip():
        raise ConfigError(f"{option} is empty (an unset shell variable?); give a folder")
    reason = unusable_run_dir(Path(str(path)))
    if reason:
        raise ConfigError(f"{option}{sep}{path}: cannot write there ({reason}); pick a writable folder")
    return Path(str(path))


def output_error(option: str, err: OSError) -> str:
    """The one line for an output that failed while being written (a full disk, a folder that
    turned read-only): the file and the reason; nothing at the option's folder looks complete."""
    return f"{option}: {err.filename or ''}: {err.strerror or err}".replace(": : ", ": ")


def _check_train_and_data(cfg: DictConfig) -> None:
    """``seed``, ``train.*`` counts and the data protocol's sizes and seeds."""
    from .tasks.data import BAD_ROW_POLICIES, PROTOCOLS

    _integer(cfg, "seed", 0, SEED_MAX)
    _integer(cfg, "train.steps", 0)
    for key in (
        "train.batch_size",
        "train.eval_every",
        "train.eval_batch_size",
        "train.log_every",
        "task.max_length",
        "data.k",
    ):
        _integer(cfg, key, 1)
    if "masked_max_length" in cfg.task:
        _integer(cfg, "task.masked_max_length", 1)
    _choice(cfg, "data.protocol", PROTOCOLS)
    # kshot: num_eval 0 = LM-BFF's full test set; mezo samples num_eval >= 1 test examples
    _integer(cfg, "data.num_eval", 0 if _get(cfg, "data.protocol") == "kshot" else 1)
    for key in ("train.checkpoint_every", "data.num_dev"):
        _integer(cfg, key, 0)
    for key in ("data.seed", "data.eval_seed"):
        _integer(cfg, key, 0, SEED_MAX)
    if OmegaConf.select(cfg, "model.init_seed", default=None) is not None:
        _integer(cfg, "model.init_seed", 0, SEED_MAX)
    _choice(cfg, "data.on_bad_row", BAD_ROW_POLICIES)
    for key in ("train.forward_budget", "train.eval_every_passes"):
        if OmegaConf.select(cfg, key, default=None) is not None:
            _integer(cfg, key, 1)
    budgeted = OmegaConf.select(cfg, "train.forward_budget", default=None) is not None
    if OmegaConf.select(cfg, "train.eval_every_passes", default=None) is not None and not budgeted:
        raise ConfigError("train.eval_every_passes needs train.forward_budget (otherwise use train.eval_every)")
    mezo_training = (_get(cfg, "train.steps") > 0 or budgeted) and _get(cfg, "data.protocol") == "mezo"
    _integer(cfg, "data.num_train", 1 if mezo_training else 0)  # kshot takes k per class instead


def _check_flags_and_icl(cfg: DictConfig) -> None:
    """Booleans, the divergence policy, the ZO objective, tuning and in-context demonstrations."""
    from .models.objective import ZO_OBJECTIVES
    from .models.tuning import TUNINGS

    for key in ("train.keep_best", "train.save_final", "debug", "engine.paired", "engine.fused_linear"):
        _boolean(cfg, key)
    _choice(cfg, "train.on_divergence", DIVERGENCE_POLICIES)
    if OmegaConf.select(cfg, "train.checkpoint", default=None) is not None:
        _choice(cfg, "train.checkpoint", ("trajectory", "weights"))  # zobench/trajectory/checkpoints.py
    _choice(cfg, "objective", ZO_OBJECTIVES)
    _integer(cfg, "icl.demos", 0)
    if not isinstance(_get(cfg, "icl.separator"), str):
        raise ConfigError(f"icl.separator={_get(cfg, 'icl.separator')!r}: expected a string")
    _choice(cfg, "tuning.name", TUNINGS)
    if _get(cfg, "icl.demos") > _get(cfg, "data.num_train"):
        raise ConfigError(
            f"icl.demos={_get(cfg, 'icl.demos')} > data.num_train={_get(cfg, 'data.num_train')}: "
            "demonstrations are drawn from the training examples"
        )


def _check_optimizer_and_model(cfg: DictConfig) -> None:
    """The optimizer's common hyperparameters and the model's dtype, family and source."""
    from .models.loading import DTYPES, FAMILIES, SOURCES

    for key in ("lr", "eps"):
        if key in cfg.optimizer:
            _positive_number(cfg, f"optimizer.{key}")
    if "weight_decay" in cfg.optimizer:
        _positive_number(cfg, "optimizer.weight_decay", zero_ok=True)
    _choice(cfg, "model.dtype", tuple(DTYPES))
    _choice(cfg, "model.family", FAMILIES)
    _choice(cfg, "model.source", SOURCES)


def _check_engine_and_device(cfg: DictConfig) -> None:
    """Engine backend / mode / fused_linear, the device, and ``data.dir``'s type."""
    from .engine import BACKENDS, MODES

    _choice(cfg, "engine.backend", BACKENDS)
    _choice(cfg, "engine.mode", MODES)
    if _get(cfg, "engine.fused_linear") and (
        _get(cfg, "engine.backend") == "torch" or _get(cfg, "engine.mode") != "virtual"
    ):
        raise ConfigError(
            f"engine.fused_linear=true needs engine.backend=triton (or auto on CUDA) and "
            f"engine.mode=virtual; got engine.backend={_get(cfg, 'engine.backend')}, "
            f"engine.mode={_get(cfg, 'engine.mode')}"
        )
    check = OmegaConf.select(cfg, "engine.self_check", default="auto")
    if check not in ("auto", True, False) or isinstance(check, int) and not isinstance(check, bool):
        raise ConfigError(f"engine.self_check={check!r}: allowed auto, true, false")
    watchdog = OmegaConf.select(cfg, "engine.watchdog_s", default=None)
    if watchdog is not None and (
        isinstance(watchdog, bool) or not isinstance(watchdog, (int, float)) or not 0 <= watchdog < float("inf")
    ):
        raise ConfigError(f"engine.watchdog_s={watchdog!r}: expected seconds >= 0 (0 or null: no watchdog)")
    check_device("device", _get(cfg, "device"))
    data_dir = _get(cfg, "data.dir")
    if data_dir is not None and not isinstance(data_dir, str):
        raise ConfigError(f"data.dir={data_dir!r}: expected a path or null")
