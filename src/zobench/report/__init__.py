"""``python -m zobench.report <run or sweep dirs> --table <name>``: run dirs → paper tables and plots.

Reads run dirs (``summary.json`` + ``config.yaml`` + ``metrics.jsonl``; never W&B), selects per
cell the best dev configuration as the papers did (``cells``), and writes, beside each other,
ours (test mean ± std over seeds), the published number and the difference, as Markdown, LaTeX
and CSV (``render``), plus PNG plots (``plots``). Tables are YAML files in ``report/tables/``
(``spec``). Re-running on the same run dirs gives byte-identical files.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .cells import compute_cells, query
from .plots import plot_curves, plot_memory
from .render import comparison_frame, to_csv, to_latex, to_markdown
from .runs import Runs, load_runs
from .spec import TableSpec, available_tables, load_table

__all__ = ["make_report", "load_runs", "load_table", "available_tables", "compute_cells", "table_runs"]


def table_runs(runs: Runs, spec: TableSpec) -> pd.DataFrame:
    """The runs a table uses: selected by the table, in its columns, matched by a row (``method`` added)."""
    selected = query(runs.frame, spec.select, f"table {spec.name}: select")
    if not selected.empty:
        if spec.column_key == "task":
            selected = selected[selected["task"].isin(spec.columns)]
        else:
            selected = selected[selected["model"].isin(spec.columns) & selected["task"].isin(spec.average_over)]
    parts = [
        query(selected, row.where, f"table {spec.name}: row {row.label!r}").assign(method=row.label)
        for row in spec.rows
        if row.where is not None
    ]
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts, ignore_index=True) if parts else selected.iloc[0:0].assign(method=[])


def make_report(
    roots: list[Path], table: str, out_dir: Path, command: str, smoke: bool = False, plots: bool = True
) -> dict[str, Path]:
    """Write ``<table>.md/.tex/.csv`` and the PNG plots into ``out_dir``; returns what was written.
    ``smoke``: the table's smoke variant (``<table>_smoke.*``), for the runs of its smoke experiment;
    ``plots=False``: the text files only (a check that need not draw)."""
    spec = load_table(table, smoke=smoke)
    runs = load_runs([Path(r) for r in roots])
    cells = compute_cells(runs.frame, spec)
    frame = comparison_frame(cells, spec)
    used = table_runs(runs, spec)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {
        "csv": out_dir / f"{spec.name}.csv",
        "md": out_dir / f"{spec.name}.md",
        "tex": out_dir / f"{spec.name}.tex",
    }
    written["csv"].write_text(to_csv(frame))
    written["md"].write_text(
        to_markdown(frame, spec, runs, used["run_dir"].nunique() if not used.empty else 0, command)
    )
    written["tex"].write_text(to_latex(frame, spec))
    if not plots:
        return written
    curves, memory = out_dir / f"{spec.name}_curves.png", out_dir / f"{spec.name}_memory.png"
    if plot_curves(cells, spec, curves):
        written["curves"] = curves
    if plot_memory(used, spec, memory):
        written["memory"] = memory
    return written
