"""Which keys two resolved configs differ in: a resume under another config, a rerun of a
completed run dir (``run.py``) and ranks started with different overrides (``dist/rundir.py``)
are refused with one line naming them."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from omegaconf import OmegaConf

from .errors import CheckpointError


def flat(cfg: dict, prefix: str = "") -> dict:
    """``{"a.b": value}`` for a nested config container."""
    out: dict = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        out.update(flat(value, name + ".") if isinstance(value, dict) else {name: value})
    return out


def changed_keys(saved: dict, now: dict, exempt) -> list[str]:
    """The dotted keys whose values differ between two config containers, bar ``exempt`` ones
    (a key or any key under it); sorted."""
    saved, now = flat(saved), flat(now)
    return sorted(
        k
        for k in set(saved) | set(now)
        if saved.get(k) != now.get(k) and not any(k == r or k.startswith(r + ".") for r in exempt)
    )


def differences(config: dict, saved_path: Path, exempt, what: str) -> str:
    """``key: old -> new`` of the keys in which ``config`` differs from ``saved_path`` (config.yaml
    of the run dir), at most five; "" when they agree. ``what``: the file the saved config vouches
    for (``checkpoint``, ``summary.json``), named when config.yaml is missing."""
    if not saved_path.is_file():
        raise CheckpointError(
            f"{saved_path.parent / what} has no config.yaml beside it; cannot tell which config it belongs to"
        )
    saved = cast(dict, OmegaConf.to_container(OmegaConf.load(saved_path)))
    changed = changed_keys(saved, config, exempt)
    flat_saved, flat_now = flat(saved), flat(config)
    more = f", and {len(changed) - 5} more" if len(changed) > 5 else ""
    return ", ".join(f"{k}: {flat_saved.get(k)!r} -> {flat_now.get(k)!r}" for k in changed[:5]) + more
