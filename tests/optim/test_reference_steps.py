"""Each method with public code steps like its authors' code: a short transcription of the
reference update (cited by repository, commit, file and line), applied at the same weights with
the same z (taken from zobench's seeded Direction, standing in for the reference's
``torch.manual_seed`` stream) on a tiny float64 model, gives zobench's step to rounding. Every
step re-syncs the transcription to zobench's weights, so each comparison is one step.

Plus the scale tests that follow from the math: FZOO's step does not depend on ε; LOZO's and
TeZO's step grows ∝ r at a fixed η (entries of Z have variance r, as in the references).

References (fetched 2026-12-02):
  MeZO     princeton-nlp/MeZO @552cb1b    large_models/trainer.py
  ZO-Bench ZO-Bench/ZO-LLM @bf210fa       zo-bench/trainer.py (its default optimizer: transformers
           4.28.1 optimization.py, AdamW.step, requirements.txt's pin)
  HiZOO    Yanjun-Zhao/HiZOO @4f99055     trainer.py (2025); @f5f0c45 medium_models/src/trainer.py (2024)
  FZOO     DKmiyan/FZOO @d4f8a8b          trainer.py
  LOZO     optsuite/LOZO @5d1ade5         large_models/LOZOtrainer.py
  SubZero  zimingyy/SubZero @cf6effd      large_models/trainer.py

Methods added by issue 17 (the second half of this file):

* DiZO: Skilteee/DiZO @ b05e73d, ``large_models/trainer.py``.
* MeZO-SVRG: amazon-science/mezo_svrg @ 002e156, ``models/llm_module.py``. zobench implements
  the rule the paper states (θ̄ a real copy; the same z and batch at θ and at θ̄); the test
  transcribes the authors' step with those two lines corrected, and a second test shows what the
  authors' code, line for line, computes instead.
* LeZO has no public code: its defining properties are tested in test_lezo_dizo_svrg.py.
"""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, jvp

from tests.helpers import tiny_model
from zobench.engine import Direction, VirtualEngine, mix_seed
from zobench.optim import (
    FZOO,
    LOZO,
    DiZO,
    ForwardGradient,
    HiZOO,
    MeZO,
    MeZOSVRG,
    SubZero,
    TeZO,
    ZOAdam,
    ZOSGDCons,
    ZOSGDMomentum,
    ZOSGDSign,
    decay_groups,
)
from zobench.optim._lowrank import factor_seed, gaussian
from zobench.optim.dizo import _ROUND_SALT

TOL = dict(rtol=1e-6, atol=1e-9)


class Tiny:
    """A float64 MLP (two weight matrices, two biases) with an MSE loss on fixed data:
    ``closure()`` evaluates the model (zobench's side), ``loss_at(θ)`` a dict of weights (the
    transcription's side, as the references' in-place ``param.data`` edits would)."""

    def __init__(self, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double().requires_grad_(False)
        self.x = torch.randn(8, 3, generator=gen, dtype=torch.float64)
        self.y = torch.randn(8, 2, generator=gen, dtype=torch.float64)

    def closure(self):
        return ((self.model(self.x) - self.y) ** 2).mean()

    def loss_at(self, theta: dict) -> float:
        return float(((functional_call(self.model, theta, (self.x,)) - self.y) ** 2).mean())

    def theta(self) -> dict:
        return {n: p.detach().clone() for n, p in self.model.named_parameters()}


def _z(opt, direction) -> dict:
    """z of every parameter, by name, from zobench's Direction (the engine's seeded draw)."""
    names = {id(p): n for n, p in opt.tiny.model.named_parameters()}
    return {names[id(p)]: direction.sample(pid, p).to(p.dtype) for pid, p in opt._all_params}


def _shift(theta, z, scale):
    return {n: theta[n] + scale * z[n] for n in theta}


def _compare_steps(tiny, opt, reference, steps=3, tol=TOL):
    """Before each zobench step, the transcription steps from the same weights; then both agree."""
    opt.tiny = tiny
    for _ in range(steps):
        step = opt.param_groups[0]["step"] + 1
        expected = reference(tiny.theta(), step)
        opt.step(tiny.closure)
        for name, p in tiny.model.named_parameters():
            torch.testing.assert_close(p, expected[name], **tol, msg=f"step {step}, {name}")


def _decays(name: str) -> bool:
    # MeZO trainer.py:803 (and ZO-Bench's forward_grad, trainer.py:1409): no decay on these names
    return "bias" not in name and "layer_norm" not in name and "layernorm" not in name


# -- MeZO ------------------------------------------------------------------------------------------
def test_mezo_is_the_reference_step():
    """MeZO trainer.py:699-712 (θ + s·ε·z), :757-789 (ℓ+ at +ε, ℓ- at -ε, g = (ℓ+ - ℓ-)/2ε, l.780),
    :791-806 (θ ← θ - η(g z + λθ), λ only where ``_decays``)."""
    tiny, eps, lr, wd = Tiny(), 1e-3, 0.05, 0.1
    opt = MeZO(
        decay_groups(tiny.model.named_parameters(), wd), lr=lr, eps=eps, seed=3, engine=VirtualEngine(tiny.model)
    )

    def reference(theta, step):
        z = _z(opt, opt.direction(step))
        loss1 = tiny.loss_at(_shift(theta, z, eps))
        loss2 = tiny.loss_at(_shift(theta, z, -eps))
        g = (loss1 - loss2) / (2 * eps)
        return {n: theta[n] - lr * (g * z[n] + (wd * theta[n] if _decays(n) else 0)) for n in theta}

    _compare_steps(tiny, opt, reference)


# -- ZO-Bench: ZO-SGD, -MMT, -Sign, ZO-Adam go through a torch optimizer with param.grad = ĝ ----------
def _zo_bench_reference(tiny, opt, eps, torch_opt, grad_of):
    """ZO-Bench trainer.py:1005-1084 (zo_step): two-sided g (l.1036-1039), then per parameter
    ``param.grad = ĝ; self.optimizer.step()`` (l.1072-1073), the optimizer built at l.315-321
    (SGD(lr, momentum) or Adam(lr)). ĝ = g z (l.1063) or sign(g) z for zo_sign_opt (l.1058)."""
    params = {n: p.detach().clone() for n, p in tiny.model.named_parameters()}
    optimizer = torch_opt(list(params.values()))

    def reference(theta, step):
        for n, p in params.items():
            p.copy_(theta[n])
        z = _z(opt, opt.direction(step))
        g = (tiny.loss_at(_shift(theta, z, eps)) - tiny.loss_at(_shift(theta, z, -eps))) / (2 * eps)
        for n, p in params.items():
            p.grad = grad_of(g) * z[n]
            optimizer.step()  # only this parameter has a grad
            p.grad = None
        return {n: p.clone() for n, p in params.items()}

    return reference


class HFAdamW(torch.optim.Optimizer):
    """transformers 4.28.1 ``AdamW.step`` (optimization.py; the Trainer's default ``adamw_hf``,
    ZO-Bench's default optimizer, run.py:74): m, v with β; δ outside the bias correction,
    step_size = η√(1-β2^t)/(1-β1^t); decoupled decay of the stepped weights at the end."""

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                beta1, beta2 = group["betas"]
                state["step"] += 1
                exp_avg.mul_(beta1).add_(p.grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)
                denom = exp_avg_sq.sqrt().add_(group["eps"])
                bias_correction1 = 1.0 - beta1 ** state["step"]
                bias_correction2 = 1.0 - beta2 ** state["step"]
                step_size = group["lr"] * math.sqrt(bias_correction2) / bias_correction1
                p.addcdiv_(exp_avg, denom, value=-step_size)
                if group["weight_decay"] > 0.0:
                    p.add_(p, alpha=-group["lr"] * group["weight_decay"])


ZO_BENCH = {
    # ZO-SGD: SGD(momentum=0) on g z is MeZO's step (run.py:81 momentum default 0.0)
    "zo_sgd": (
        lambda m, **k: MeZO(m.parameters(), **k),
        dict(lr=0.05),
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.0),
        lambda g: g,
    ),
    "zo_sgd_momentum": (
        lambda m, **k: ZOSGDMomentum(m.parameters(), momentum=0.8, **k),
        dict(lr=0.05),
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.8),
        lambda g: g,
    ),
    # base=sgd, the paper's rule: their ĝ = sign(g) z (l.1058) stepped by plain SGD (what their code
    # would run with --optimizer sgd; their sweeps run AdamW: zo_sgd_sign_adamw below)
    "zo_sgd_sign": (
        lambda m, **k: ZOSGDSign(m.parameters(), **k),
        dict(lr=0.01),
        lambda ps: torch.optim.SGD(ps, lr=0.01),
        lambda g: float(np.sign(g)),
    ),
    # ZO-Bench's zo_sign_opt runs under its default optimizer, HF AdamW (run.py:74, trainer.py:315-330)
    "zo_sgd_sign_adamw": (
        lambda m, **k: ZOSGDSign(m.parameters(), base="adamw", **k),
        dict(lr=0.01),
        lambda ps: HFAdamW(ps, lr=0.01),
        lambda g: float(np.sign(g)),
    ),
    "zo_sgd_sign_adamw_decay": (
        lambda m, **k: ZOSGDSign(m.parameters(), base="adamw", weight_decay=0.1, **k),
        dict(lr=0.01),
        lambda ps: HFAdamW(ps, lr=0.01, weight_decay=0.1),
        lambda g: float(np.sign(g)),
    ),
    "zo_adam": (
        lambda m, **k: ZOAdam(m.parameters(), **k),
        dict(lr=0.01),
        lambda ps: torch.optim.Adam(ps, lr=0.01),
        lambda g: g,
    ),  # torch's Adam defaults, as l.316
}


@pytest.mark.parametrize("name", ZO_BENCH)
def test_zo_bench_methods_are_the_reference_step(name):
    make, kwargs, torch_opt, grad_of = ZO_BENCH[name]
    tiny, eps = Tiny(), 1e-3
    opt = make(tiny.model, eps=eps, seed=5, engine=VirtualEngine(tiny.model), **kwargs)
    _compare_steps(tiny, opt, _zo_bench_reference(tiny, opt, eps, torch_opt, grad_of), steps=4)


@pytest.mark.parametrize("lr", [0.3, 1.5])
def test_zo_sgd_cons_is_the_reference_step(lr):
    """ZO-Bench trainer.py:1251-1337 (zo_conserv_step): ℓ0 (l.1266), g two-sided (l.1271-1285),
    ``update_params(sign)`` steps SGD by sign·g z (l.1288-1316): θ-ηgz → ℓ1 (l.1319-1320), then
    θ+ηgz → ℓ2 (l.1322-1323); keep θ-ηgz if ℓ1 ≤ ℓ0 and ℓ1 < ℓ2, θ if ℓ1 > ℓ0 and ℓ0 < ℓ2,
    else θ+ηgz (l.1327-1332). (zobench breaks exact ties differently: see zo_sgd_cons.py; the
    losses here are never tied.) Over 12 steps lr 0.3 takes and rejects the SGD step, lr 1.5
    rejects it and takes the reversed one: every branch is compared."""
    tiny, eps = Tiny(), 1e-3
    opt = ZOSGDCons(tiny.model.parameters(), lr=lr, eps=eps, seed=7, engine=VirtualEngine(tiny.model))
    choices = []

    def reference(theta, step):
        z = _z(opt, opt.direction(step))
        loss0 = tiny.loss_at(theta)
        g = (tiny.loss_at(_shift(theta, z, eps)) - tiny.loss_at(_shift(theta, z, -eps))) / (2 * eps)
        descent, ascent = _shift(theta, z, -lr * g), _shift(theta, z, lr * g)
        loss1, loss2 = tiny.loss_at(descent), tiny.loss_at(ascent)
        if loss1 > loss0:
            chosen = theta if loss0 < loss2 else ascent
        else:
            chosen = descent if loss1 < loss2 else ascent
        choices.append(0 if chosen is descent else 1 if chosen is theta else 2)
        return chosen

    _compare_steps(tiny, opt, reference, steps=12)
    assert len(set(choices)) >= 2, choices


@pytest.mark.parametrize("lr", [0.05, 0.2])
def test_zo_sgd_cons_adamw_is_the_reference_step(lr):
    """ZO-Bench trainer.py:1251-1337 under its default optimizer (HF AdamW, ``HFAdamW``):
    ``update_params(s)`` sets ``param.grad = s·g z`` and steps AdamW (l.1288-1316); θ1 = A(g z)
    → ℓ1 (l.1318-1320), θ2 = A(-2g z) → ℓ2 (l.1322-1323), nothing restored; then A(g z) if
    ℓ1 > ℓ0 and ℓ0 < ℓ2, A(2g z) if ℓ1 ≤ ℓ0 and ℓ1 < ℓ2, else θ2 stays (l.1327-1332). The
    AdamW state carries over from step to step (one transcription for all 12 steps); lr 0.2
    reaches all three branches."""
    tiny, eps = Tiny(), 1e-3
    opt = ZOSGDCons(tiny.model.parameters(), lr=lr, eps=eps, base="adamw", seed=7, engine=VirtualEngine(tiny.model))
    params = {n: p.detach().clone() for n, p in tiny.model.named_parameters()}
    adamw = HFAdamW(list(params.values()), lr=lr)
    branches = []

    def update_params(z, g, sign):
        for n, p in params.items():
            p.grad = sign * g * z[n]
            adamw.step()
            p.grad = None

    def reference(theta, step):
        for n, p in params.items():
            p.copy_(theta[n])
        z = _z(opt, opt.direction(step))
        loss0 = tiny.loss_at(theta)
        g = (tiny.loss_at(_shift(theta, z, eps)) - tiny.loss_at(_shift(theta, z, -eps))) / (2 * eps)
        update_params(z, g, 1.0)
        loss1 = tiny.loss_at(params)
        update_params(z, g, -2.0)
        loss2 = tiny.loss_at(params)
        if loss1 > loss0:
            if loss0 < loss2:
                update_params(z, g, 1.0)
                branches.append("back to θ")
            else:
                branches.append("θ2")
        elif loss1 < loss2:
            update_params(z, g, 2.0)
            branches.append("back to θ1")
        else:
            branches.append("θ2")
        return {n: p.clone() for n, p in params.items()}

    # zobench's m and v are float32 (ĝ = s·g z formed in float32), the transcription's float64: the
    # steps agree to float32 precision (a wrong branch or a restored θ is off by ~η)
    _compare_steps(tiny, opt, reference, steps=12, tol=dict(rtol=1e-5, atol=1e-7))
    assert len(set(branches)) == (3 if lr == 0.2 else 2), branches


def test_forward_gradient_is_the_reference_step():
    """ZO-Bench trainer.py:1357-1424 (forward_grad_step): v = z per parameter (l.1380), the loss
    and its jvp along v by ``torch.func.jvp`` of a functional call (l.1389-1396), then
    θ ← θ - η(v·jvp + λθ), λ only where ``_decays`` (l.1409-1412)."""
    tiny, lr, wd = Tiny(), 0.05, 0.1
    opt = ForwardGradient(
        decay_groups(tiny.model.named_parameters(), wd), lr=lr, seed=9, engine=VirtualEngine(tiny.model)
    )
    names = [n for n, _ in tiny.model.named_parameters()]

    def reference(theta, step):
        z = _z(opt, opt.direction(step))

        def f(params):
            out = functional_call(tiny.model, dict(zip(names, params)), (tiny.x,))
            return ((out - tiny.y) ** 2).mean()

        _, tangent = jvp(f, ([theta[n] for n in names],), ([z[n] for n in names],))
        return {n: theta[n] - lr * (z[n] * tangent + (wd * theta[n] if _decays(n) else 0)) for n in names}

    _compare_steps(tiny, opt, reference)


# -- HiZOO -----------------------------------------------------------------------------------------
def test_hizoo_is_the_reference_step_with_the_new_hessian():
    """HiZOO trainer.py:482-516: H = ones (l.351); ℓ0, then ℓ± at θ ± ε z/√H (l.475-479,
    491-499); H' = (1-α)H + α|ℓ+ + ℓ- - 2ℓ0|·H z²/(2ε²) (l.507-510); θ ← θ - η((ℓ+ - ℓ-)/2ε ·
    z/√H' + λθ) with the NEW H' (l.512-513). α = 0.5 so that H' ≠ H shows in the step."""
    tiny, eps, lr, alpha = Tiny(), 1e-2, 0.05, 0.5
    opt = HiZOO(
        tiny.model.parameters(), lr=lr, eps=eps, hessian_smooth=alpha, seed=11, engine=VirtualEngine(tiny.model)
    )
    hessian = {n: torch.ones_like(p) for n, p in tiny.model.named_parameters()}
    old_rule = []

    def reference(theta, step):
        z = _z(opt, opt.direction(step))
        scaled = {n: z[n] / torch.sqrt(hessian[n]) for n in theta}
        loss0 = tiny.loss_at(theta)
        loss1, loss2 = tiny.loss_at(_shift(theta, scaled, eps)), tiny.loss_at(_shift(theta, scaled, -eps))
        new = {}
        for n in theta:
            estimator = abs(loss1 + loss2 - 2 * loss0) * hessian[n] * z[n] * z[n] * alpha / (2 * eps * eps)
            hessian[n] = (1 - alpha) * hessian[n] + estimator
            new[n] = theta[n] - lr * (loss1 - loss2) / (2 * eps) * z[n] / torch.sqrt(hessian[n])
        old_rule.append({n: theta[n] - lr * (loss1 - loss2) / (2 * eps) * scaled[n] for n in theta})
        return new

    _compare_steps(tiny, opt, reference)
    # the old Σ's update (zobench before issue 17) is measurably another step
    assert not torch.allclose(tiny.model[0].weight, old_rule[-1]["0.weight"], **TOL)


def test_hizoo_2024_is_the_roberta_reference_step():
    """HiZOO @f5f0c45 medium_models/src/trainer.py: Σ = ones (l.528); ℓ0 (l.626), ℓ± at
    θ ± ε√Σ z (l.628-633, the perturbation l.244-249, its undefined ``seed`` read as the step's);
    Σ' = (1-α)Σ + α|ℓ+ + ℓ- - 2ℓ0|·(z²/Σ)/(2ε²) (l.640-643); θ ← θ - η((ℓ+ - ℓ-)/2ε · z√Σ' + λθ)
    (l.644-646), λ on every parameter there: one decay group here. α = 0.5 so that Σ' ≠ Σ shows."""
    tiny, eps, lr, alpha, wd = Tiny(), 1e-2, 0.05, 0.5, 0.1
    opt = HiZOO(
        [{"params": list(tiny.model.parameters()), "weight_decay": wd}],
        lr=lr,
        eps=eps,
        hessian_smooth=alpha,
        rule="2024",
        seed=11,
        engine=VirtualEngine(tiny.model),
    )
    hessian = {n: torch.ones_like(p) for n, p in tiny.model.named_parameters()}

    def reference(theta, step):
        z = _z(opt, opt.direction(step))
        scaled = {n: torch.sqrt(hessian[n]) * z[n] for n in theta}
        loss_original = tiny.loss_at(theta)
        loss1, loss2 = tiny.loss_at(_shift(theta, scaled, eps)), tiny.loss_at(_shift(theta, scaled, -eps))
        new = {}
        for n in theta:
            hessian_temp = 1 / hessian[n] * z[n] * z[n]
            estimator = abs(loss1 + loss2 - 2 * loss_original) * hessian_temp / (2 * eps * eps)
            hessian[n] = (1 - alpha) * hessian[n] + alpha * estimator
            grad = (loss1 - loss2) / (2 * eps) * z[n] * torch.sqrt(hessian[n])
            new[n] = theta[n] - lr * (grad + wd * theta[n])
        return new

    _compare_steps(tiny, opt, reference)
    assert not all(torch.equal(h, torch.ones_like(h)) for h in hessian.values())


# -- FZOO ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ddof", [0, 1])
def test_fzoo_is_the_reference_step(ddof):
    """FZOO trainer.py:732-779: N directions u_i ∈ {±1}^d (l.729), ℓ_i at θ + εu_i (l.748-755),
    σ = std(ℓ_1..ℓ_N, unbiased=False) (l.757), ℓ0 at θ (l.758), c_i = (ℓ_i - ℓ0)/(Nσ) (l.760),
    θ ← θ - η Σ_i c_i u_i (l.766-779): no 1/ε. ``std_ddof=1`` (the paper's sample std) swaps
    l.757's estimator for the unbiased one, nothing else."""
    tiny, eps, lr, n_dirs = Tiny(), 1e-3, 0.01, 4
    opt = FZOO(
        tiny.model.parameters(),
        lr=lr,
        eps=eps,
        num_directions=n_dirs,
        std_ddof=ddof,
        seed=13,
        engine=VirtualEngine(tiny.model),
    )

    def reference(theta, step):
        us = [_z(opt, opt.direction(step, i, "rademacher")) for i in range(n_dirs)]
        loss1s = torch.tensor([tiny.loss_at(_shift(theta, u, eps)) for u in us], dtype=torch.float64)
        std = torch.std(loss1s, unbiased=bool(ddof))
        loss0 = tiny.loss_at(theta)
        projected_grad = (loss1s - loss0) / (n_dirs * std)
        new = dict(theta)
        for idx, u in enumerate(us):
            new = {n: new[n] - lr * (projected_grad[idx] * u[n]) for n in new}
        return new

    _compare_steps(tiny, opt, reference)


def test_fzoo_step_does_not_depend_on_eps():
    """On a linear loss ℓ_i - ℓ0 = ε u_iᵀc and σ = ε·std(u_iᵀc) exactly, so the authors' step
    η/(Nσ) Σ(ℓ_i - ℓ0)u_i has no ε in it (the old 1/ε rule moved 100× further at ε/100)."""
    steps = []
    for eps in (1e-2, 1e-4):
        weight = nn.Parameter(torch.zeros(3, 4, dtype=torch.float64), requires_grad=False)
        c = torch.linspace(-1, 1, 12, dtype=torch.float64).view(3, 4)
        opt = FZOO([weight], lr=0.1, eps=eps, num_directions=8, seed=17)
        opt.step(lambda: (c * weight).sum())
        steps.append(weight.detach().clone())
    torch.testing.assert_close(steps[0], steps[1], rtol=1e-7, atol=1e-12)
    assert 0.01 < float(steps[0].abs().max()) < 1  # a step of ~η per element, not η/ε


def test_fzoo_with_equal_losses_only_decays():
    """σ = 0 (every ℓ_i equal): the reference divides by zero (l.760) and writes NaN into every
    weight; zobench takes no step along the directions, only the weight decay acts."""
    weight = nn.Parameter(torch.ones(3, 4, dtype=torch.float64), requires_grad=False)
    opt = FZOO([{"params": [weight], "weight_decay": 0.5}], lr=0.1, eps=1e-3, num_directions=4, seed=1)
    opt.step(lambda: torch.tensor(2.0))
    torch.testing.assert_close(weight.detach(), torch.full((3, 4), 1 - 0.1 * 0.5, dtype=torch.float64))


# -- LOZO ------------------------------------------------------------------------------------------
def test_lozo_is_the_reference_step_across_v_resamples():
    """LOZOtrainer.py: a step counter from 0 (l.766-771); on matrices V ~ N(0,1)^{n×r} redrawn
    when step % ν == 0 and kept otherwise (l.710-713), U ~ N(0,1)^{m×r} every step (l.715),
    θ + s·ε·U Vᵀ (l.716; no 1/√r); vectors θ + s·ε·z (l.718-719); g two-sided (l.790); update
    θ ← θ - η g U Vᵀ (l.812-814) with the perturbation's U (the reference redraws U from the
    step seed without V, l.803-809, so on V-resample steps its U is V's numbers: zobench
    does not copy that). U, V come from zobench's seeded factors (the torch.manual_seed stream's
    stand-in); ν = 2 over 5 steps crosses two resamples."""
    tiny, eps, lr, rank, lazy = Tiny(), 1e-3, 0.02, 2, 2
    opt = LOZO(
        tiny.model.parameters(), lr=lr, eps=eps, rank=rank, lazy_steps=lazy, seed=19, engine=VirtualEngine(tiny.model)
    )
    names = {id(p): n for n, p in tiny.model.named_parameters()}
    pids = {names[id(p)]: (pid, p) for pid, p in opt._all_params}
    v_kept, counter = {}, [-1]

    def reference(theta, step):
        counter[0] += 1
        ref_step, base = counter[0], opt.param_groups[0]["seed"]
        plain = _z(opt, opt.direction(step))
        z = {}
        for n, (pid, p) in pids.items():
            if p.ndim < 2:
                z[n] = plain[n]
                continue
            if ref_step % lazy == 0:
                v_kept[n] = gaussian(factor_seed(base, pid, 1, ref_step // lazy), (p.shape[1], rank), p).double()
            u = gaussian(factor_seed(base, pid, 0, step), (p.shape[0], rank), p).double()
            z[n] = u @ v_kept[n].t()
        g = (tiny.loss_at(_shift(theta, z, eps)) - tiny.loss_at(_shift(theta, z, -eps))) / (2 * eps)
        return {n: theta[n] - lr * g * z[n] for n in theta}

    _compare_steps(tiny, opt, reference, steps=5)


# -- SubZero ---------------------------------------------------------------------------------------
def test_subzero_is_the_reference_step_across_refreshes():
    """SubZero large_models/trainer.py: per matrix U, V = QR of N(0,1)^{m×r}, N(0,1)^{n×r}
    (fast_svd_method_v2, l.1195-1205), redrawn when global_step % update_interval == 0
    (l.894-908); z0 ~ N(0,1)^{r×r} and Z = U z0 Vᵀ·√(mn/r²) (l.756-758), vectors plain z
    (l.750-752); g two-sided (l.936-939); update through SGD(lr, momentum 0): θ ← θ - η g Z
    (l.324-325, l.979-996)."""
    tiny, eps, lr, rank, refresh = Tiny(), 1e-3, 0.02, 2, 2
    opt = SubZero(
        tiny.model.parameters(),
        lr=lr,
        eps=eps,
        rank=rank,
        refresh_steps=refresh,
        seed=23,
        engine=VirtualEngine(tiny.model),
    )
    names = {id(p): n for n, p in tiny.model.named_parameters()}
    pids = {names[id(p)]: (pid, p) for pid, p in opt._all_params}
    bases, counter = {}, [-1]

    def reference(theta, step):
        counter[0] += 1
        global_step, base = counter[0], opt.param_groups[0]["seed"]
        plain = _z(opt, opt.direction(step))
        z = {}
        for n, (pid, p) in pids.items():
            if p.ndim < 2:
                z[n] = plain[n]
                continue
            if global_step % refresh == 0:
                period = global_step // refresh
                u = torch.linalg.qr(gaussian(factor_seed(base, pid, 0, period), (p.shape[0], rank), p)).Q
                v = torch.linalg.qr(gaussian(factor_seed(base, pid, 1, period), (p.shape[1], rank), p)).Q
                bases[n] = (u.double(), v.double().t())
            u, vt = bases[n]
            z0 = gaussian(factor_seed(base, pid, 2, step), (rank, rank), p).double()
            z[n] = u @ z0 @ vt * math.sqrt(p.numel() / z0.numel())
        g = (tiny.loss_at(_shift(theta, z, eps)) - tiny.loss_at(_shift(theta, z, -eps))) / (2 * eps)
        return {n: theta[n] - lr * g * z[n] for n in theta}

    _compare_steps(tiny, opt, reference, steps=5)


def _reshape_matrix(integer):
    """SubZero @cf6effd large_models/trainer.py:1207-1213, as written."""
    factor1, factor2 = 1, integer
    for i in range(1, int(math.sqrt(integer)) + 1):
        if int(integer / i) == integer / i:
            if integer / i - i < factor2 - factor1:
                factor1, factor2 = i, integer / i
    return factor1, int(factor2)


@pytest.mark.parametrize(
    "tuning",
    [
        {"name": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        {"name": "prefix", "num_virtual_tokens": 3, "init_by_real_act": False},
    ],
    ids=["lora", "prefix"],
)
def test_subzero_draws_adapters_in_the_reference_near_square_shape(tuning):
    """SubZero large_models/trainer.py:896-901: in a lora / prefix / prompt run, U and V of each
    trainable matrix are drawn for ``reshape_matrix(numel)`` (l.1207-1213), not its own shape;
    Z = U z0 Vᵀ·√(numel/r²) is read back in the tensor's shape (``.view``, l.758). One step on a
    peft-wrapped tiny Llama (float64) equals that transcription; ``adapter_shape=tensor`` does not."""
    from tests.helpers import tiny_model
    from zobench.models import apply_tuning, trainable

    model = apply_tuning(tiny_model("llama", torch.float64), tuning, "causal", seed=0)
    named = trainable(model)
    ids = torch.randint(5, 60, (4, 6), generator=torch.Generator().manual_seed(2))

    def loss_at(theta=None):
        logits = functional_call(model, theta or {}, (ids,)).logits[:, -1]
        return float(nn.functional.cross_entropy(logits, ids[:, 0]))

    eps, lr, rank = 1e-3, 0.5, 2
    opt = SubZero(decay_groups(named, 0.0, names=True), lr=lr, eps=eps, rank=rank, seed=3, engine=VirtualEngine(model))
    names = {id(p): n for n, p in named}
    theta = {n: p.detach().clone() for n, p in named}
    base, z = opt.param_groups[0]["seed"], {}
    for pid, p in opt._all_params:
        if p.ndim != 2:
            z[names[id(p)]] = opt.direction(1).sample(pid, p).double()
            continue
        shape = _reshape_matrix(p.numel())
        assert shape != tuple(p.shape)  # the case the reference treats differently
        r = min(rank, *shape)
        u = torch.linalg.qr(gaussian(factor_seed(base, pid, 0, 0), (shape[0], r), p)).Q.double()
        v = torch.linalg.qr(gaussian(factor_seed(base, pid, 1, 0), (shape[1], r), p)).Q.double()
        z0 = gaussian(factor_seed(base, pid, 2, 1), (r, r), p).double()
        z[names[id(p)]] = (u @ z0 @ v.t() * math.sqrt(p.numel() / z0.numel())).view(p.shape)
    g = (loss_at(_shift(theta, z, eps)) - loss_at(_shift(theta, z, -eps))) / (2 * eps)
    with torch.no_grad():
        opt.step(lambda: torch.tensor(loss_at(), dtype=torch.float64))
    # Z is formed from float32 factors in float32 (peft keeps LoRA weights float32 on a float64
    # model): agreement to float32 precision; a wrong shape is off by the whole step (~1e-1)
    tol = dict(rtol=1e-5, atol=1e-6)
    for n, p in named:
        torch.testing.assert_close(p.double(), (theta[n] - lr * g * z[n]).double(), **tol, msg=n)

    for n, p in named:  # the tensor's own shape is another subspace: another step
        p.data.copy_(theta[n])
    own = SubZero(
        decay_groups(named, 0.0, names=True),
        lr=lr,
        eps=eps,
        rank=rank,
        adapter_shape="tensor",
        seed=3,
        engine=VirtualEngine(model),
    )
    with torch.no_grad():
        own.step(lambda: torch.tensor(loss_at(), dtype=torch.float64))
    matrix = next(n for n, p in named if p.ndim == 2)
    assert not torch.allclose(dict(named)[matrix].double(), (theta[matrix] - lr * g * z[matrix]).double(), **tol)


# -- the step's scale in r (LOZO: the authors' code; TeZO: the paper's formula) ----------------------
def _mean_projected_step(cls, rank, seeds=300, **kwargs):
    """E[-Δ·C]/(η‖C‖²) over seeds for one step on the linear loss ⟨C, W⟩: g = ⟨C, Z⟩ exactly, so
    this estimates E[⟨C, Z⟩²]/‖C‖² = r when Z's entries have variance r (1 if Z were U Vᵀ/√r)."""
    c = torch.linspace(-1, 1, 30, dtype=torch.float64).view(6, 5)
    total = 0.0
    for seed in range(seeds):
        weight = nn.Parameter(torch.zeros(6, 5, dtype=torch.float64), requires_grad=False)
        opt = cls([weight], lr=1.0, eps=1e-3, rank=rank, seed=seed, **kwargs)
        opt.step(lambda: (c * weight).sum())
        total += float(-(weight * c).sum()) / float((c * c).sum())
    return total / seeds


@pytest.mark.parametrize("cls,kwargs", [(LOZO, dict(lazy_steps=1)), (TeZO, {})], ids=["lozo", "tezo"])
def test_low_rank_step_grows_with_the_rank(cls, kwargs):
    one, four = _mean_projected_step(cls, 1, **kwargs), _mean_projected_step(cls, 4, **kwargs)
    assert 0.75 < one < 1.25, one
    assert 3.0 < four < 5.0, four
    assert 3.0 < four / one < 5.0


# -- DiZO and MeZO-SVRG (issue 17) ---------------------------------------------------------------
def _lm_loss(model, ids, target):
    def loss():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1].float()
        return nn.functional.cross_entropy(logits, target)

    return loss


def _batch(seed, rows=4):
    ids = torch.randint(5, 60, (rows, 6), generator=torch.Generator().manual_seed(seed))
    return ids, torch.randint(5, 60, (rows,), generator=torch.Generator().manual_seed(seed + 100))


def _same_losses(g, g_seen):
    """The transcription's own g agrees with zobench's to float32 loss rounding (amplified by
    1/2ε); the update then uses zobench's, so both apply the rule to the same losses."""
    assert abs(g - g_seen) <= 1e-3 * max(1.0, abs(g_seen)), (g, g_seen)
    return g_seen


def _reference_mezo_step(named, loss, seed_z, lr, eps, g_seen):
    """princeton-nlp/MeZO's step as DiZO's trainer.py keeps it: zo_perturb_parameters +1, -2, +1
    (l.1340-1390), projected_grad = (ℓ+ - ℓ-)/2ε, then θ ← θ - lr·g·z (l.1397-1405). z is
    zobench's (``seed_z(pid, p)``), the same tensor the engine draws."""
    zs = [seed_z(pid, p) for pid, (_, p) in enumerate(named)]
    with torch.no_grad():
        for (_, p), z in zip(named, zs):
            p.data = p.data + eps * z
        loss_plus = float(loss())
        for (_, p), z in zip(named, zs):
            p.data = p.data - 2 * eps * z
        loss_minus = float(loss())
        for (_, p), z in zip(named, zs):
            p.data = p.data + eps * z
        g = _same_losses((loss_plus - loss_minus) / (2 * eps), g_seen)
        for (_, p), z in zip(named, zs):
            p.data = p.data - lr * (g * z)


def _reference_dizo_round(named, anchors, loss, raw_zs, eps_p, step_size, tau):
    """DiZO's zo projection round, trainer.py:562-583 → DiZO.zo_forward (l.409-459) ten times,
    then apply (l.415-422 → apply_constraints l.250-282 with _project_ratio l.298-310). ``named``
    are the projected matrices (θ), ``anchors`` θ0, ``raw_zs[it]`` the N(0,1) draws of l.399."""
    gammas = [torch.zeros(1) for _ in named]

    def apply(gs):  # apply_constraints, l.259-281: ratio = γ / (‖θ-θ0‖ + 1e-8), θ ← (θ-θ0)·ratio + θ0
        alphas = []
        for (_, p), a, g in zip(named, anchors, gs):
            alpha = g / (torch.norm(p.detach() - a) + 1e-8)
            p.copy_((p.detach() - a) * alpha + a)
            alphas.append(alpha)
        return alphas

    def reverse(alphas):  # reverse_constraints, l.284-296
        for (_, p), a, alpha in zip(named, anchors, alphas):
            p.copy_((p.detach() - a) / alpha + a)

    with torch.no_grad():
        for it, raw in enumerate(raw_zs):
            ts = [torch.norm(p.data - a) for (_, p), a in zip(named, anchors)]  # l.430-433
            if it == 0:  # self.init (l.435-437, set per round at l.566)
                for g, t in zip(gammas, ts):
                    g.data = t.reshape(1).clone()
            zs = [
                torch.clip(torch.tensor([z], dtype=torch.float32), (-tau / eps_p) * t, (tau / eps_p) * t)
                for z, t in zip(raw, ts)
            ]  # l.399-400
            for g, z in zip(gammas, zs):  # perturb_gamma(+1), l.405
                g.data = g.data + 1 * z * eps_p
            alphas = apply(gammas)
            loss1 = float(loss())
            reverse(alphas)
            for g, z in zip(gammas, zs):  # perturb_gamma(-2)
                g.data = g.data + -2 * z * eps_p
            alphas = apply(gammas)
            loss2 = float(loss())
            reverse(alphas)
            for g, z in zip(gammas, zs):  # perturb_gamma(+1)
                g.data = g.data + 1 * z * eps_p
            grad = (loss1 - loss2) / (2 * eps_p)  # l.452
            for g, t, z in zip(gammas, ts, zs):  # l.454-457
                g.data = torch.clip(g.data - step_size * t * grad * z, (1 - tau) * t, (1 + tau) * t)
        apply(gammas)  # l.582: zo_forward(apply=True)


def test_dizo_step_and_round_equal_the_reference_transcription():
    ids, target = _batch(0)
    ours = tiny_model("llama")
    theirs = copy.deepcopy(ours)
    lr, eps, iters, eps_p, s, tau = 2e-2, 1e-3, 3, 0.1, 2.0, 0.2
    opt = DiZO(
        list(ours.named_parameters()),
        lr=lr,
        eps=eps,
        interval=2,
        projection_iters=iters,
        projection_eps=eps_p,
        projection_lr=s,
        clip_range=tau,
        seed=5,
        engine=VirtualEngine(ours),
    )
    named = list(theirs.named_parameters())
    projected = [(n, p) for n, p in named if n.endswith(("k_proj.weight", "v_proj.weight"))]
    assert [n for n, _ in projected] == [
        n for n, p in ours.named_parameters() if any(p is q for _, q in opt._projected)
    ] and len(projected) == 4
    anchors = [p.detach().clone() for _, p in projected]  # base_model = deepcopy(model), l.909
    for step in (1, 2):
        opt.step(_lm_loss(ours, ids, target))
        direction = opt.direction(step)
        _reference_mezo_step(
            named,
            _lm_loss(theirs, ids, target),
            lambda pid, p: direction.sample(pid, p),
            lr,
            eps,
            opt.last_step_info["projected_grad"],
        )
    # the round after step 2 (interval 2, trainer.py:1408): the same raw N(0,1) draws
    raw = [
        torch.randn(
            len(projected),
            generator=torch.Generator().manual_seed(mix_seed(5, 2, _ROUND_SALT, it)),
            dtype=torch.float64,
        ).tolist()
        for it in range(iters)
    ]
    moved = {n: p.detach().clone() for n, p in theirs.named_parameters()}
    _reference_dizo_round(projected, anchors, _lm_loss(theirs, ids, target), raw, eps_p, s, tau)
    assert any(not torch.equal(p, moved[n]) for n, p in projected)  # the round did something
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_dizo_round_scale_stays_in_the_clip_range():
    """Every projected matrix's accumulated update is rescaled by a factor in [1-τ, 1+τ]."""
    ids, target = _batch(1)
    model = tiny_model("llama")
    opt = DiZO(
        list(model.named_parameters()), lr=2e-2, interval=3, projection_iters=4, seed=0, engine=VirtualEngine(model)
    )
    anchors = {id(p): p.detach().clone() for _, p in opt._projected}
    for _ in range(2):
        opt.step(_lm_loss(model, ids, target))
    before = {id(p): p.detach().clone() for _, p in opt._projected}
    seed = opt.direction(3).seed
    opt.step(_lm_loss(model, ids, target))
    # step 3 = the MeZO step then the round: undo the MeZO step's own move to isolate the round
    for pid, p in opt._projected:
        mezo = before[id(p)] - 2e-2 * opt.last_step_info["projected_grad"] * Direction(seed).sample(pid, p)
        delta_before, delta_after = mezo - anchors[id(p)], p.detach() - anchors[id(p)]
        ratio = float(delta_after.norm() / delta_before.norm())
        assert 0.8 - 1e-4 <= ratio <= 1.2 + 1e-4
        torch.testing.assert_close(delta_after, delta_before * ratio, rtol=1e-4, atol=1e-7)  # a pure rescale


# -- MeZO-SVRG -------------------------------------------------------------------------------------


def _svrg_reference_spsa_me(params, loss, z_of, eps, lr, scale=1, g_seen=None):
    """central_difference_grad_est_me, llm_module.py:483-508 (efficient_perturb_parameters
    l.263-274: +εz, -2εz, +εz), then param += scale·lr·g·z. ``z_of(i, p)``: the z it draws
    (l.485 draws a fresh seed per call: the caller decides which z)."""
    zs = [z_of(i, p) for i, (_, p) in enumerate(params)]
    with torch.no_grad():
        for (_, p), z in zip(params, zs):
            p.data = p.data + 1 * z * eps
        loss1 = float(loss())
        for (_, p), z in zip(params, zs):
            p.data = p.data + -2 * z * eps
        loss2 = float(loss())
        for (_, p), z in zip(params, zs):
            p.data = p.data + 1 * z * eps
        g = (loss1 - loss2) / (2 * eps)
        g = g if g_seen is None else _same_losses(g, g_seen)
        for (_, p), z in zip(params, zs):
            p.data = p.data + scale * lr * g * z
    return g


def _svrg_reference_anchor(params, loss, z_of, eps, lr_aux, g_seen=None):
    """The anchor branch, llm_module.py:412-418 (SPSA_estimator → central_difference_grad_est,
    l.448-481): full_grad = g·z, θ̄ = parameters.copy() (l.415), θ ← θ - η1·full_grad."""
    zs = [z_of(i, p) for i, (_, p) in enumerate(params)]
    with torch.no_grad():
        for (_, p), z in zip(params, zs):
            p.data = p.data + z * eps
        loss1 = float(loss())
        for (_, p), z in zip(params, zs):
            p.data = p.data - 2 * z * eps
        loss2 = float(loss())
        for (_, p), z in zip(params, zs):
            p.data = p.data + z * eps
        g = (loss1 - loss2) / (2 * eps)
        g = g if g_seen is None else _same_losses(g, g_seen)
        full_grad = {n: g * z for (n, _), z in zip(params, zs)}
        bar = params.copy()  # l.415: a shallow copy of the (name, tensor) list
        for n, p in params:
            p.data = p.data - lr_aux * full_grad[n]
    return full_grad, bar


def _svrg_setup():
    ids, target = _batch(2)
    ours = tiny_model("llama")
    theirs = copy.deepcopy(ours)
    opt = MeZOSVRG(ours.parameters(), lr=1e-2, anchor_lr=3e-2, eps=1e-3, q=3, seed=7, engine=VirtualEngine(ours))
    return ours, theirs, opt, ids, target


def test_mezo_svrg_equals_the_reference_with_its_two_faults_corrected():
    """Anchor, then two inner steps (q=3). The transcription is llm_module.py:412-426 with l.415
    made a real copy (``copy.deepcopy``) and l.422-423 given the same z (seed) and evaluated on
    θ̄ with the update written into θ, i.e. θ ← θ - η2 [ĝ_B(θ; z) - ĝ_B(θ̄; z) + g]."""
    ours, theirs, opt, ids, target = _svrg_setup()
    params = list(theirs.named_parameters())
    seen = {}
    for step in (1, 2, 3):
        opt.step(_lm_loss(ours, ids, target))
        info = opt.last_step_info
        seen[step] = (
            info["projected_grad"] + info.get("projected_grad_anchor", 0.0),
            info.get("projected_grad_anchor"),
        )
    z = {step: opt.direction(step) for step in (1, 2, 3)}
    full_grad, _ = _svrg_reference_anchor(
        params, _lm_loss(theirs, ids, target), lambda i, p: z[1].sample(i, p), 1e-3, 3e-2, seen[1][0]
    )
    bar_model = copy.deepcopy(theirs)  # corrected l.415: θ̄ a real copy (taken before the anchor's move)
    with torch.no_grad():
        for (n, p), (_, b) in zip(params, bar_model.named_parameters()):
            b.copy_(p + 3e-2 * full_grad[n])  # θ̄ = θ before l.416-418 (exact to rounding)
    bar = list(bar_model.named_parameters())
    for step in (2, 3):
        # l.422: θ ← θ - η2 ĝ_B(θ; z)
        _svrg_reference_spsa_me(
            params,
            _lm_loss(theirs, ids, target),
            lambda i, p: z[step].sample(i, p),
            1e-3,
            1e-2,
            scale=-1,
            g_seen=seen[step][0],
        )
        # l.423 corrected: ĝ_B(θ̄; z) with the same z, evaluated on θ̄, added to θ
        g_bar = _svrg_reference_spsa_me(
            bar, _lm_loss(bar_model, ids, target), lambda i, p: z[step].sample(i, p), 1e-3, 0.0, g_seen=seen[step][1]
        )
        with torch.no_grad():
            for i, (n, p) in enumerate(params):
                p.data = p.data + 1e-2 * g_bar * z[step].sample(i, p)
                p.data = p.data - 1e-2 * full_grad[n]  # l.424-426
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6, msg=name)


def test_the_reference_code_evaluates_its_anchor_at_the_stepped_theta_with_another_z():
    """What llm_module.py:419-426 computes line for line: ``self.parameters`` aliases θ (l.415), so
    the second estimate (l.423) is taken at θ - η2 ĝ_B(θ; z1), not at θ̄, with a fresh z2 (l.485),
    and its +η2 ĝ lands on θ: two independent MeZO steps plus η2 g. It is not zobench's (the
    corrected) step: the two differ by far more than rounding."""
    ours, theirs, opt, ids, target = _svrg_setup()
    params = list(theirs.named_parameters())
    for _ in (1, 2):
        opt.step(_lm_loss(ours, ids, target))
    z1, z_anchor = opt.direction(2), opt.direction(1)
    full_grad, bar = _svrg_reference_anchor(
        params, _lm_loss(theirs, ids, target), lambda i, p: z_anchor.sample(i, p), 1e-3, 3e-2
    )
    assert all(b is p for (_, b), (_, p) in zip(bar, params))  # the aliasing
    after_anchor = [p.detach().clone() for _, p in params]
    g1 = _svrg_reference_spsa_me(
        params, _lm_loss(theirs, ids, target), lambda i, p: z1.sample(i, p), 1e-3, 1e-2, scale=-1
    )
    np.random.seed(0)
    fresh = Direction(int(np.random.randint(1000000000)))  # l.485: a fresh seed per call
    g2 = _svrg_reference_spsa_me(bar, _lm_loss(theirs, ids, target), lambda i, p: fresh.sample(i, p), 1e-3, 1e-2)
    with torch.no_grad():
        for n, p in params:
            p.data = p.data - 1e-2 * full_grad[n]
    # the aliased step, in closed form: θ_a - η2 g1 z1 + η2 g2 z2 - η2 g, g2 at the stepped θ
    for i, ((name, p), start) in enumerate(zip(params, after_anchor)):
        expected = start - 1e-2 * g1 * z1.sample(i, p) + 1e-2 * g2 * fresh.sample(i, p) - 1e-2 * full_grad[name]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=2e-6)
    gap = max(float((a - b).abs().max()) for a, b in zip(ours.parameters(), theirs.parameters()))
    assert gap > 1e-4  # zobench's corrected step is another step


def test_mezo_svrg_inner_estimate_has_far_less_variance_than_spsa():
    """On least squares with minibatch noise, near the anchor: the inner estimate
    v = ĝ_B(θ; z) - ĝ_B(θ̄; z) + g (given the anchor g), over fresh z and B, varies far less than
    MeZO's ĝ_B(θ; z); the reference's pairing (independent z, θ̄ aliased to the stepped θ) varies
    more than MeZO's. Measured through MeZOSVRG.step itself: v = -(Δθ)/η2."""
    gen = torch.Generator().manual_seed(0)
    d, n = 20, 256
    X, w_true = torch.randn(n, d, generator=gen), torch.randn(d, generator=gen)
    y = X @ w_true + 0.5 * torch.randn(n, generator=gen)
    model = nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(w_true + 0.3 * torch.randn(d, generator=gen))

    def loss_on(rows):
        return lambda: ((model(X[rows]).squeeze(-1) - y[rows]) ** 2).mean()

    eta = 1e-3
    opt = MeZOSVRG(model.parameters(), lr=eta, anchor_lr=1e-3, eps=1e-4, q=10_000, seed=0, engine=VirtualEngine(model))
    opt.step(loss_on(torch.arange(n)))  # the anchor on the full data
    start, state = model.weight.detach().clone(), copy.deepcopy(opt.state_dict())
    ours, spsa, aliased = [], [], []
    for trial in range(300):
        rows = torch.randint(0, n, (8,), generator=gen)
        with torch.no_grad():
            model.weight.copy_(start)
        opt.load_state_dict(copy.deepcopy(state))
        for group in opt.param_groups:
            group["step"] = 1 + trial  # steps 2, 3, ...: inner steps with fresh z
        opt.step(loss_on(rows))
        ours.append(-(model.weight.detach() - start).reshape(-1) / eta)
        info = opt.last_step_info
        z = opt.direction(2 + trial).sample(0, model.weight).reshape(-1)
        g_now = info["projected_grad"] + info["projected_grad_anchor"]
        spsa.append(g_now * z)
        # the reference's pairing: the second estimate at the stepped θ (l.422-423, aliasing) with
        # an independent z (l.485); the constant +g term does not change a variance
        other = Direction(mix_seed(99, trial)).sample(0, model.weight)
        with torch.no_grad():
            model.weight.copy_(start - eta * g_now * z.view_as(start))
        g_other = (_at(model, other, 1e-4, loss_on(rows)) - _at(model, other, -1e-4, loss_on(rows))) / 2e-4
        aliased.append(g_now * z - g_other * other.reshape(-1))
    variance = {
        k: float(torch.stack(v).var(0).sum()) for k, v in (("ours", ours), ("spsa", spsa), ("aliased", aliased))
    }
    print("inner-estimate variance (sum over coordinates):", variance)
    assert variance["ours"] < 0.01 * variance["spsa"], variance  # measured: 0.057 vs 478 (seed 0)
    assert variance["aliased"] > 1.5 * variance["spsa"], variance  # two independent estimates: ~2x (907)


def _at(model, z, scale, loss):
    """L(w + scale·z), w put back exactly."""
    with torch.no_grad():
        saved = model.weight.detach().clone()
        model.weight.add_(scale * z)
        value = float(loss())
        model.weight.copy_(saved)
    return value
