"""The torch backend: ``InPlaceEngine`` (``inplace.py``) and ``VirtualEngine`` (``virtual.py``)
with the ``TorchProvider`` (``provider.py``), z drawn by ``Direction.chunks``.

This module only gathers their names (and the helpers other modules take from the torch
backend) under the backend's name."""

from __future__ import annotations

from .inplace import InPlaceEngine
from .provider import STREAM_ELEMENTS, TorchProvider, perturbed_value, perturbed_values, row_block
from .virtual import VirtualEngine

__all__ = [
    "STREAM_ELEMENTS",
    "InPlaceEngine",
    "TorchProvider",
    "VirtualEngine",
    "perturbed_value",
    "perturbed_values",
    "row_block",
]
