"""TRL's ``SFTTrainer`` trained by a zobench ZO method: ``ZOSFTTrainer``.

It is ``ZOTrainerMixin`` (``hf.py``) on ``trl.SFTTrainer``: the same hooks, no SFT-specific
code. The closure evaluates ``SFTTrainer.compute_loss`` (TRL's token-level NLL / DFT loss, its
completion-only and assistant-only masks, its entropy and token-accuracy metrics, which it
averages over every evaluation of a step: θ ± εz), so any TRL dataset format and collator work.

The engine defaults to ``{"mode": "inplace"}``: TRL's fused LM head computes the logits from
``lm_head.weight`` outside the LM head's forward, where the virtual engine (which swaps a
module's perturbed weights in while that module runs) does not reach; a virtual engine is
refused, with one line. In place, every forward sees the moved weights.

Reward-based trainers (GRPO, RLOO): their loss is a policy-gradient surrogate whose value is
constant in θ at the sampling point (the importance ratio is 1 and its gradient, not its value,
carries the signal), so a closure evaluating it gives ZO nothing to difference. A ZO version
needs a different objective (e.g. minus the mean reward of completions generated at θ ± εz, with
the same sampling seed on both sides: ZO on the reward itself), and a step that generates
under each perturbation; that is a new trainer, not this mixin on ``GRPOTrainer``.
"""

from __future__ import annotations

from typing import Any

from trl import SFTTrainer

from ..errors import ConfigError
from .core import engine_config
from .hf import ZOTrainerMixin


class ZOSFTTrainer(ZOTrainerMixin, SFTTrainer):
    """``trl.SFTTrainer`` with a zobench ZO method as its optimizer:
    ``ZOSFTTrainer(model, args=SFTConfig(...), zo="mezo", train_dataset=...)``."""

    default_engine: Any = {"mode": "inplace"}

    def __init__(self, *args, zo: Any = "mezo", engine: Any = None, **kwargs) -> None:
        if engine is not None and engine_config(engine)["mode"] == "virtual":
            raise ConfigError(
                "engine.mode=virtual: TRL's fused LM head reads lm_head.weight outside the module's forward, "
                "where a virtual perturbation is not applied; use engine={'mode': 'inplace'} (the default here)"
            )
        super().__init__(*args, zo=zo, engine=engine, **kwargs)
