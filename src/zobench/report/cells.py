"""Paper cells from runs: best dev configuration per cell, test mean ± std over seeds.

The protocol of MeZO (Malladi et al. 2023, §E / Table 1 and 18) and of LM-BFF (Gao et al. 2021),
which MeZO follows for RoBERTa: for each (method, model, task) cell, the runs are grouped by the
hyperparameters that were searched (``search`` keys of the table, e.g. ``optimizer.lr``); a
configuration's score is its mean dev metric over the seeds it was run with, the configuration
with the highest mean dev score is selected, and the cell reports that configuration's test
metric as mean ± std over its seeds. Test numbers never influence the choice.

* std is the population standard deviation (``ddof=0``, numpy's default, as LM-BFF's
  ``np.std``); with one seed it is 0 and the report shows the mean alone.
* Ties in mean dev go to the configuration that sorts first by the search keys (ascending, e.g.
  the smaller learning rate), so the choice is deterministic and stated.
* ``value: peak_memory_gib`` cells hold the largest ``peak_memory_bytes`` over the cell's runs,
  in GiB (no selection: memory does not depend on the learning rate).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import ConfigError
from .spec import TableSpec

GIB = 2**30


@dataclass
class Cell:
    """One cell of a table: what we measured, with the configuration it comes from."""

    row: str
    model: str
    column: str
    mean: float | None = None  # test metric in % (or GiB)
    std: float | None = None
    seeds: int = 0
    configs: int = 0  # configurations compared on dev
    dev_mean: float | None = None
    selected: dict = field(default_factory=dict)
    run_dirs: tuple[str, ...] = ()


def query(frame: pd.DataFrame, expression: str | None, what: str) -> pd.DataFrame:
    """``frame.query(expression)``; a key no run has matches nothing (with a warning)."""
    if not expression or frame.empty:
        return frame
    try:
        return frame.query(expression)
    except pd.errors.UndefinedVariableError as err:
        warnings.warn(f"{what}: {err}; no run has that key, so nothing matches", stacklevel=2)
        return frame.iloc[0:0]
    except (SyntaxError, ValueError, TypeError) as err:
        raise ConfigError(f"{what}: cannot evaluate query {expression!r} ({type(err).__name__}: {err})") from err


def best_dev(runs: pd.DataFrame, search: tuple[str, ...]) -> tuple[pd.DataFrame, dict, int, float | None]:
    """The runs of the configuration with the best mean dev score (ties: first by search keys).

    Returns (its runs, its search-key values, number of configurations, its mean dev score)."""
    keys = [k for k in search if k in runs.columns]
    if not keys:
        dev = runs["dev_score"].mean()
        return runs, {}, 1, (None if pd.isna(dev) else float(dev))
    grouped = runs.groupby(keys, dropna=False, sort=True)
    scores = grouped["dev_score"].mean()
    # -inf for configurations without a dev score: they can only win when nothing has one
    order = scores.fillna(-math.inf)
    best_key = order.index[int(np.argmax(order.to_numpy()))]  # argmax takes the first maximum
    best_key = best_key if isinstance(best_key, tuple) else (best_key,)
    chosen = runs
    for key, value in zip(keys, best_key):
        chosen = chosen[chosen[key].isna()] if _isnan(value) else chosen[chosen[key] == value]
    dev = scores.iloc[int(np.argmax(order.to_numpy()))]
    return chosen, dict(zip(keys, best_key)), len(scores), (None if pd.isna(dev) else float(dev))


def _isnan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def compute_cells(frame: pd.DataFrame, spec: TableSpec) -> list[Cell]:
    """Every (row, model, column) cell of ``spec`` with data, plus empty cells for the rest.

    Models are those of the runs the table selects (one per row block); a table pinned to one
    model by its ``select`` has one. Empty cells (no run) keep ``mean=None``."""
    table_runs = query(frame, spec.select, f"table {spec.name}: select")
    models = sorted(table_runs["model"].dropna().unique()) if "model" in table_runs else []
    cells = []
    for row in spec.rows:
        row_runs = (
            table_runs.iloc[0:0]
            if row.where is None
            else query(table_runs, row.where, f"table {spec.name}: row {row.label!r}")
        )
        # a model block per model the row ran on; rows without runs keep one block (published numbers)
        present = [m for m in models if "model" in row_runs and (row_runs["model"] == m).any()]
        for model in present or (models if len(models) == 1 else ["—"]):
            model_runs = row_runs[row_runs["model"] == model] if "model" in row_runs else row_runs
            if spec.column_key == "task":
                for column in spec.columns:
                    cells.append(
                        _cell(
                            spec,
                            row.label,
                            model,
                            column,
                            model_runs[model_runs["task"] == column] if "task" in model_runs else model_runs,
                        )
                    )
                if spec.average_column:
                    cells.append(_average(row.label, model, "avg", cells[-len(spec.columns) :]))
            else:  # columns are models; a cell averages the tasks in average_over
                if model not in spec.columns:
                    continue
                per_task = [
                    _cell(spec, row.label, model, task, model_runs[model_runs["task"] == task])
                    for task in spec.average_over
                ]
                cells.append(_average(row.label, "—", model, per_task))
    if spec.column_key == "model":  # columns nobody ran still get their (empty) cell
        have = {(c.row, c.column) for c in cells}
        cells += [Cell(r.label, "—", c) for r in spec.rows for c in spec.columns if (r.label, c) not in have]
        order = {c: i for i, c in enumerate(spec.columns)}
        rows = {r.label: i for i, r in enumerate(spec.rows)}
        cells.sort(key=lambda c: (rows[c.row], order[c.column]))
    return cells


def _cell(spec: TableSpec, row: str, model: str, column: str, runs: pd.DataFrame) -> Cell:
    cell = Cell(row, model, column)
    if runs.empty:
        return cell
    if spec.value == "peak_memory_gib":
        cell.mean = float(runs["peak_memory_bytes"].max()) / GIB
        cell.seeds, cell.run_dirs = len(runs), tuple(sorted(runs["run_dir"]))
        return cell
    chosen, selected, configs, dev = best_dev(runs, spec.search)
    scores = chosen["test_score"].astype(float).to_numpy() * 100
    cell.mean, cell.std = float(scores.mean()), float(scores.std(ddof=0))
    cell.seeds, cell.configs, cell.dev_mean = len(scores), configs, (None if dev is None else dev * 100)
    cell.selected = {k: _plain(v) for k, v in selected.items()}
    cell.run_dirs = tuple(sorted(chosen["run_dir"]))
    return cell


def _average(row: str, model: str, column: str, parts: list[Cell]) -> Cell:
    """The mean of ``parts``' means, only when every part has one (a partial average misleads)."""
    cell = Cell(row, model, column, configs=sum(p.configs for p in parts))
    if parts and all(p.mean is not None for p in parts):
        cell.mean = float(np.mean([p.mean for p in parts]))
        cell.seeds = min(p.seeds for p in parts)
        cell.run_dirs = tuple(sorted(d for p in parts for d in p.run_dirs))
    return cell


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value
