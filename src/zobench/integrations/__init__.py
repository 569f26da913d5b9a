"""zobench's ZO methods inside other training code (README: "Using zobench's methods from your
own training code").

* ``build_zo`` / ``ZOSession`` (``core``): a method built from its config without the recipe,
  stepped on any closure, with forward passes and peak memory measured;
* ``ZOTrainer`` / ``ZOTrainerMixin`` (``hf``): Hugging Face ``Trainer``;
* ``ZOSFTTrainer`` (``sft``): TRL's ``SFTTrainer`` (``pip install 'zobench[integrations]'``);
* ``ZOLightningMixin`` (``lightning``): a ``LightningModule`` in manual optimisation.

The framework modules are imported on first use, so importing this package needs none of them.
"""

from __future__ import annotations

import importlib

from .core import ZOSession, build_zo

_LAZY = {
    "ZOTrainer": "hf",
    "ZOTrainerMixin": "hf",
    "ZOSFTTrainer": "sft",
    "ZOLightningMixin": "lightning",
}

__all__ = ["ZOLightningMixin", "ZOSFTTrainer", "ZOSession", "ZOTrainer", "ZOTrainerMixin", "build_zo"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
