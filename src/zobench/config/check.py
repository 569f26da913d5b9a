"""Check a composed config against a schema (``schema.py``) in one pass: every bad key's one line.

The schema is read, not merged: the composed ``DictConfig`` keeps the YAMLs' values as Hydra
composed them (interpolations resolve on access), and each declared key is looked up and checked
against its field's type and metadata. Keys the schema does not declare are left alone (the
command line refuses unknown keys before Hydra starts: ``zobench.__main__``).
"""

from __future__ import annotations

import functools
import math
import types
import typing
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import Field, fields, is_dataclass
from typing import Any

from omegaconf import OmegaConf

from ..errors import ConfigError

_ABSENT = "__absent__"


def _kind(hint: Any) -> tuple[Any, bool]:  # Any: a type, or a dataclass of the schema
    """(the type a value must have, whether ``null`` is allowed too) of a field's annotation."""
    args: tuple[Any, ...] = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, hint is Any


@functools.cache
def _hints(schema: type) -> dict[str, Any]:
    return typing.get_type_hints(schema)


def problems(schema: type, cfg, prefix: str = "") -> list[tuple[str, str]]:
    """``(key, one line)`` for every declared key of ``cfg`` (the composed root config) that is
    missing or bad, in the schema's order; ``prefix``: where ``schema`` sits in ``cfg``. A key
    that only copies a bad key (``data.seed: ${seed}``) is bad with an empty line: said once."""
    found: list[tuple[str, str, Any]] = []
    _walk(schema, cfg, prefix, found)
    return [(name, line) for name, line, _ in found]


def _walk(schema: Any, cfg, prefix: str, found: list) -> None:
    hints = _hints(schema)
    for spec in fields(schema):
        name = f"{prefix}{spec.name}"
        kind, nullable = _kind(hints[spec.name])
        value = OmegaConf.select(cfg, name, throw_on_missing=False, default=_ABSENT)
        if is_dataclass(kind):  # a group: absent is fine only where it is optional (dist)
            if not (nullable and (value is _ABSENT or value is None)):
                _walk(kind, cfg, f"{name}.", found)
            continue
        if value is _ABSENT or (value is None and nullable):
            if value is _ABSENT and _required(spec):
                found.append((name, f"{name} is missing from the config", value))
            continue
        line = leaf_problem(name, value, kind, spec.metadata, cfg)
        if line is not None:  # a copy of a bad key stays bad (the rules skip it) but says nothing
            found.append((name, "" if _copies_a_bad_key(cfg, name, value, found) else line, value))


def _copies_a_bad_key(cfg, name: str, value: Any, found: list) -> bool:
    """Whether ``name`` is an interpolation whose value is that of a key already found bad."""
    parent, _, leaf = name.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not OmegaConf.is_interpolation(node, leaf):
        return False
    return any(type(bad) is type(value) and bad == value for _, _, bad in found)


def _required(spec: Field) -> bool:
    """A field without a default (omegaconf's ``MISSING``, ``???``): every config must set it."""
    return spec.default == "???" or (spec.default is NO_DEFAULT and spec.default_factory is NO_DEFAULT)


def leaf_problem(name: str, value: Any, kind: Any, meta, cfg) -> str | None:
    """The one line for ``name=value`` if it is not a ``kind`` within ``meta``'s bounds and choices."""
    if "choices" in meta:
        line = _choice(name, value, meta["choices"])
    elif kind is bool:
        line = None if isinstance(value, bool) else f"{name}={value!r}: expected true or false"
    elif kind is int:
        line = _integer(name, value, _bound(meta.get("min"), cfg), meta.get("max"))
    elif kind is float:
        line = _number(name, value, meta)
    elif kind is str:
        line = None if isinstance(value, str) else f"{name}={value!r}: expected {meta.get('expected', 'a string')}"
    else:
        line = None
    if line is None and "check" in meta:
        try:
            meta["check"](name, value)
        except ConfigError as err:
            line = str(err)
    return line


def _bound(bound, cfg):
    return bound(cfg) if callable(bound) else bound


def _show(choice: Any) -> str:
    return str(choice).lower() if isinstance(choice, bool) else str(choice)


def _choice(name: str, value: Any, choices) -> str | None:
    # by type too: 1 is not true, and "1" is not 1
    if any(type(value) is type(choice) and value == choice for choice in choices):
        return None
    return f"{name}={value!r}: allowed {', '.join(map(_show, choices))}"


def _integer(name: str, value: Any, minimum: int, maximum: int | None) -> str | None:
    wrong = isinstance(value, bool) or not isinstance(value, int) or value < minimum
    if not wrong and (maximum is None or value <= maximum):
        return None
    if maximum is None:
        return f"{name}={value!r}: expected an integer >= {minimum}"
    return f"{name}={value!r}: expected an integer in {minimum}..{maximum}"


def _number(name: str, value: Any, meta) -> str | None:
    """A finite number within ``min`` / ``above`` / ``below``: nan and inf are config errors, not a
    "divergence" later."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and "min" in meta:
        ok = value >= meta["min"]
    if ok and "above" in meta:
        ok = value > meta["above"]
    if ok and "below" in meta:
        ok = value < meta["below"]
    if ok:
        return None
    bound = f">= {meta['min']}" if "min" in meta else f"> {meta['above']}"
    return f"{name}={value!r}: expected {meta.get('expected', f'a finite number {bound}')}"


def declared(schema: type, name: str) -> tuple[Any, Any]:
    """(the type, the metadata) of the field ``name`` (dotted) of ``schema``."""
    head, _, rest = name.partition(".")
    spec = next(spec for spec in fields(schema) if spec.name == head)
    kind, _ = _kind(_hints(schema)[head])
    return declared(kind, rest) if rest else (kind, spec.metadata)


def optional_keys(schema: Any, prefix: str = "") -> list[str]:
    """The keys a config may lack and a ``+key=value`` override may add: the fields with a
    default, in groups that are not ``open`` (an open group's extra keys are its code's business)."""
    keys = []
    hints = _hints(schema)
    for spec in fields(schema):
        kind, _ = _kind(hints[spec.name])
        if is_dataclass(kind):
            if not spec.metadata.get("open"):
                keys.extend(optional_keys(kind, f"{prefix}{spec.name}."))
        elif not _required(spec):
            keys.append(f"{prefix}{spec.name}")
    return keys
