"""What one row of a task's data must hold, and the checked reader of a JSONL split: a bad line
(not UTF-8, not JSON, not an object, a field the task reads missing or wrong) is one error naming
``<file>:<line>``, before any model is loaded, or with ``data.on_bad_row=skip`` left out and
counted."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..config import check_value
from ..errors import ConfigError, DataNotFoundError
from .jsonl import follow_link_stub, lines, parse_line
from .spec import TaskSpec

log = logging.getLogger(__name__)


def _path_value(row: dict, path: str):
    value = row
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            raise KeyError(path)
        value = value[key]
    return value


def _list_of_strings(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def _label_problem(spec: TaskSpec, row: dict) -> str | None:
    """The class label is an integer index of a candidate, or one of ``skip_labels`` (not a bool,
    not 1.7, not "1")."""
    label = row.get(spec.label_field, "__absent__")  # type: ignore[arg-type]  # only called with a label field
    if label == "__absent__":
        return f"label field {spec.label_field!r} is missing"
    count = min(len(f.candidates) for f in spec.formats.values())
    integer = isinstance(label, int) and not isinstance(label, bool)
    if (integer and 0 <= label < count) or (integer and label in spec.skip_labels):
        return None
    skip = f" (or {', '.join(map(str, spec.skip_labels))}: no gold label, dropped)" if spec.skip_labels else ""
    return f"{spec.label_field}={json.dumps(label)}: task {spec.name} labels are the integers 0..{count - 1}{skip}"


def _answers_problem(spec: TaskSpec, row: dict) -> str | None:
    """Gold / reference answers and ReCoRD's candidates are non-empty lists of strings, and every
    gold answer is one of the candidate entities."""
    for path, what in (
        (spec.gold_field, "gold answers"),
        (spec.answers_field, "reference answers"),
        *((f.for_each, "candidates") for f in spec.formats.values() if f.for_each),
    ):
        if path is None:
            continue
        try:
            value = _path_value(row, path)
        except KeyError:
            return f"field {path!r} ({what}) is missing"
        if not _list_of_strings(value):
            return f"{path}={json.dumps(value)[:80]}: the {what} must be a non-empty list of strings"
    if spec.gold_field:  # ReCoRD: every gold answer is one of the candidate entities
        pool = _path_value(row, next(f.for_each for f in spec.formats.values() if f.for_each))
        missing = [a for a in _path_value(row, spec.gold_field) if a not in pool]
        if missing:
            return f"gold answers {missing[:3]} are not among the candidates ({spec.gold_field} vs the entities)"
    return None


def row_problem(spec: TaskSpec, row) -> str | None:
    """What is wrong with one parsed row for ``spec`` (None: nothing). Checks every field the
    task reads: the templates' fields (present, not null), the class label, the gold / reference
    answers (a non-empty list of strings) and ReCoRD's candidate list."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    missing = [f for f in spec.template_fields if row.get(f) is None]
    if missing:
        return f"field {missing[0]!r} is missing or null (task {spec.name} reads {', '.join(spec.template_fields)})"
    if spec.label_field:
        problem = _label_problem(spec, row)
        if problem:
            return problem
    return _answers_problem(spec, row)


def _existing(path: Path, what: str) -> Path:
    """``path`` (its link stub followed), or DataNotFoundError naming what is there instead."""
    if path.is_file():
        path = follow_link_stub(path)
    if not path.is_file():
        present = sorted(p.name for p in path.parent.glob("*.jsonl")) if path.parent.is_dir() else []
        raise DataNotFoundError(
            f"data.dir: {path} not found ({what}); present there: {', '.join(present) or 'nothing'}; "
            "point data.dir / ZOBENCH_DATA_DIR at a mirror that has it, or unset it to load from the "
            "Hugging Face hub"
        )
    return path


def _problem(spec: TaskSpec | None, raw: bytes, number: int) -> tuple[object, str | None]:
    """(parsed row, what is wrong with it or None)."""
    try:
        row = parse_line(raw, number)
    except ValueError as err:
        return None, str(err)
    if spec is not None:
        return row, row_problem(spec, row)
    return row, None if isinstance(row, dict) else f"expected a JSON object, got {type(row).__name__}"


def _warn_skipped(path: Path, bad: list[int], skipped: dict | None) -> None:
    log.warning(
        "%s: %d bad rows skipped (data.on_bad_row=skip), lines %s%s",
        path,
        len(bad),
        ", ".join(map(str, bad[:10])),
        " ..." if len(bad) > 10 else "",
    )
    if skipped is not None:
        skipped[str(path)] = len(bad)


def read_jsonl(
    path: Path, what: str, spec: TaskSpec | None = None, on_bad_row: str = "error", skipped: dict | None = None
) -> list[dict]:
    """Rows of a jsonl file; with ``spec``, each row is checked (``row_problem``) and rows whose
    label is in ``spec.skip_labels`` dropped. A bad line raises ``<file>:<line>: <what is wrong>``,
    or with ``on_bad_row="skip"`` is left out, counted in ``skipped[file]`` and warned about once
    per file."""
    path = _existing(path, what)
    check_value("data.on_bad_row", on_bad_row)  # the schema's choice and line
    rows, bad = [], []
    for number, raw in lines(path):
        row, problem = _problem(spec, raw, number)
        if problem is None:
            if spec is None or spec.keep(row):  # type: ignore[arg-type]  # a dict: no problem found
                rows.append(row)
        elif on_bad_row == "skip":
            bad.append(number)
        else:
            raise ConfigError(f"{path}:{number}: {problem} (data.on_bad_row=skip leaves bad rows out)")
    if bad:
        _warn_skipped(path, bad, skipped)
    return rows  # type: ignore[return-value]  # every kept row is a dict
