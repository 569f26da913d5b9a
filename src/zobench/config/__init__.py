"""The config: its schema (``schema.py``: each key's type, range and choices), the rules between
keys (``rules.py``), the one-pass check (``check.py``) and the values checked against this machine
(``values.py``). ``validate(cfg)`` runs once per run (``run.run``) and reports every bad key of the
config, one line each (``ConfigErrors``), or nothing. This package imports nothing of zobench's
but ``errors`` and ``lock``: the modules that dispatch on a choice import it from here."""

from __future__ import annotations

from omegaconf import DictConfig

from ..errors import ConfigError, ConfigErrors
from . import rules
from .check import declared, leaf_problem, optional_keys, problems
from .schema import RESUMABLE_KEYS, SEED_MAX, BenchConfig, DistConfig, RunConfig
from .values import check_device, check_output_folder, output_error

__all__ = [
    "RESUMABLE_KEYS",
    "SEED_MAX",
    "BenchConfig",
    "RunConfig",
    "addable_keys",
    "check_device",
    "check_output_folder",
    "check_value",
    "output_error",
    "validate",
    "validate_bench",
    "validate_dist",
]


def _raise(lines: list[str]) -> None:
    """One error for one bad key (today's ``ConfigError``), ``ConfigErrors`` for several."""
    if len(lines) == 1:
        raise ConfigError(lines[0])
    if lines:
        raise ConfigErrors(lines)


def _validate(schema: type, cfg: DictConfig, checks) -> None:
    found = problems(schema, cfg)
    _raise([line for _, line in found if line] + rules.broken(cfg, {key for key, _ in found}, checks))


def validate(cfg: DictConfig) -> None:
    """A run's config (``conf/config.yaml`` composed): every key's type, range and choice, the
    rules between keys, the device; raises with one line per problem."""
    _validate(RunConfig, cfg, rules.RUN_RULES)


def validate_bench(cfg: DictConfig) -> None:
    """``python -m zobench.bench``'s config (``conf/bench.yaml``): its ``bench.*`` keys, the seeds,
    and the optimizer, model, engine and device checks of a run."""
    _validate(BenchConfig, cfg, rules.BENCH_RULES)


def validate_dist(cfg: DictConfig) -> None:
    """``dist.*`` alone: what a rank checks before it joins the process group (``dist.rundir``,
    from a Hydra callback that runs before the rest of the config is validated)."""
    if cfg.get("dist") is not None:
        _raise([line for _, line in problems(DistConfig, cfg, "dist.") if line])


def check_value(name: str, value, schema: type = RunConfig) -> None:
    """One key's value against its field (``model.dtype``, ``engine.mode``), for the code that is
    handed a value outside a composed config (the bench, the library API): the schema's rule and
    line, not a copy of them."""
    kind, meta = declared(schema, name)
    line = leaf_problem(name, value, kind, meta, None)
    if line:
        raise ConfigError(line)


def addable_keys() -> list[str]:
    """The keys a ``+key=value`` override may add to a run's config: the schema's optional fields
    (an optimizer's own keyword arguments aside: ``zobench.__main__``)."""
    return optional_keys(RunConfig)
