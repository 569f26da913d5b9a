"""What a run builds: the engine ``engine.backend`` asks for, checked (``compare.py``) when
``engine.self_check`` wants it, with ``engine=auto``'s fallback to torch; and the description of the
engine that runs (summary.json ``engine_used``, the closing line, W&B's config)."""

from __future__ import annotations

import logging
import sys

import torch
from torch import nn

from ...errors import ConfigError
from .compare import CHECK_CHOICES, EngineCheckError, cases_for, run_check

log = logging.getLogger("zobench.engine.selfcheck")


def wanted(setting, engine, model: nn.Module | None) -> bool:
    """Whether ``engine.self_check`` asks for the check of ``engine``: a Triton engine, and
    ``true`` or ``auto`` on a CUDA model (``false``: never)."""
    from ..triton.engines import TritonProvider

    if setting not in CHECK_CHOICES:
        raise ConfigError(f"engine.self_check={setting!r}: allowed auto, true, false")
    if setting is False or not isinstance(getattr(engine, "provider", None), TritonProvider):
        return False
    param = next(model.parameters(), None) if model is not None else None
    return setting is True or (param is not None and param.device.type == "cuda")


def device_of(model: nn.Module | None) -> torch.device:
    param = next(model.parameters(), None) if model is not None else None
    return param.device if param is not None else torch.device("cpu")


def warn_fallback(line: str) -> None:
    """The loud warning of ``engine=auto``'s fallback: the log and stderr, framed."""
    message = f"engine=auto: {line.split('; run with engine=torch')[0]}; falling back to the torch engine"
    log.warning(message)
    bar = "!" * 78
    print(f"{bar}\nzobench: WARNING: {message}\n{bar}", file=sys.stderr, flush=True)


def describe(engine, model: nn.Module | None) -> dict:
    """The engine a run actually uses: backend, mode, paired, fused or not, Triton's version (for
    the Triton backend) and the device's name (summary.json ``engine_used``, W&B config)."""
    from ..inplace import InPlaceEngine
    from ..virtual import VirtualEngine

    triton_engine = type(engine.provider).__name__ == "TritonProvider"
    virtual = isinstance(engine, VirtualEngine)
    device = device_of(model)
    info: dict = {
        "backend": "triton" if triton_engine else "torch",
        "mode": "virtual" if virtual else "inplace" if isinstance(engine, InPlaceEngine) else type(engine).__name__,
        "paired": bool(getattr(engine, "paired", False)) if virtual else False,
        "fused_linear": bool(getattr(engine, "fused_linear", False)),
        "triton": None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
    }
    if triton_engine:
        import triton

        from ..triton.primitives import interpreted

        info["triton"] = triton.__version__ + (" (interpreter)" if interpreted() else "")
    return info


def label(info: dict) -> str:
    """``triton/virtual+paired+fused (Triton 3.1.0, NVIDIA H100 80GB HBM3)``: the closing line's engine."""
    flags = "".join(f"+{name}" for name in ("paired", "fused") if info.get("fused_linear" if name == "fused" else name))
    triton = f"Triton {info['triton']}" if info.get("triton") else ""
    extra = ", ".join(x for x in (triton, info.get("device", "")) if x)
    check = info.get("check") or {}
    fallback = " (fell back from triton: the start-up check failed)" if info.get("fallback") else ""
    checked = " (checked)" if check.get("passed") and not fallback else ""
    return f"{info['backend']}/{info['mode']}{flags}{checked}{fallback}" + (f" [{extra}]" if extra else "")


def checked_engine(build, backend: str, model: nn.Module | None, params, distribution: str, setting="auto"):
    """``build(backend)`` (the engine for ``engine.backend``), checked against the torch reference
    when ``wanted``; returns (engine, ``describe``'s dict with ``check``). A mismatch stops the run
    (``EngineCheckError``: one line) unless ``backend`` is ``auto``, which falls back to
    ``build("torch")`` with a loud warning (``warn_fallback``)."""
    engine = build(backend)
    if not wanted(setting, engine, model):
        return engine, describe(engine, model)
    report = run_check(cases_for(engine, params), device_of(model), distribution)
    log.info("engine self-check: %d cases in %.2f s, %s", len(report.cases), report.seconds,
             "passed" if report.ok else "FAILED")  # fmt: skip
    if report.ok:
        return engine, {**describe(engine, model), "check": report.summary()}
    line = report.mismatches[0].line()
    if backend != "auto":
        raise EngineCheckError(line)
    warn_fallback(line)
    if hasattr(engine, "remove"):
        engine.remove()  # the virtual engine's hooks on the model
    fallback = build("torch")
    return fallback, {**describe(fallback, model), "check": report.summary(), "fallback": "torch"}
