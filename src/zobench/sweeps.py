"""Where a run lands, and what a sweep says when it ends.

* ``hydra.sweep.dir`` is ``multirun/<experiment>`` for a paper-table sweep (``experiment=...``)
  and ``multirun/<time>`` otherwise; ``hydra.sweep.subdir`` names each run by its overrides
  (Hydra's ``hydra.job.override_dirname``: ``key=value`` joined by ``,``, sorted, the keys of
  ``hydra.job.config.override_dirname.exclude_keys`` left out), so
  ``python -m zobench -m optimizer.lr=1e-5,3e-5 seed=0,1`` writes ``multirun/<time>/optimizer.lr=1e-5,seed=0/``
  and an experiment's grid ``multirun/mezo_table1/lr_step=high,task=rte,tuning=full/``.
  Both are resolvers (``zobench.sweep_name``, ``zobench.dirname``), registered when this module
  is imported, i.e. before Hydra composes (``python -m zobench`` imports it, and so does every
  Slurm job, which unpickles ``zobench.__main__._app``). They are plain functions of config
  values, not of ``HydraConfig`` (which is not set yet when the launcher makes the sweep dir).
* :class:`SweepSummary`, a Hydra callback (``hydra.callbacks`` in conf/config.yaml), prints one
  table of the sweep's run dirs (status, dev/test metric, forward passes, dir) and the report
  command when a multirun ends.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .resources import conf_dir

# longest folder name kept as is (file systems allow 255 bytes); longer ones are cut and hashed
MAX_NAME = 160


def sweep_name(experiment, time: str) -> str:
    """``multirun/<this>``: the experiment's name (its runs accumulate there across invocations,
    so a table can be rebuilt from one place), or the sweep's start time for ad-hoc sweeps."""
    return str(experiment) if experiment not in (None, "", "null") else str(time)


def dirname(overrides: str, num) -> str:
    """One run's folder from Hydra's override_dirname: ``/`` (a path value) becomes ``_`` so a value
    never nests folders; a name too long for a file system is cut and suffixed with its hash; no
    overrides at all (``python -m zobench -m``) gives the job number."""
    name = str(overrides or "").replace("/", "_").strip(".") or str(num)
    if len(name.encode()) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = name.encode()[: MAX_NAME - 11].decode(errors="ignore") + "-" + digest
    return name


def register_resolvers() -> None:
    for name, fn in (("zobench.sweep_name", sweep_name), ("zobench.dirname", dirname)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()


def report_command(experiment: str | None, sweep_dir: str) -> str:
    """The ``python -m zobench.report`` line of the experiment file's header (the command that
    makes its table), else the generic one for ``sweep_dir``."""
    if experiment:
        path = conf_dir() / "experiment" / f"{experiment}.yaml"
        if path.is_file():
            for line in path.read_text().splitlines():
                found = re.search(r"python -m zobench\.report .*", line) if line.startswith("#") else None
                if found:  # the header names the default sweep dir; this sweep may have another
                    return re.sub(rf"multirun/{re.escape(experiment)}(?=\s|$)", sweep_dir, found.group(0).strip())
    return f"python -m zobench.report {sweep_dir} --table <table> (tables: src/zobench/report/tables/)"


def _metric(summary: dict, split: str) -> str:
    metric = summary.get("metric")
    value = summary.get(f"{split}_{metric}") if metric else None
    return f"{metric} {value:.4f}" if isinstance(value, (int, float)) else "-"


def _run_dirs(sweep_dir: Path) -> list[Path]:
    """Folders under ``sweep_dir`` holding a run's config.yaml (report.runs.find_run_dirs' rule,
    without importing the report's plotting stack at the end of every sweep)."""
    skip = {".hydra", "checkpoint", "wandb", ".submitit", "best", "final"}
    found = {p.parent for p in sweep_dir.rglob("config.yaml") if not skip & set(p.relative_to(sweep_dir).parts[:-1])}
    return sorted(found)


def summary_table(sweep_dir: Path) -> list[str]:
    """One line per run dir under ``sweep_dir``: status, best dev, test, training forward passes, dir."""
    rows = [("status", "best dev", "test", "passes", "run dir")]
    for run_dir in _run_dirs(sweep_dir):
        path = run_dir / "summary.json"
        try:
            summary = json.loads(path.read_text()) if path.is_file() else {"status": "unfinished"}
        except (OSError, ValueError):
            summary = {"status": "unreadable"}
        if not isinstance(summary, dict):  # damaged from outside: named as such, not a crash at the sweep's end
            summary = {"status": "unreadable"}
        rows.append(
            (
                str(summary.get("status")),
                _metric(summary, "dev"),
                _metric(summary, "test"),
                str(summary.get("forward_passes", "-")),
                str(run_dir),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4] for row in rows]


class SweepSummary(Callback):
    """At the end of a multirun: the table of its run dirs and the command that reports them."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        experiment = OmegaConf.select(config, "hydra.runtime.choices.experiment")
        lines = summary_table(sweep_dir)
        print(f"zobench: sweep {sweep_dir}: {len(lines) - 1} run dirs", flush=True)
        for line in lines:
            print("  " + line)
        print(f"tables: {report_command(experiment, str(sweep_dir))}", flush=True)
