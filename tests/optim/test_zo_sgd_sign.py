"""Method-specific checks of ZO-SGD-Sign (the shared contract is in test_conformance.py)."""

import pytest
import torch
from torch import nn

from zobench.optim import ZOSGDSign


@pytest.mark.parametrize("sign", ["scalar", "elementwise"])
@pytest.mark.parametrize("losses, sign_g", [((2.0, 1.0), 1.0), ((1.0, 3.0), -1.0), ((2.0, 2.0), 0.0)])
def test_zo_sgd_sign_step_is_the_sign_of_g_times_z_or_sign_z(sign, losses, sign_g):
    """Scripted ℓ+, ℓ-: scalar moves θ by -η sign(g) z (ZO-Bench's code, ALGORITHMS.md),
    elementwise by -η sign(g) sign(z); g = 0 leaves θ to the weight decay alone."""
    x = nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 3.0]))
    lr, decay = 0.1, 0.5
    opt = ZOSGDSign([x], lr=lr, eps=0.5, weight_decay=decay, sign=sign, seed=4)
    x0 = x.detach().clone()
    script = iter(losses)
    assert float(opt.step(lambda: torch.tensor(next(script)))) == sum(losses) / 2
    z = opt.direction(1).sample(0, x)
    step = z if sign == "scalar" else z.sign()
    torch.testing.assert_close(x.detach(), (1 - lr * decay) * x0 - lr * sign_g * step)
