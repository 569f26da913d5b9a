"""Method-specific checks of the forward gradient (the shared contract is in test_conformance.py)."""

import pytest
import torch
from torch import nn

from zobench.engine import InPlaceEngine, VirtualEngine
from zobench.optim import ForwardGradient


def test_forward_gradient_uses_the_exact_directional_derivative():
    a = torch.linspace(0.5, 2.0, 6)
    model = nn.Linear(6, 1, bias=False)
    x0 = model.weight.detach().clone()
    opt = ForwardGradient(model.parameters(), lr=0.1, seed=3, engine=VirtualEngine(model))
    opt.step(lambda: 0.5 * (a * model(torch.eye(6)).T ** 2).sum())  # model(I)ᵀ = the weight
    z = opt.direction(1).sample(0, model.weight)
    derivative = float((a * x0 * z).sum())  # ∇L·z for L = ½ Σ a x²
    assert opt.last_step_info["projected_grad"] == pytest.approx(derivative, rel=1e-6)
    torch.testing.assert_close(model.weight.detach(), x0 - 0.1 * derivative * z)
    with pytest.raises(ValueError, match="engine.mode=virtual"):
        ForwardGradient(model.parameters(), engine=InPlaceEngine())
    # a closure that reads the weight outside its module's forward is not seen: refused, not 0
    with pytest.raises(RuntimeError, match="no tangent"):
        opt.step(lambda: (model.weight**2).sum())
