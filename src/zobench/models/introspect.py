"""What a (possibly peft-wrapped) Hugging Face model accepts, and where its pieces are."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn


def hf_model(model: nn.Module) -> Any:  # a transformers PreTrainedModel (its methods, e.g. get_output_embeddings)
    """The transformers model inside a peft wrapper (the model itself otherwise).

    Every forward of every objective, a generation step included, calls this module exactly
    once, which is why the forward counter hooks it."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def is_prompt_learning(model: nn.Module) -> bool:
    """True for peft prefix / prompt tuning, whose forward drops ``position_ids``."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def forward_options(model: nn.Module) -> tuple[bool, bool]:
    """(takes ``position_ids``, takes ``logits_to_keep``) for calls through ``model``.

    peft wrappers forward extra keyword arguments to the transformers model, so its signature
    decides; prompt learning ignores position ids (peft warns and drops them)."""
    accepted = inspect.signature(hf_model(model).forward).parameters
    return ("position_ids" in accepted and not is_prompt_learning(model)), "logits_to_keep" in accepted
