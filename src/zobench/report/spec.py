"""Table definitions: one YAML per paper table under ``zobench/report/tables/``.

A table says which runs it reads (``select``, a pandas query over the run columns), its rows
(methods: a label and a query each), its columns (task names, or model names for tables of
task averages), the hyperparameter keys that were searched (the best dev configuration is picked
over them, per cell), what a cell holds (``value``: ``test`` = the best-dev configuration's test
metric in %, or ``peak_memory_gib``), and the published numbers, transcribed from the paper
(row label → column → number; ``null`` where the paper has none).

A row whose ``where`` is ``null`` is a method zobench does not run (ICL, linear probing): its
published numbers are shown, its cells stay empty.

Queries are pandas ``DataFrame.query`` strings; dotted config keys are written in backticks::

    where: "optimizer == 'mezo' and tuning == 'full' and `train.steps` > 0"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..errors import ConfigError
from .files import read_yaml_mapping

VALUES = ("test", "peak_memory_gib")
COLUMN_KEYS = ("task", "model")
_KEYS = {
    "name",
    "title",
    "source",
    "notes",
    "select",
    "value",
    "column_key",
    "columns",
    "column_labels",
    "average_over",
    "average_column",
    "search",
    "rows",
    "published",
    "smoke",
}
# what a table's ``smoke`` block may replace: the smoke runs use small models and the tasks the
# local mirror can train on (conf/experiment/*_smoke.yaml), so their selection differs
_SMOKE_KEYS = {"title", "select", "columns", "average_over", "notes"}


@dataclass(frozen=True)
class Row:
    label: str
    where: str | None  # None: a method zobench does not run (published numbers only)


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    rows: tuple[Row, ...]
    columns: tuple[str, ...]
    search: tuple[str, ...] = ()
    source: str = ""
    notes: str = ""
    select: str | None = None
    value: str = "test"
    column_key: str = "task"
    column_labels: dict = field(default_factory=dict)
    average_over: tuple[str, ...] = ()  # column_key=model: each cell averages these tasks
    average_column: bool = False  # column_key=task: add an "avg" column over the columns
    published: dict = field(default_factory=dict)

    def label(self, column: str) -> str:
        return self.column_labels.get(column, column)

    def published_value(self, row: str, column: str) -> float | None:
        return (self.published.get(row) or {}).get(column)


def tables_dir() -> Path:
    return Path(str(resources.files("zobench.report") / "tables"))


def available_tables() -> list[str]:
    return sorted(p.stem for p in tables_dir().glob("*.yaml"))


def load_table(name_or_path: str, smoke: bool = False) -> TableSpec:
    """A shipped table by name (``mezo_table1``) or a table YAML by path; ``smoke``: its smoke
    variant (the ``smoke`` block's keys replace the table's; published cells of dropped columns go)."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = tables_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"--table {name_or_path}: no such table; allowed: {', '.join(available_tables())} "
                "or a path to a table YAML"
            )
    elif not path.is_file():
        raise ConfigError(f"--table {name_or_path}: no such file")
    raw = read_yaml_mapping(path)
    return parse_table(smoke_variant(raw, str(path)) if smoke else raw, where=str(path))


def smoke_variant(raw: dict, where: str) -> dict:
    """The table as its smoke runs fill it: ``raw`` with its ``smoke`` block applied."""
    block = raw.get("smoke")
    if not isinstance(block, dict) or not block:
        raise ConfigError(f"{where}: --smoke needs a `smoke` block (keys {', '.join(sorted(_SMOKE_KEYS))})")
    unknown = sorted(set(block) - _SMOKE_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: smoke: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_SMOKE_KEYS))}"
        )
    out = {k: v for k, v in raw.items() if k != "smoke"}
    out.update(block, name=f"{raw.get('name')}_smoke")
    columns = set(map(str, out.get("columns") or ())) | {"avg"}
    out["published"] = {
        row: {c: v for c, v in cells.items() if str(c) in columns}
        for row, cells in (raw.get("published") or {}).items()
    }
    return out


def parse_table(raw: dict, where: str = "<table>") -> TableSpec:
    """Check a table YAML and build its spec; every error names the file and the bad key."""
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_KEYS))}")
    for key in ("name", "title", "rows", "columns"):
        if not raw.get(key):
            raise ConfigError(f"{where}: `{key}` is required")
    if raw.get("value", "test") not in VALUES:
        raise ConfigError(f"{where}: value={raw['value']!r}; allowed: {', '.join(VALUES)}")
    if raw.get("column_key", "task") not in COLUMN_KEYS:
        raise ConfigError(f"{where}: column_key={raw['column_key']!r}; allowed: {', '.join(COLUMN_KEYS)}")
    rows = []
    for i, row in enumerate(raw["rows"]):
        if not isinstance(row, dict) or set(row) != {"label", "where"}:
            raise ConfigError(f"{where}: rows[{i}] must have exactly the keys label and where, got {row!r}")
        rows.append(Row(str(row["label"]), None if row["where"] is None else str(row["where"])))
    labels = [r.label for r in rows]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{where}: row labels must be unique, got {labels}")
    columns = tuple(str(c) for c in raw["columns"])
    published = raw.get("published") or {}
    for label, cells in published.items():
        if label not in labels:
            raise ConfigError(f"{where}: published[{label!r}] names no row; rows: {', '.join(labels)}")
        extra = sorted(set(cells) - set(columns) - {"avg"})
        if extra:
            raise ConfigError(f"{where}: published[{label!r}] has column(s) {', '.join(extra)} not in columns")
    return TableSpec(
        name=str(raw["name"]),
        title=str(raw["title"]),
        rows=tuple(rows),
        columns=columns,
        search=tuple(raw.get("search") or ()),
        source=str(raw.get("source", "")),
        notes=str(raw.get("notes", "")),
        select=raw.get("select"),
        value=raw.get("value", "test"),
        column_key=raw.get("column_key", "task"),
        column_labels=dict(raw.get("column_labels") or {}),
        average_over=tuple(raw.get("average_over") or ()),
        average_column=bool(raw.get("average_column", False)),
        published=published,
    )
