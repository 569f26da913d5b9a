"""The dtype of optimizer state: ZO-Adam's ``state_dtype`` (bf16 state, as torch Adam keeps it on
ZO-Bench's bf16 models, never decays v) and ``ZOOptimizer.load_state_dict`` keeping the saved
dtypes (torch casts floating state to the parameter's dtype)."""

import copy

import pytest
import torch

from zobench.optim import HiZOO, ZOAdam, ZOSGDSign


def _loss_of(x):
    def loss():
        return (x.float() ** 2).sum()

    return loss


def test_bf16_state_never_decays_v_where_fp32_does():
    """After one informative step, steps with g = 0 (a constant loss) only decay v: v·β2 rounds
    back to v in bfloat16 (β2 = 0.999 changes v by less than half an ulp), so v stays put."""
    states = {}
    for dtype in ("float32", "bfloat16"):
        x = torch.nn.Parameter(torch.linspace(-1, 1, 64))
        opt = ZOAdam([x], lr=1e-3, state_dtype=dtype, seed=1)
        opt.step(_loss_of(x))
        first = opt.state[x]["exp_avg_sq"].clone()
        for _ in range(20):
            opt.step(lambda: torch.tensor(1.0))
        states[dtype] = (first, opt.state[x]["exp_avg_sq"])
    first, last = states["bfloat16"]
    assert last.dtype == torch.bfloat16 and torch.equal(first, last) and first.abs().sum() > 0
    first, last = states["float32"]
    torch.testing.assert_close(last, first * 0.999**20)


def test_bf16_state_steps_like_torch_adam_on_a_bf16_parameter():
    """The bf16 path is torch Adam's arithmetic in bf16 (ZO-Bench trainer.py:316 on a bf16 model):
    given the same bf16 gradient, v is torch.optim.Adam's bit for bit, and m (β1 m + (1-β1) ĝ
    where torch lerps) within a few bf16 roundings."""
    x = torch.nn.Parameter(torch.linspace(-1, 1, 64))
    opt = ZOAdam([x], lr=1e-3, state_dtype="bfloat16", seed=2)
    y = torch.nn.Parameter(x.detach().to(torch.bfloat16))
    adam = torch.optim.Adam([y], lr=1e-3, foreach=False)
    for _ in range(5):
        y.data.copy_(x.detach())  # both from the same weights: one step compared at a time
        step = opt.param_groups[0]["step"] + 1
        opt.step(_loss_of(x))
        z = opt.direction(step).sample(0, x)
        y.grad = (opt.last_step_info["projected_grad"] * z).to(torch.bfloat16)
        adam.step()
    assert torch.equal(opt.state[x]["exp_avg_sq"], adam.state[y]["exp_avg_sq"])
    torch.testing.assert_close(opt.state[x]["exp_avg"], adam.state[y]["exp_avg"], rtol=0.05, atol=1e-6)


@pytest.mark.parametrize(
    ("make", "dtype"),
    [
        (lambda p: ZOAdam([p], lr=1e-2, seed=3), torch.float16),
        (lambda p: HiZOO([p], lr=1e-2, hessian_smooth=0.5, seed=3), torch.float16),
        (lambda p: ZOSGDSign([p], lr=1e-2, base="adamw", seed=3), torch.float16),
        (lambda p: ZOAdam([p], lr=1e-2, state_dtype="bfloat16", seed=3), torch.float32),
    ],
    ids=["zo_adam-fp16", "hizoo-fp16", "zo_sgd_sign_adamw-fp16", "zo_adam-bf16_state"],
)
def test_resume_keeps_the_state_dtype_and_steps_identically(make, dtype):
    """torch's ``load_state_dict`` would cast fp32 moments of an fp16 model to fp16 (and bf16
    state of an fp32 one to fp32): another optimizer after a resume. The saved dtype is kept, and
    the resumed optimizer's next step is the uninterrupted one's, bit for bit."""
    x = torch.nn.Parameter(torch.linspace(-1, 1, 32).to(dtype))
    opt = make(x)
    for _ in range(2):
        opt.step(_loss_of(x))
    saved, weights = copy.deepcopy(opt.state_dict()), x.detach().clone()
    opt.step(_loss_of(x))
    expected = x.detach().clone()

    x.data.copy_(weights)
    resumed = make(x)
    resumed.load_state_dict(saved)
    for key, value in opt.state[x].items():
        assert resumed.state[x][key].dtype == value.dtype, key
    resumed.step(_loss_of(x))
    assert torch.equal(x, expected)
