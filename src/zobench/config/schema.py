"""The config schema: one dataclass per group, declaring each key's type, range and choices once.

The shipped YAMLs (``conf/``) hold the values and their comments; these dataclasses hold what a
value may be. A field's type is what it must be (``int``, ``float``: a finite number, ``bool``,
``str``, ``Any``: not checked by type; ``Optional``: ``null`` is allowed too), its metadata the rest:

* ``min`` / ``max``: inclusive bounds (a callable ``cfg -> bound`` where another key decides it);
  ``above`` / ``below``: exclusive bounds of a number;
* ``choices``: the allowed values;
* ``expected``: what the one-line error says is expected, where the default wording does not fit;
* ``check``: a callable ``(key, value)`` raising ``ConfigError`` (a device this machine has, a
  writable folder), run after the type check.

A field whose default is ``MISSING`` must be in the composed config (every shipped config sets
it); a field with a default may be absent (the code reads it when present) and is what a ``+key=``
override may add. A group marked ``open`` (``optimizer``: each method has its own keyword
arguments, checked by its constructor) checks its declared fields when present and leaves the
``+`` question to the method. ``check.py`` reads all this; the keys that depend on each other are
``rules.py``'s. Both schemas are stored in Hydra's ConfigStore (``zobench_schema``,
``zobench_bench_schema``): ``python -m zobench --config-name zobench_schema --cfg job`` shows them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from ..errors import ConfigError
from . import rules
from .values import check_device, check_output_folder

SEED_MAX = 2**32 - 1  # numpy's RandomState takes seeds in 0..2**32-1
SEED = {"min": 0, "max": SEED_MAX}

# the choices the code dispatches on (its modules import them from here)
# model.dtype: a name -> the torch dtype it means (models/loading.py maps them to torch's)
DTYPE_NAMES = {
    "float32": "float32",
    "float16": "float16",
    "bfloat16": "bfloat16",
    "fp32": "float32",
    "fp16": "float16",
    "bf16": "bfloat16",
}
MODEL_FAMILIES = ("causal", "masked")
MODEL_SOURCES = ("hub", "gguf_package", "random")
TUNINGS = ("full", "lora", "prefix")
ZO_OBJECTIVES = ("loss", "accuracy", "f1")
PROTOCOLS = ("mezo", "kshot")
BAD_ROW_POLICIES = ("error", "skip")
DIVERGENCE_POLICIES = ("stop", "skip")
CHECKPOINT_MODES = ("trajectory", "weights")  # trajectory/checkpoints.py
ENGINE_BACKENDS = ("auto", "torch", "triton")
ENGINE_MODES = ("inplace", "virtual")
DIST_MODES = ("auto", "data", "directions", "sharded")
#: dist.root: where the parameters outside every block live (dist/sharded.py::shard_model)
ROOT_PLACEMENTS = ("sharded", "replicated")
DIST_BACKENDS = ("auto", "gloo", "nccl")

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


def check_folder_name(name: str, value: Any) -> None:
    """A folder key that may be null: a non-empty path when set."""
    if value is not None and not (isinstance(value, str) and value.strip()):
        raise ConfigError(f"{name}={value!r}: expected a folder or null")


def check_dtype_list(name: str, value: Any) -> None:
    """``bench.numerics_dtypes``: a list of dtype names."""
    if not OmegaConf.is_list(value) or any(d not in DTYPE_NAMES for d in value):
        raise ConfigError(f"{name}={value!r}: expected a list of {', '.join(DTYPE_NAMES)}")


def check_no_device_map(name: str, value: Any) -> None:
    """``model.device_map`` (accelerate's layer placement, in one process) is gone: its layers ran
    one GPU after another and the ones it offloads cannot be perturbed in place."""
    if value is not None:
        raise ConfigError(
            f"{name}={value!r}: removed; for a model larger than one GPU use dist.mode=sharded (torchrun "
            "--nproc-per-node N: 1/N of the weights per GPU) or offload=cpu|disk on one GPU (README, "
            "'Multi-GPU and multi-node'); set model.device_map=null"
        )


# offload (zobench/offload): where a run's transformer blocks live between their forwards
OFFLOAD_MODES = ("none", "cpu", "disk")


def key(default: Any = MISSING, **meta: Any) -> Any:
    """A schema field: its default (``MISSING``: required) and its checks (module docstring)."""
    return field(default=default, metadata=meta)


def group(node: type, **meta: Any) -> Any:
    return field(default_factory=node, metadata=meta)


@dataclass
class TrainConfig:
    steps: int = key(min=0)
    batch_size: int = key(min=1)
    eval_every: int = key(min=1)
    forward_budget: int | None = key(None, min=1)
    eval_every_passes: int | None = key(None, min=1)
    eval_batch_size: int = key(min=1)
    log_every: int = key(min=1)
    keep_best: bool = key()
    checkpoint_every: int = key(min=0)
    checkpoint: str | None = key(None, choices=CHECKPOINT_MODES)
    on_divergence: str = key(choices=DIVERGENCE_POLICIES)
    save_final: bool = key()


@dataclass
class DataConfig:
    dir: str | None = key(expected="a path or null")
    protocol: str = key(choices=PROTOCOLS)
    k: int = key(min=1)
    num_train: int = key(min=rules.num_train_minimum)  # kshot takes k per class instead
    num_dev: int = key(min=0)
    num_eval: int = key(min=rules.num_eval_minimum)
    seed: int = key(**SEED)
    eval_seed: int = key(**SEED)
    on_bad_row: str = key(choices=BAD_ROW_POLICIES)


@dataclass
class EngineConfig:
    backend: str = key(choices=ENGINE_BACKENDS)
    mode: str = key(choices=ENGINE_MODES)
    paired: bool = key()
    fused_linear: bool = key()
    self_check: Any = key("auto", choices=("auto", True, False))
    watchdog_s: float | None = key(None, min=0, expected="seconds >= 0 (0 or null: no watchdog)")


@dataclass
class DistConfig:
    mode: str = key(choices=DIST_MODES)
    backend: str = key(choices=DIST_BACKENDS)
    timeout_s: float = key(above=0, below=1e7, expected="seconds, a number > 0")
    # dist.mode=sharded: ranks per shard group (null: every rank), the groups replicate (HSDP);
    # dist.mode=directions: ranks per sharded replica, the replicas split the directions
    shard_size: int | None = key(None, min=1)
    # dist.mode=sharded / directions with shard_size: the root's own parameters (outside every
    # block) FSDP2-sharded with the rest, or kept whole on every rank (dist/sharded.py)
    root: str = key("sharded", choices=ROOT_PLACEMENTS)


@dataclass
class OffloadConfig:
    mode: str = key(choices=OFFLOAD_MODES)
    dir: Any = key(None, check=check_folder_name)  # offload=disk: the block files' folder (null: <run dir>/offload)
    prefetch: bool = key(True)  # read block i+1 while block i computes


@dataclass
class IclConfig:
    demos: int = key(min=0)
    separator: str = key()


@dataclass
class ModelConfig:
    family: str = key(choices=MODEL_FAMILIES)
    dtype: str = key(choices=tuple(DTYPE_NAMES))
    source: str = key(choices=MODEL_SOURCES)
    device_map: Any = key(None, check=check_no_device_map)  # removed: only null (sharded / offload instead)
    init_seed: int | None = key(None, **SEED)  # source=random: the seed of the random weights


@dataclass
class TaskConfig:
    max_length: int = key(min=1)
    masked_max_length: int | None = key(None, min=1)  # masked LMs' max_length (RoBERTa: 256)


@dataclass
class TuningConfig:
    name: str = key(choices=TUNINGS)
    target_modules: Any = key(None)  # LoRA / prefix: the modules to adapt (peft's target_modules)
    init_by_real_act: Any = key(None)  # prefix: initialise from real activations (MeZO's prefix.py)


@dataclass
class LoggerConfig:
    api_key: Any = key(None)  # W&B's key, redacted from every file (redaction.py)


@dataclass
class OptimizerConfig:
    """The hyperparameters most methods share, checked when present; the rest are the method's."""

    lr: float | None = key(None, above=0)
    eps: float | None = key(None, above=0)
    weight_decay: float | None = key(None, min=0)


@dataclass
class RunConfig:
    """``conf/config.yaml``: what ``python -m zobench`` runs."""

    seed: int = key(**SEED)
    device: Any = key(check=check_device)
    debug: bool = key()
    objective: str = key(choices=ZO_OBJECTIVES)
    train: TrainConfig = group(TrainConfig)
    data: DataConfig = group(DataConfig)
    icl: IclConfig = group(IclConfig)
    model: ModelConfig = group(ModelConfig)
    task: TaskConfig = group(TaskConfig)
    tuning: TuningConfig = group(TuningConfig)
    optimizer: OptimizerConfig = group(OptimizerConfig, open=True)
    engine: EngineConfig = group(EngineConfig)
    logger: LoggerConfig = group(LoggerConfig)
    dist: DistConfig | None = None  # absent: one process (dist/)
    offload: OffloadConfig = group(OffloadConfig)


@dataclass
class BenchGroup:
    batch_size: int = key(min=1)
    repeats: int = key(min=1)
    warmup: int = key(min=0)
    baseline: bool = key()
    numerics_steps: int = key(min=0)
    numerics_dtypes: Any = key(check=check_dtype_list)
    numerics_max_elements: int = key(min=1)
    virtual_lr0_steps: int = key(min=0)
    out: str = key(check=lambda name, value: check_output_folder(name, value, sep="="))
    name: str | None = key()


@dataclass
class BenchData:
    dir: str | None = key(expected="a path or null")
    seed: int = key(**SEED)


@dataclass
class BenchTask:
    max_length: int = key(min=1)


@dataclass
class BenchConfig:
    """``conf/bench.yaml``: what ``python -m zobench.bench`` times."""

    seed: int = key(**SEED)
    device: Any = key(check=check_device)
    data: BenchData = group(BenchData)
    task: BenchTask = group(BenchTask)
    model: ModelConfig = group(ModelConfig)
    optimizer: OptimizerConfig = group(OptimizerConfig, open=True)
    engine: EngineConfig = group(EngineConfig)
    bench: BenchGroup = group(BenchGroup)


def store() -> None:
    """Both schemas in Hydra's ConfigStore (idempotent)."""
    config_store = ConfigStore.instance()
    config_store.store(name="zobench_schema", node=RunConfig)
    config_store.store(name="zobench_bench_schema", node=BenchConfig)


store()
