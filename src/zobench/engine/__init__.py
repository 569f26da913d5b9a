"""Seeded perturbation and update engine (docs/design.md, "Engine").

``build_engine(backend, mode, model)`` returns the engine a config asks for; ``Direction`` is
the seeded random direction every backend shares. Layout: ``base`` (the contract), ``inplace``
and ``virtual`` (the two modes), ``provider`` (what a backend computes: θ + s·z and its
products), ``replicas`` and ``streamed`` (batched and block-by-block evaluation), ``triton/``
(the Triton backend). The Triton backend is imported only when asked for: Triton reads
``TRITON_INTERPRET`` when its kernels are defined.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import check_value, rules
from ..config.schema import ENGINE_BACKENDS as BACKENDS
from ..config.schema import ENGINE_MODES as MODES
from ..errors import ConfigError, MissingPackageError
from . import trace
from .base import Engine, ZOParams
from .directions import DISTRIBUTIONS, Direction, Piece, mix_seed
from .inplace import InPlaceEngine
from .provider import Provider, TorchProvider
from .virtual import VirtualEngine

__all__ = [
    "BACKENDS",
    "DISTRIBUTIONS",
    "MODES",
    "Direction",
    "Engine",
    "InPlaceEngine",
    "Piece",
    "Provider",
    "TorchProvider",
    "VirtualEngine",
    "ZOParams",
    "build_engine",
    "mix_seed",
    "resolve_backend",
]


def _model_on_cuda(model: nn.Module | None) -> bool:
    param = next(model.parameters(), None) if model is not None else None
    return param is not None and param.device.type == "cuda"


def _triton_installed() -> bool:
    """Whether ``import triton`` works (installed, and loadable with this torch)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, model: nn.Module | None = None) -> str:
    """``auto`` → ``triton`` when the model is on CUDA and Triton is installed, else ``torch``."""
    if backend != "auto":
        return backend
    return "triton" if _model_on_cuda(model) and _triton_installed() else "torch"


def build_engine(
    backend: str, mode: str, model: nn.Module | None = None, paired: bool = True, fused_linear: bool = False
) -> Engine:
    """The engine for ``engine.backend`` / ``engine.mode`` (``auto``: see ``resolve_backend``);
    ``paired`` (``engine.paired``): virtual mode evaluates SPSA's ± pair in one batched forward;
    ``fused_linear`` (``engine.fused_linear``, Triton virtual mode only): linear layers perturb
    their weight tiles inside the matmul, embeddings gather perturbed rows (``triton/fused.py``)."""
    check_value("engine.backend", backend)
    check_value("engine.mode", mode)
    if mode == "virtual" and model is None:
        raise ValueError("engine.mode=virtual needs the model whose modules it hooks")
    resolved = resolve_backend(backend, model)
    trace.install(model)  # ZOBENCH_TRACE / ZOBENCH_WATCHDOG: name the phase and module of a stall
    refused = rules.fused_linear(backend, mode, resolved) if fused_linear else None
    if refused:
        raise ConfigError(refused)
    if resolved == "triton":
        return _build_triton(mode, model, paired, fused_linear)
    if mode == "inplace":
        return InPlaceEngine()
    assert model is not None  # checked above
    return VirtualEngine(model, paired=paired)


def _build_triton(mode: str, model: nn.Module | None, paired: bool = True, fused_linear: bool = False) -> Engine:
    if not _triton_installed():
        raise MissingPackageError("engine.backend=triton needs Triton: pip install 'triton>=3.0' (or use engine=torch)")
    from .triton import TritonInPlaceEngine, TritonVirtualEngine, interpreted

    on_cuda = _model_on_cuda(model) if model is not None else torch.cuda.is_available()
    if not (on_cuda or interpreted()):
        raise ConfigError(
            "engine.backend=triton needs the model on CUDA (or TRITON_INTERPRET=1 to run the "
            "kernels on CPU, slowly); use engine=torch or engine=auto"
        )
    if mode == "inplace":
        return TritonInPlaceEngine()
    assert model is not None  # build_engine refuses virtual mode without a model
    return TritonVirtualEngine(model, paired=paired, fused_linear=fused_linear)
