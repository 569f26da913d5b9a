"""PNG plots of a table's runs (matplotlib, Agg backend, no metadata: byte-identical re-runs).

* ``curves.png``: dev metric vs training forward passes, one panel per column (task), one line
  per method (and model): the selected configuration's dev evaluations (``metrics.jsonl`` eval
  events), averaged over its seeds at each forward-pass count. Forward passes, not steps, are the
  x axis because methods spend different numbers of passes per step (MeZO 2, HiZOO 3, FZOO N+1).
* ``memory.png``: peak memory per method and model (largest ``peak_memory_bytes`` over the
  method's runs in the table), with the inference-only peak of the same batch as a reference.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed (clusters, CI)
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .cells import GIB, Cell  # noqa: E402
from .runs import read_curve  # noqa: E402
from .spec import TableSpec  # noqa: E402

_SAVE: dict = {"dpi": 100, "metadata": {"Software": None}}  # no version string: the bytes depend on the data only


def _line_label(cell: Cell, several_models: bool) -> str:
    return f"{cell.row} ({cell.model})" if several_models else cell.row


def plot_curves(cells: list[Cell], spec: TableSpec, path: Path) -> bool:
    """Write ``path``; False (no file) when no cell has dev evaluations."""
    columns = [c for c in spec.columns if any(cell.column == c and cell.run_dirs for cell in cells)]
    if spec.column_key != "task" or not columns:
        return False
    several_models = len({c.model for c in cells if c.run_dirs}) > 1
    with plt.style.context("default"):
        fig, axes = plt.subplots(1, len(columns), figsize=(4 * len(columns), 3.2), squeeze=False)
        drawn = False
        for ax, column in zip(axes[0], columns):
            for cell in (c for c in cells if c.column == column and c.run_dirs):
                curves = [read_curve(d) for d in cell.run_dirs]
                curve = pd.concat(curves).groupby("forward_passes", sort=True)["score"].mean() if curves else None
                if curve is None or curve.empty:
                    continue
                ax.plot(curve.index, curve.to_numpy() * 100, marker="o", label=_line_label(cell, several_models))
                drawn = True
            ax.set_title(spec.label(column))
            ax.set_xlabel("training forward passes")
            ax.set_ylabel("dev metric (%)")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize="small")
        fig.tight_layout()
        if drawn:
            fig.savefig(path, **_SAVE)
        plt.close(fig)
    return drawn


def plot_memory(frame: pd.DataFrame, spec: TableSpec, path: Path) -> bool:
    """``frame``: the runs of the table (one row per run, with ``method`` added)."""
    if frame.empty or "peak_memory_bytes" not in frame:
        return False
    order = {r.label: i for i, r in enumerate(spec.rows)}
    peaks = (
        frame.groupby(["method", "model"], sort=False)
        .agg(peak=("peak_memory_bytes", "max"), inference=("inference_peak_memory_bytes", "max"))
        .reset_index()
    )
    peaks["order"] = peaks["method"].map(order)
    peaks = peaks.sort_values(["model", "order"], kind="stable").reset_index(drop=True)
    labels = [f"{m} ({model})" for m, model in zip(peaks["method"], peaks["model"])]
    with plt.style.context("default"):
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(peaks) + 1.2))
        y = range(len(peaks))
        ax.barh(list(y), peaks["peak"] / GIB, label="training step peak")
        ax.scatter(
            peaks["inference"] / GIB,
            list(y),
            color="black",
            marker="|",
            s=200,
            zorder=3,
            label="inference-only peak (same batch)",
        )
        ax.set_yticks(list(y), labels)
        ax.invert_yaxis()
        ax.set_xlabel("peak memory (GiB)")
        ax.set_title(f"{spec.title}: peak memory")
        ax.legend(fontsize="small", loc="lower right")
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, **_SAVE)
        plt.close(fig)
    return True
