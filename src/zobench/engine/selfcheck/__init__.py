"""The start-up check of the Triton engine against the torch reference (``compare.py``: what is
compared and the tolerance), the engine a run builds with it and the description of what ran
(``choose.py``); the command that runs it alone is ``zobench.cli.selfcheck`` (``python -m
zobench.engine.selfcheck``)."""

from .choose import checked_engine, describe, device_of, label, wanted, warn_fallback
from .compare import (
    FEATURES,
    TOLERANCE,
    Case,
    EngineCheckError,
    Mismatch,
    Report,
    cases_for,
    run_check,
    slice_shape,
)

__all__ = [
    "FEATURES",
    "TOLERANCE",
    "Case",
    "EngineCheckError",
    "Mismatch",
    "Report",
    "cases_for",
    "checked_engine",
    "describe",
    "device_of",
    "label",
    "run_check",
    "slice_shape",
    "wanted",
    "warn_fallback",
]
