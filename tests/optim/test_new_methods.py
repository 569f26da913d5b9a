"""Method-specific checks of ZO-SGD-Cons, the forward gradient, FZOO's batched / loss-reuse
paths and Sparse-MeZO's threshold (the shared contract is in test_conformance.py)."""

import math
import statistics

import pytest
import torch
from torch import nn

from tests.helpers import Quadratic, tiny_model
from zobench.engine import InPlaceEngine, VirtualEngine
from zobench.optim import FZOO, ForwardGradient, ZOSGDCons, ZOSGDSign


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


class ReplicaClosure:
    """A closure following the batched contract: closure(replicas=N) returns N losses of the batch
    repeated N times; counts forward passes the way the loop must (replicas per call)."""

    def __init__(self, model, engine, ids):
        self.model, self.engine, self.ids, self.passes, self.calls = model, engine, ids, 0, 0

    def __call__(self, replicas=1):
        self.calls += 1
        self.passes += self.engine.replica_count
        logits = self.model(input_ids=self.ids.repeat(replicas, 1)).logits
        losses = logits.logsumexp(-1).reshape(replicas, -1).mean(-1)
        return losses if replicas > 1 else losses[0]


def _run_fzoo(batched, steps=3, **kwargs):
    model = tiny_model("llama")
    engine = VirtualEngine(model)
    ids = torch.randint(3, 64, (2, 5), generator=torch.Generator().manual_seed(0))
    opt = FZOO(
        model.parameters(), lr=1e-3, eps=1e-2, num_directions=4, batched=batched, seed=5, engine=engine, **kwargs
    )
    closure = ReplicaClosure(model, engine, ids)
    infos = []
    for _ in range(steps):
        opt.step(closure)
        infos.append(opt.last_step_info)
    return model, closure, infos, opt


@pytest.mark.parametrize("reuse", [False, True])
def test_fzoo_batched_equals_sequential(reuse):
    seq_model, seq_closure, seq_infos, opt = _run_fzoo(batched=False, reuse=reuse)
    bat_model, bat_closure, bat_infos, _ = _run_fzoo(batched=True, reuse=reuse)
    chunk_model, chunk_closure, _, _ = _run_fzoo(batched=True, reuse=reuse, replicas_per_call=1)
    for a, b in zip(seq_infos, bat_infos):
        assert a["loss_zero"] == pytest.approx(b["loss_zero"], rel=1e-5)
        assert a["loss_std"] == pytest.approx(b["loss_std"], rel=1e-3)
    # the updates agree to 1e-3 of their size: the float32 loss differences (~1e-3 of the loss) that
    # the σ-normalised step divides carry ~1e-4 relative rounding, batched or not
    start = tiny_model("llama")
    for (name, p0), p, q, r in zip(
        start.named_parameters(), seq_model.parameters(), bat_model.parameters(), chunk_model.parameters()
    ):
        size = float((p - p0).abs().max())
        assert size > 0
        torch.testing.assert_close(q - p0, p - p0, rtol=0, atol=1e-3 * size, msg=name)
        torch.testing.assert_close(r - p0, p - p0, rtol=0, atol=1e-3 * size, msg=name)
    fresh = 2 if reuse else 4
    # same declared passes either way; the batched run makes 2 model calls per step, not fresh+1
    assert seq_closure.passes == bat_closure.passes == chunk_closure.passes == 3 * opt.forward_passes_per_step
    assert seq_closure.calls == 3 * (fresh + 1) and bat_closure.calls == 3 * 2
    assert chunk_closure.calls == 3 * (fresh + 1)


def test_fzoo_batched_refuses_a_closure_that_returns_one_loss():
    model = tiny_model("llama")
    opt = FZOO(model.parameters(), num_directions=2, seed=0, engine=VirtualEngine(model))
    ids = torch.randint(0, 64, (1, 4))
    with pytest.raises(ValueError, match="one loss per replica"):
        opt.step(lambda replicas=1: model(input_ids=ids.repeat(replicas, 1)).logits.mean())


def test_fzoo_r_update_sums_fresh_and_reused_directions():
    model = Quadratic()
    eps, lr = 1e-3, 1e-1  # the authors' rule: no 1/ε, population std (std_ddof=0, the default)
    opt = FZOO(model.parameters(), lr=lr, eps=eps, num_directions=4, reuse=True, seed=2, engine=VirtualEngine(model))
    assert opt.forward_passes_per_step == 3
    opt.step(model)
    first = opt.state["fzoo_reuse"]
    before = model.x.detach().clone()
    opt.step(model)
    second = opt.state["fzoo_reuse"]
    assert first["step"] == 1 and second["step"] == 2 and len(second["differences"]) == 2
    differences = second["differences"] + first["differences"]
    directions = [opt.direction(2, i, "rademacher") for i in range(2)] + [
        opt.direction(1, i, "rademacher") for i in range(2)
    ]
    sigma = statistics.pstdev(differences)
    expected = before - sum(lr / (4 * sigma) * d * u.sample(0, before) for d, u in zip(differences, directions))
    torch.testing.assert_close(model.x.detach(), expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="even N >= 4"):
        FZOO(model.parameters(), num_directions=3, reuse=True)


@pytest.mark.parametrize("chunk", [None, 64, 1000])
def test_sparse_mezo_threshold_is_the_exact_kth_smallest_magnitude(chunk):
    """The radix selection (no parameter-sized copy) equals kthvalue on |θ| bit for bit: ties,
    ±0, rounded values, half precision, tiny and huge magnitudes, every sparsity."""
    from zobench.optim.sparse_mezo import magnitude_threshold

    gen = torch.Generator().manual_seed(0)
    cases = [
        torch.randn(1000, 37, generator=gen),
        torch.randn(50, 50, generator=gen).round(),
        torch.zeros(10, 10),
        torch.tensor([[-0.0, 0.0], [1.0, -1.0]]),
        torch.randn(300, 7, generator=gen).to(torch.bfloat16),
        torch.randn(64, 64, generator=gen).half() * 1e-6,
        torch.randn(3, 3, generator=gen) * 1e30,
    ]
    for p in cases:
        flat = p.abs().flatten().float()
        for sparsity in (0.0, 0.25, 0.5, 0.75, 0.9, 0.999):
            k = max(1, math.ceil((1 - sparsity) * flat.numel()))
            assert magnitude_threshold(p, sparsity, chunk) == float(flat.kthvalue(k).values)
