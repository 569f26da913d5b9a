"""What the recipe's setup needs besides the recipe itself and the factory (``zobench.build``):
the device and the step schedule."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from ..errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``device=auto``: cuda if available, else cpu; otherwise the torch device named."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def schedule(train_cfg: DictConfig, optimizer, not_zo: bool) -> tuple[int, int]:
    """``(steps, eval_every)``: from ``train.steps`` / ``train.eval_every``, or, with
    ``train.forward_budget``, from the method's declared forward passes per step, so that methods
    of 2 (MeZO), 3 (HiZOO) or N+1 (FZOO) passes per step get the same budget and, with
    ``train.eval_every_passes``, dev evaluations at the same forward-pass counts."""
    budget = train_cfg.get("forward_budget")
    if not budget:
        return int(train_cfg.steps), int(train_cfg.eval_every)
    if not_zo:
        raise ConfigError(
            "train.forward_budget counts a ZO method's forward passes; first-order and "
            "linear-probe baselines take train.steps (set train.forward_budget=null)"
        )
    exact = getattr(optimizer, "forward_passes", None)  # methods whose steps differ in cost
    per_step = optimizer.forward_passes_per_step  # (DiZO, MeZO-SVRG): an average, not an int
    steps = max(1, int(budget // per_step))
    if exact is not None:  # the most steps whose exact passes fit the budget (at least one)
        steps = 1
        while exact(steps + 1) <= budget:
            steps += 1
    every = train_cfg.get("eval_every_passes")
    return steps, max(1, int(int(every) // per_step)) if every else int(train_cfg.eval_every)
