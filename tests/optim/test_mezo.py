import copy

import pytest
import torch

from zobench.engine import Direction, InPlaceEngine, VirtualEngine
from zobench.optim import MeZO, decay_groups


def _quadratic(x, a):
    return lambda: 0.5 * (a * x * x).sum()


def test_converges_on_a_quadratic():
    torch.manual_seed(0)
    a = torch.linspace(0.5, 2.0, 20)
    x = torch.nn.Parameter(torch.randn(20))
    opt = MeZO([x], lr=0.02, eps=1e-3, seed=1)
    start = float(_quadratic(x, a)())
    for _ in range(2000):
        opt.step(_quadratic(x, a))
    assert float(_quadratic(x, a)()) < 1e-3 * start


def test_two_forward_passes_per_step_and_seeded_reproducibility():
    x = torch.nn.Parameter(torch.ones(5))
    calls = []

    def closure():
        calls.append(1)
        return (x * x).sum()

    opt = MeZO([x], lr=0.1, eps=1e-3, seed=3)
    for _ in range(7):
        opt.step(closure)
    assert len(calls) == 7 * opt.forward_passes_per_step == 7 * MeZO.forward_passes_per_step == 14
    y = torch.nn.Parameter(torch.ones(5))
    opt2 = MeZO([y], lr=0.1, eps=1e-3, seed=3)
    for _ in range(7):
        opt2.step(lambda: (y * y).sum())
    assert torch.equal(x, y)


def test_projected_gradient_is_the_central_difference():
    x = torch.nn.Parameter(torch.tensor([3.0, -1.0]))
    opt = MeZO([x], lr=0.0, eps=1e-2, seed=0)
    opt.step(lambda: (x * x).sum())
    info = opt.last_step_info
    assert info["projected_grad"] == pytest.approx((info["loss_plus"] - info["loss_minus"]) / 2e-2)
    z = opt.direction(1).sample(0, x)
    # for f = |x|², (f(x+εz) - f(x-εz)) / 2ε = 2 x·z exactly (up to rounding)
    assert info["projected_grad"] == pytest.approx(float(2 * (x.detach() * z).sum()), rel=1e-3)


def test_state_dict_round_trip_resumes_bit_identically():
    torch.manual_seed(0)
    a = torch.rand(30) + 0.5
    x = torch.nn.Parameter(torch.randn(30))
    opt = MeZO([x], lr=0.05, eps=1e-3, seed=7)
    for _ in range(5):
        opt.step(_quadratic(x, a))
    saved_x, saved_state = x.detach().clone(), copy.deepcopy(opt.state_dict())
    for _ in range(5):
        opt.step(_quadratic(x, a))
    reference = x.detach().clone()

    y = torch.nn.Parameter(saved_x.clone())
    resumed = MeZO([y], lr=0.9, eps=0.5, seed=0)  # hyperparameters come back from the state dict
    resumed.load_state_dict(saved_state)
    for _ in range(5):
        resumed.step(_quadratic(y, a))
    assert torch.equal(y, reference)


def test_weight_decay_only_on_decay_groups():
    model = torch.nn.Linear(4, 3)
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    opt = MeZO(decay_groups(model.named_parameters(), 0.5), lr=0.1, eps=1e-3, engine=VirtualEngine(model))
    opt.step(lambda: torch.tensor(1.0))  # constant loss: g = 0, only decay acts
    assert torch.equal(model.weight, w0 * (1 - 0.1 * 0.5))
    assert torch.equal(model.bias, b0)


def test_a_zero_update_is_skipped_so_negative_zero_survives():
    x = torch.tensor([-0.0, 0.0, 1.5])
    InPlaceEngine().update([(0, x)], Direction(0), coeff=0.0, decay=0.0)
    assert torch.equal(x.view(torch.int32), torch.tensor([-0.0, 0.0, 1.5]).view(torch.int32))
    naive = torch.tensor([-0.0]) + 0.0 * Direction(0).sample(0, torch.empty(1))
    assert naive.view(torch.int32) != torch.tensor([-0.0]).view(torch.int32)  # why it is skipped


def test_invalid_hyperparameters_are_refused():
    x = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="lr=-1"):
        MeZO([x], lr=-1)
    with pytest.raises(ValueError, match="eps=0"):
        MeZO([x], eps=0)
    opt = MeZO([{"params": [x], "eps": 1e-3}, {"params": [torch.nn.Parameter(torch.zeros(1))], "eps": 1e-2}])
    with pytest.raises(ValueError, match="eps must be the same"):
        opt.step(lambda: torch.tensor(0.0))


def test_n_spsa_decay_multiplies_the_unperturbed_weights():
    """With q directions in place, the decay must act on θ, not on θ still holding a -εz."""
    x = torch.nn.Parameter(torch.tensor([1.0, -2.0, 4.0, 0.5]))
    opt = MeZO(
        [{"params": [x], "weight_decay": 0.5}],
        lr=0.1,
        eps=0.25,
        num_directions=3,
        distribution="rademacher",
        engine=InPlaceEngine(),
    )
    opt.step(lambda: torch.tensor(1.0))  # constant loss: g = 0, only the decay acts
    assert torch.equal(x.detach(), torch.tensor([1.0, -2.0, 4.0, 0.5]) * (1 - 0.1 * 0.5))
