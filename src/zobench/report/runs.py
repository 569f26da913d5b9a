"""Run dirs → one pandas DataFrame (one row per completed run).

A run dir is any folder holding a ``config.yaml`` written by ``python -m zobench`` (docs/design.md,
"Run directory"). Its row joins ``summary.json`` (task, model, optimizer, tuning, seed, metrics,
memory, status) with the resolved config flattened to dotted keys (``optimizer.lr``,
``train.steps``, ``data.num_train`` ...), so a table can select and group on any of them.

The task metric is whatever ``test_<metric>`` the summary holds (``accuracy``, ``f1`` ...); it is
copied into the uniform columns ``metric``, ``dev_score`` and ``test_score`` so tables can mix
tasks with different metrics. Runs without ``summary.json`` (still running, killed) or whose status
is not ``completed`` are not rows: they are returned as ``skipped`` with the reason, so the report
can say how many it left out.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml
from omegaconf import OmegaConf

from ..errors import ConfigError, DataNotFoundError
from .files import read_json_object, read_jsonl, read_yaml_mapping

# summary keys that are not task metrics although they start with dev_/test_
_NOT_METRICS = {"test_examples", "dev_examples"}


@dataclass
class Runs:
    """Completed runs (``frame``, sorted by run dir) and the run dirs left out, with why."""

    frame: pd.DataFrame
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (run dir, reason), sorted


def find_run_dirs(roots: list[Path]) -> list[Path]:
    """Every folder under ``roots`` (the roots included) holding a config.yaml or summary.json.

    Hydra's own ``.hydra/config.yaml`` and folders under a ``checkpoint/`` are not run dirs."""
    found: set[Path] = set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise DataNotFoundError(f"{root}: no such directory (expected a run dir or a sweep dir of run dirs)")
        for name in ("config.yaml", "summary.json"):
            for path in root.rglob(name):
                parts = path.relative_to(root).parts[:-1]
                if not any(p in (".hydra", "checkpoint", "wandb", ".submitit") for p in parts):
                    found.add(path.parent)
    return sorted(found)


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists are kept as tuples (hashable, comparable)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


def metric_name(summary: dict) -> str | None:
    """The task metric of a run: the ``<m>`` of its non-null ``test_<m>`` summary key."""
    names = sorted(
        k[len("test_") :]
        for k, v in summary.items()
        if k.startswith("test_") and k not in _NOT_METRICS and isinstance(v, (int, float))
    )
    return names[0] if names else None


# config keys added after runs were first written, with the meaning they had before they existed
# (a run dir from an older zobench did zero-shot without demonstrations, sampled data MeZO's way, ...)
KEYS_ADDED_LATER = {"icl.demos": 0, "objective": "loss", "data.protocol": "mezo", "data.k": 16}


def _config_loader() -> type | None:
    """OmegaConf's YAML rules (``1e-5`` is a float, no timestamps) on libyaml's C parser when
    there is one: a config.yaml is read as OmegaConf reads it, ~10x faster than building its node
    tree (a table reads hundreds). None: OmegaConf's private helper moved; OmegaConf.load is used."""
    try:
        from omegaconf._utils import get_yaml_loader
    except ImportError:
        return None
    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return type("ConfigLoader", (base,), {"yaml_implicit_resolvers": get_yaml_loader().yaml_implicit_resolvers})


_CONFIG_LOADER = _config_loader()


def load_config(path: Path) -> dict:
    """A run's resolved config.yaml as a plain dict, its values typed as OmegaConf types them
    (a file that is not a YAML mapping: ConfigError naming it)."""
    if _CONFIG_LOADER is None:
        return OmegaConf.to_container(OmegaConf.create(read_yaml_mapping(path)))  # type: ignore[return-value]  # a mapping
    return read_yaml_mapping(path, loader=_CONFIG_LOADER)


def read_run(run_dir: Path) -> tuple[dict | None, str | None]:
    """One run dir → (row, None) when completed, else (None, reason it is left out): unfinished,
    not completed, or a summary.json / config.yaml that cannot be read (the reason names it)."""
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        return None, "no summary.json (unfinished or killed)"
    try:
        summary = read_json_object(summary_path)
        if summary.get("status") != "completed":
            return None, f"status {summary.get('status')}"
        config_path = run_dir / "config.yaml"
        config = load_config(config_path) if config_path.is_file() else {}
    except ConfigError as err:
        return None, str(err)
    row = {**KEYS_ADDED_LATER, **flatten(config or {})}
    # the summary wins over the config for the shared names (task/model/... are strings there)
    row.update({k: v for k, v in summary.items() if not isinstance(v, dict)})
    metric = metric_name(summary)
    if metric is None:
        return None, "summary.json has no test metric"
    row.update(
        metric=metric,
        dev_score=summary.get(f"dev_{metric}"),
        test_score=summary[f"test_{metric}"],
        run_dir=str(run_dir),
    )
    return row, None


def load_runs(roots: list[Path]) -> Runs:
    """Read every run dir under ``roots``; raises DataNotFoundError when there is none at all."""
    run_dirs = find_run_dirs(roots)
    if not run_dirs:
        raise DataNotFoundError(
            f"{', '.join(map(str, roots))}: no run dirs found (a run dir holds config.yaml "
            "and, once finished, summary.json)"
        )
    rows: list[dict] = []
    skipped: list[tuple[str, str]] = []
    for run_dir in run_dirs:
        row, reason = read_run(run_dir)
        if row is None:
            skipped.append((str(run_dir), reason or "unreadable"))
        else:
            rows.append(row)
    if skipped:
        warnings.warn(
            f"{len(skipped)} of {len(run_dirs)} run dirs skipped: "
            + "; ".join(f"{d} ({r})" for d, r in skipped[:5])
            + ("; ..." if len(skipped) > 5 else ""),
            stacklevel=2,
        )
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values("run_dir", kind="stable").reset_index(drop=True)
    return Runs(frame, skipped)


def read_curve(run_dir: str, split: str = "dev") -> pd.DataFrame:
    """Eval events of one split from ``metrics.jsonl``: columns ``forward_passes`` and ``score``."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    if path.is_file():  # a run row: its summary.json was read whole (read_run)
        metric = metric_name(read_json_object(Path(run_dir) / "summary.json"))
        for event in read_jsonl(path, strict=False):  # a bad line: a warning naming it, the curve before it
            if event.get("event") == "eval" and event.get("split") == split and metric in event:
                rows.append({"forward_passes": event.get("forward_passes"), "score": event[metric]})
    return pd.DataFrame(rows, columns=["forward_passes", "score"])
