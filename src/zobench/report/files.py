"""Reading the files a report is made from (``summary.json``, ``config.yaml``, ``metrics.jsonl``,
benchmark JSON, ``report.yaml`` and table YAML): a file that is not what it should be (cut short,
ending in garbage, a list where an object belongs) is a ``ConfigError`` naming the file (and the
line), never a traceback. Who reads decides what follows: ``python -m zobench.report`` leaves the
run out with a warning line and goes on (``zobench.report.runs``); ``regenerate``, whose inputs
are committed, stops with the one line (a check cannot vouch for a file made from a damaged one).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import yaml

from ..errors import ConfigError


def _what(value) -> str:
    return f"a JSON {type(value).__name__}" if value is not None else "null"


def read_json_object(path: Path) -> dict:
    """``path``'s JSON object; unreadable, not JSON, or another JSON value: ConfigError."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: unreadable ({err})") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a JSON object, found {_what(value)}")
    return value


def read_jsonl(path: Path, strict: bool = True) -> list[dict]:
    """The events of ``path``, one JSON object per line (blank lines skipped). A bad line: with
    ``strict``, ConfigError naming ``path:line``; else a warning naming it, and the events before
    it (a run killed mid-write leaves a torn last line; what came before it is whole)."""
    path = Path(path)
    events = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as err:
        raise ConfigError(f"{path}: unreadable ({err})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as err:
            problem = f"{path}:{number}: not a JSON object ({err.msg})"
        else:
            if isinstance(event, dict):
                events.append(event)
                continue
            problem = f"{path}:{number}: expected a JSON object, found {_what(event)}"
        if strict:
            raise ConfigError(problem)
        warnings.warn(f"{problem}; its events from there on are left out", stacklevel=2)
        break
    return events


def read_yaml_mapping(path: Path, loader=None) -> dict:
    """``path``'s YAML mapping (an empty file: {}); not YAML or not a mapping: ConfigError."""
    path = Path(path)
    try:
        text = path.read_text()
        value = yaml.load(text, Loader=loader) if loader is not None else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: unreadable ({err})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a YAML mapping, found a {type(value).__name__}")
    return value
