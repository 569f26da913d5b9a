"""Seeded perturbation and update engine (DESIGN.md "Engine").

``build_engine(backend, mode, model)`` returns the engine a config asks for; ``Direction`` is
the seeded random direction every backend shares.
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError

from .base import Engine, ZOParams
from .directions import DISTRIBUTIONS, Direction, mix_seed
from .torch_backend import InPlaceEngine, VirtualEngine

BACKENDS = ("auto", "torch")
MODES = ("inplace", "virtual")

__all__ = ["BACKENDS", "DISTRIBUTIONS", "MODES", "Direction", "Engine", "InPlaceEngine",
           "VirtualEngine", "ZOParams", "build_engine", "mix_seed"]


def build_engine(backend: str, mode: str, model: nn.Module | None = None) -> Engine:
    """The engine for ``engine.backend`` / ``engine.mode``.

    ``auto`` resolves to the torch reference backend (the only one implemented so far).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"engine.backend={backend!r}: allowed {', '.join(BACKENDS)}")
    if mode not in MODES:
        raise ConfigError(f"engine.mode={mode!r}: allowed {', '.join(MODES)}")
    if mode == "inplace":
        return InPlaceEngine()
    if model is None:
        raise ValueError("engine.mode=virtual needs the model whose modules it hooks")
    return VirtualEngine(model)
