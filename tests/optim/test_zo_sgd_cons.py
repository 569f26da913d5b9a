"""Method-specific checks of ZO-SGD-Cons (the shared contract is in test_conformance.py)."""

import pytest
import torch
from torch import nn

from tests.helpers import Quadratic
from zobench.engine import VirtualEngine
from zobench.optim import ZOSGDCons


def test_zo_sgd_cons_never_increases_the_batch_loss_and_lands_on_the_best_trial():
    model = Quadratic()
    opt = ZOSGDCons(model.parameters(), lr=0.1, eps=1e-3, seed=0, engine=VirtualEngine(model))  # overshoots often
    previous, choices = float(model()), set()
    for _ in range(40):
        returned = float(opt.step(model))
        info = opt.last_step_info
        now = float(model())
        assert now == returned == min(info["loss_descent"], info["loss_zero"], info["loss_ascent"])
        assert now <= previous
        previous = now
        choices.add(info["choice"])
    assert {0, 1} <= choices  # with this lr some SGD steps are taken and some rejected


@pytest.mark.parametrize("trials, choice, sign", [((3.0, 4.0), 0, -1.0), ((5.0, 4.0), 1, 0.0), ((5.0, 0.5), 2, +1.0)])
def test_zo_sgd_cons_applies_the_chosen_step(trials, choice, sign):
    """Scripted losses ℓ0=4, ℓ+=2, ℓ-=1 (g = 1/2ε), then (ℓ↓, ℓ↑): the weights end at θ + sign·ηgz."""
    x = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    eps, lr = 0.5, 0.1
    opt = ZOSGDCons([x], lr=lr, eps=eps, seed=4)
    x0 = x.detach().clone()
    script = iter((4.0, 2.0, 1.0) + trials)
    assert float(opt.step(lambda: torch.tensor(next(script)))) == min((4.0,) + trials)
    assert opt.last_step_info["choice"] == choice
    z = opt.direction(1).sample(0, x)
    torch.testing.assert_close(x.detach(), x0 + sign * lr * (1.0 / (2 * eps)) * z)
