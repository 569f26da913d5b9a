"""Cells → the comparison table (one line per cell: ours, published, difference) as CSV,
Markdown and LaTeX. Output is a pure function of the cells and the spec: no timestamps, no
absolute paths beyond those given, fixed number formats, so re-generation is byte-identical."""

from __future__ import annotations

import io

import pandas as pd

from .cells import Cell
from .runs import Runs
from .spec import TableSpec

DASH = "—"


def comparison_frame(cells: list[Cell], spec: TableSpec) -> pd.DataFrame:
    """Long format: one row per cell with ours (mean, std, seeds), published and ours − published."""
    rows = []
    for c in cells:
        published = spec.published_value(c.row, c.column)
        diff = c.mean - published if c.mean is not None and published is not None else None
        rows.append(
            {
                "method": c.row,
                "model": c.model if spec.column_key == "task" else spec.label(c.column),
                "task": spec.label(c.column) if spec.column_key == "task" else "avg",
                "ours": c.mean,
                "std": c.std,
                "seeds": c.seeds,
                "configs": c.configs,
                "published": published,
                "diff": diff,
                "dev": c.dev_mean,
                "selected": " ".join(f"{k}={_fmt_value(v)}" for k, v in c.selected.items()),
            }
        )
    return pd.DataFrame(
        rows,
        columns=["method", "model", "task", "ours", "std", "seeds", "configs", "published", "diff", "dev", "selected"],
    )


def to_csv(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, float_format="%.4f", lineterminator="\n")


def _fmt_value(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _num(value, signed: bool = False) -> str:
    if value is None or pd.isna(value):
        return DASH
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def _ours(row) -> str:
    if row["ours"] is None or pd.isna(row["ours"]):
        return DASH
    if row["seeds"] > 1 and row["std"] is not None and not pd.isna(row["std"]):
        return f"{row['ours']:.1f} ± {row['std']:.1f}"
    return f"{row['ours']:.1f}"


def display_frame(frame: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """The comparison with numbers formatted for reading (one decimal, — for missing)."""
    unit = "GiB" if spec.value == "peak_memory_gib" else "%"
    out = pd.DataFrame(
        {
            "method": frame["method"],
            "model": frame["model"],
            "task": frame["task"],
            f"ours ({unit})": [_ours(r) for _, r in frame.iterrows()],
            "seeds": [str(s) if s else DASH for s in frame["seeds"]],
            f"published ({'GB' if unit == 'GiB' else unit})": [_num(v) for v in frame["published"]],
            "ours − published": [_num(v, signed=True) for v in frame["diff"]],
        }
    )
    if spec.value == "test":  # the choice is worth showing only where there was one
        out["selected on dev"] = [s if s and n > 1 else DASH for s, n in zip(frame["selected"], frame["configs"])]
    if frame["model"].nunique() <= 1:  # one model (or none): it is in the title
        out = out.drop(columns="model")
    if spec.value == "peak_memory_gib" or (frame["task"] == "avg").all():
        out = out.drop(columns="task")
    return out


def to_markdown(frame: pd.DataFrame, spec: TableSpec, runs: Runs, used: int, command: str) -> str:
    shown = display_frame(frame, spec)
    lines = [f"# {spec.title}", ""]
    if spec.source:
        lines += [f"Published numbers: {spec.source}.", ""]
    lines += [_protocol(spec), "", f"Command: `{command}`", ""]
    lines.append("| " + " | ".join(shown.columns) + " |")
    lines.append("|" + "---|" * len(shown.columns))
    for _, row in shown.iterrows():
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |")
    lines += ["", _accounting(runs, used)]
    if spec.notes:
        lines += ["", spec.notes.strip()]
    return "\n".join(lines) + "\n"


def to_latex(frame: pd.DataFrame, spec: TableSpec) -> str:
    shown = display_frame(frame, spec).drop(columns=["selected on dev"], errors="ignore")
    shown = shown.map(_latex_escape)
    shown.columns = [_latex_escape(c) for c in shown.columns]
    buffer = io.StringIO()
    shown.to_latex(
        buffer,
        index=False,
        escape=False,
        column_format="l" * len(shown.columns),
        caption=_latex_escape(spec.title),
        label=f"tab:{spec.name}",
    )
    return buffer.getvalue()


def _latex_escape(text) -> str:
    text = str(text)
    for plain, latex in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("_", r"\_"),
        ("#", r"\#"),
        ("±", r"$\pm$"),
        ("—", "--"),
        ("−", "-"),
    ):
        text = text.replace(plain, latex)
    return text


def _protocol(spec: TableSpec) -> str:
    if spec.value == "peak_memory_gib":
        return "Ours: the largest peak memory (`peak_memory_bytes`) over the cell's runs, in GiB."
    searched = ", ".join(f"`{k}`" for k in spec.search) or "nothing"
    return (
        "Ours: per cell, the configuration with the best mean dev score over seeds "
        f"(searched: {searched}; ties go to the first in ascending order), reported as test mean ± std "
        "over its seeds (population std; the mean alone for one seed), in %. "
        "Test scores never take part in the choice."
    )


def _accounting(runs: Runs, used: int) -> str:
    text = f"Runs: {len(runs.frame)} completed run dirs read, {used} in this table; {len(runs.skipped)} skipped"
    if runs.skipped:
        reasons: dict[str, int] = {}
        for _, reason in runs.skipped:
            reasons[reason] = reasons.get(reason, 0) + 1
        text += " (" + ", ".join(f"{n}: {r}" for r, n in sorted(reasons.items())) + ")"
    return text + "."
