"""Triton backend on CPU through Triton's interpreter: the kernels' z is the documented Philox z
(bit for bit against the pure-torch reference), the fused sweeps do the documented float32
arithmetic, MeZO costs 3 sweeps per step, lr=0 is exact in virtual mode, and methods whose
direction transforms z (HiZOO, Sparse-MeZO) perturb and update with this backend's one z."""

import os
import sys

import pytest
import torch
from torch import nn

if "zobench.engine.triton.primitives" not in sys.modules:
    # Triton reads it when the kernels are defined, i.e. when zobench.engine.triton is first imported
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[dev]')")
pytestmark = pytest.mark.slow  # Triton's interpreter runs the kernels in Python: seconds per test

from tests.helpers import loss_of as _loss  # noqa: E402
from tests.helpers import replica_losses as _replica_losses  # noqa: E402
from tests.helpers import sequential_losses as _sequential_losses  # noqa: E402
from tests.helpers import tiny_model  # noqa: E402
from zobench.engine import Direction, build_engine, mix_seed, resolve_backend  # noqa: E402
from zobench.engine.directions import z_source  # noqa: E402
from zobench.engine.philox import philox_z  # noqa: E402
from zobench.engine.provider import row_block  # noqa: E402
from zobench.engine.triton import engines as te  # noqa: E402
from zobench.engine.triton import kernels as tk  # noqa: E402
from zobench.engine.triton.primitives import interpreted  # noqa: E402
from zobench.errors import ConfigError, MissingPackageError  # noqa: E402
from zobench.optim import HiZOO, MeZO, SparseMeZO  # noqa: E402

if not interpreted():
    pytest.skip("zobench.engine.triton was imported before TRITON_INTERPRET=1 was set", allow_module_level=True)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DISTRIBUTIONS = ["gaussian", "rademacher"]


def _reference(key, like, distribution):
    return philox_z(key, like.numel(), distribution).view(like.shape)


def _bits(t):
    return t.contiguous().view(torch.uint8)


def _weights(shape, dtype, seed=0):
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.02).to(dtype)


# --- the definition of z -------------------------------------------------------------------------


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("key", [0, 7, 2**40 + 17, mix_seed(3, 5)])
def test_kernel_z_is_the_reference_philox_z_bit_for_bit(distribution, key):
    like = torch.empty(3, 1111)  # not a multiple of the block: the masked tail is covered
    assert torch.equal(tk.generate_z(key, like, distribution), _reference(key, like, distribution))


def test_z_has_the_moments_of_its_distribution():
    gaussian = philox_z(mix_seed(1, 2), 200_000, "gaussian")
    assert abs(float(gaussian.mean())) < 0.01 and abs(float(gaussian.std()) - 1) < 0.01
    assert abs(float((gaussian**4).mean()) - 3) < 0.1  # kurtosis of a normal
    signs = philox_z(mix_seed(1, 2), 200_000, "rademacher")
    assert set(signs.unique().tolist()) == {-1.0, 1.0} and abs(float(signs.mean())) < 0.01
    other = philox_z(mix_seed(1, 3), 200_000, "gaussian")  # another parameter: unrelated
    assert abs(float((gaussian * other).mean())) < 0.01


def test_z_source_makes_direction_sample_draw_the_kernel_z():
    like = torch.empty(40, 30)
    with z_source(tk.generate_z):
        drawn = Direction(5, "gaussian").sample(3, like)
    assert torch.equal(drawn, _reference(mix_seed(5, 3), like, "gaussian"))
    assert not torch.equal(Direction(5, "gaussian").sample(3, like), drawn)  # outside: torch's z


@pytest.mark.parametrize("shape", [(40, 30), (3, 1111), (2048 + 2, 8)])
def test_rademacher_z_is_one_definition_on_every_backend(shape):
    """The kernels' Rademacher z (one Philox call per 128 signs) is the torch backend's z too."""
    like = torch.empty(shape)
    kernel = tk.generate_z(mix_seed(5, 3), like, "rademacher")
    assert torch.equal(Direction(5, "rademacher").sample(3, like), kernel)


def test_row_signs_at_any_start_are_the_reference():
    """The fused kernels draw a tile row's signs from an unaligned start (two Philox counters):
    a gather of rows whose starts fall anywhere in a 128-element counter is bit-exact."""
    cols = 132  # row i starts at element 132·i ≡ 4i (mod 128): every multiple of 4 mod 128
    weight = torch.zeros(40, cols)
    ids = torch.arange(40).flip(0)
    from zobench.engine.triton import fused as triton_fused

    out = triton_fused.perturbed_gather(ids, weight, 9, "rademacher", 1.0)
    assert torch.equal(out, _reference(9, weight, "rademacher")[ids])


# --- the sweeps ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_fused_sweep_is_the_documented_float32_formula(dtype, distribution):
    p = _weights((5, 333), dtype)
    before, key = p.clone(), 99
    tk.sweep(p, key, distribution, undo=1e-3, keep=0.99, coeff=-0.05)
    z = _reference(key, p, distribution)
    expected = (0.99 * (before.float() + 1e-3 * z) + -0.05 * z).to(dtype)
    assert torch.equal(_bits(p), _bits(expected))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_perturbed_copy_leaves_theta_alone(dtype):
    p = _weights((7, 129), dtype)
    before = p.clone()
    out = tk.perturbed_copy(p, 5, "gaussian", 1e-2)
    assert torch.equal(_bits(p), _bits(before))
    assert torch.equal(_bits(out), _bits((before.float() + 1e-2 * _reference(5, p, "gaussian")).to(dtype)))


def test_non_contiguous_parameters_use_the_row_major_element_index():
    base = _weights((6, 50), torch.float32)
    transposed = base.clone().t()  # a (50, 6) view, not contiguous
    tk.sweep(transposed, 3, "gaussian", coeff=0.5)
    expected = base.t().contiguous() + 0.5 * _reference(3, transposed, "gaussian")
    assert torch.equal(transposed, expected)


# --- engines -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_inplace_engine_fuses_restore_and_update_into_one_sweep(dtype, monkeypatch):
    """+ε, -2ε, then (1-decay)(θ+ε z) + coeff z: one kernel per parameter per sweep, 3 in all."""
    p = _weights((4, 300), dtype)
    theta = p.clone()
    launches = []
    original = tk._launch
    monkeypatch.setattr(tk, "_launch", lambda kernel, *a, **k: launches.append(kernel) or original(kernel, *a, **k))
    engine, direction, eps = te.TritonInPlaceEngine(), Direction(11), 1e-3
    engine.perturb([(0, p)], direction, eps)
    engine.perturb([(0, p)], direction, -eps)
    engine.restore_and_update([(0, p)], direction, coeff=-0.05, decay=0.01)
    assert launches == [tk._sweep_kernel] * 3
    z = _reference(mix_seed(11, 0), p, "gaussian")
    plus = (theta.float() + eps * z).to(dtype)
    minus = (plus.float() + -2 * eps * z).to(dtype)
    expected = (0.99 * (minus.float() + eps * z) + -0.05 * z).to(dtype)
    assert torch.equal(_bits(p), _bits(expected))


def _closure(model, ids):
    return lambda: model(input_ids=ids).logits.float().logsumexp(-1).mean()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_virtual_mode_lr0_leaves_every_weight_bit_identical(dtype):
    model = tiny_model("llama", dtype)
    snap = {n: p.clone() for n, p in model.named_parameters()}
    opt = MeZO(model.parameters(), lr=0.0, eps=1e-3, weight_decay=0.1, engine=build_engine("triton", "virtual", model))
    closure = _closure(model, torch.randint(0, 64, (2, 6)))
    losses = [float(opt.step(closure)) for _ in range(2)]
    assert losses[0] != float(closure())  # the perturbation reached the forward...
    assert all(torch.equal(_bits(p), _bits(snap[n])) for n, p in model.named_parameters())  # ...and left


def test_virtual_perturbation_equals_weights_moved_by_the_inplace_kernel():
    """Every parameter (the tied embedding / LM head included) gets its Philox z, once."""
    model = tiny_model("llama")
    params = list(enumerate(model.parameters()))
    closure = _closure(model, torch.randint(3, 60, (2, 7)))
    direction = Direction(42)
    virtual = te.TritonVirtualEngine(model)
    virtual.perturb(params, direction, 1e-2)
    loss_virtual = closure()
    virtual.restore(params)
    virtual.remove()
    clean = closure()
    te.TritonInPlaceEngine().perturb(params, direction, 1e-2)
    assert torch.equal(loss_virtual, closure()) and not torch.equal(loss_virtual, clean)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_perturbed_rows_are_the_rows_of_the_whole_perturbed_copy(dtype):
    """A streamed block's z depends only on its elements' indices: rows computed alone are the
    rows of the whole θ + εz, bit for bit."""
    p = _weights((300, 48), dtype)
    key = mix_seed(5, 2)
    whole = tk.perturbed_copy(p, key, "gaussian", 0.25)
    rows = row_block(48, tk.BLOCK, 1)
    assert rows * 48 % tk.BLOCK == 0
    for first in range(0, 300, rows):
        stop = min(first + rows, 300)
        block = tk.perturbed_rows(p, key, "gaussian", 0.25, first, stop)
        assert torch.equal(_bits(block), _bits(whole[first:stop]))
    with pytest.raises(ValueError, match="does not start a kernel block"):
        tk.perturbed_rows(p, key, "gaussian", 0.25, 1, 2)


def test_streamed_weights_on_triton_give_the_materialised_loss(monkeypatch):
    """Virtual mode streams the embedding / LM head in blocks of rows (the kernel with an element
    offset) and never builds their θ + εz whole: the loss is the materialised one."""
    monkeypatch.setattr(te, "STREAM_BLOCK_ELEMENTS", 1)  # 64-row blocks: the smallest the kernel's block allows
    model = tiny_model("llama")
    params = list(enumerate(model.parameters()))
    closure = _closure(model, torch.randint(3, 60, (2, 7)))
    losses, whole = [], []
    for stream_elements in (None, 1):
        engine = te.TritonVirtualEngine(model, stream_elements=stream_elements)
        original = engine.provider.values
        engine.provider.values = lambda p, *a: whole.append((stream_elements, p.dim())) or original(p, *a)
        engine.perturb(params, Direction(42), 1e-2)
        losses.append(closure())
        engine.restore(params)
        engine.remove()
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    assert (None, 2) in whole and (1, 2) not in whole


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_the_pair_kernel_is_the_copy_kernel_at_plus_and_minus_scale(dtype):
    """One z for both halves of a mirrored evaluation, and the bits of the two copies the
    sequential evaluation would make; whole, and a block of rows alone."""
    p = _weights((300, 48), dtype)
    key = mix_seed(6, 1)
    plus, minus = tk.perturbed_pair(p, key, "rademacher", 0.25)
    assert torch.equal(_bits(plus), _bits(tk.perturbed_copy(p, key, "rademacher", 0.25)))
    assert torch.equal(_bits(minus), _bits(tk.perturbed_copy(p, key, "rademacher", -0.25)))
    rows_plus, rows_minus = tk.perturbed_pair(p, key, "rademacher", 0.25, 64, 128)
    _, other = tk.perturbed_pair(p, key, "rademacher", 0.25, scale2=0.5)  # two replicas of one z
    assert torch.equal(_bits(other), _bits(tk.perturbed_copy(p, key, "rademacher", 0.5)))
    assert torch.equal(_bits(rows_plus), _bits(plus[64:128])) and torch.equal(_bits(rows_minus), _bits(minus[64:128]))


@pytest.mark.parametrize("stream", [False, True], ids=["materialised", "streamed"])
def test_a_mirrored_pair_on_triton_is_the_two_kernel_evaluations(stream, monkeypatch):
    monkeypatch.setattr(te, "STREAM_BLOCK_ELEMENTS", 1)
    model = tiny_model("llama")
    params = list(enumerate(model.parameters()))
    ids = torch.randint(3, 60, (2, 7))
    engine = te.TritonVirtualEngine(model, stream_elements=1 if stream else None)
    sequential = []
    for scale in (1e-2, -1e-2):
        engine.perturb(params, Direction(42), scale)
        sequential.append(float(_closure(model, ids)()))
    engine.restore(params)
    with engine.mirrored(params, Direction(42), 1e-2):
        logits = model(input_ids=ids.repeat(2, 1)).logits.float()
    mirrored = logits.logsumexp(-1).reshape(2, -1).mean(-1)
    torch.testing.assert_close(mirrored, torch.tensor(sequential), rtol=1e-6, atol=1e-6)
    assert sequential[0] != sequential[1]


@pytest.mark.parametrize("mode", ["inplace", "virtual"])
def test_a_mezo_step_is_the_analytic_update_with_the_kernel_z(mode):
    """θ' = (1-ηλ)θ - η g z, g = (L(θ+εz) - L(θ-εz))/2ε, z the reference Philox z."""
    gen = torch.Generator().manual_seed(0)
    inputs, targets = torch.randn(16, 5, generator=gen), torch.randn(16, 2, generator=gen)
    model = nn.Linear(5, 2).requires_grad_(False)
    theta = [p.clone() for p in model.parameters()]
    lr, eps, decay = 0.1, 1e-2, 0.5

    def loss():
        return ((model(inputs) - targets) ** 2).mean()

    opt = MeZO(
        [{"params": [model.weight], "weight_decay": decay}, {"params": [model.bias], "weight_decay": 0.0}],
        lr=lr,
        eps=eps,
        seed=3,
        engine=build_engine("triton", mode, model),
    )
    opt.step(loss)
    stepped = [p.clone() for p in model.parameters()]
    seed = opt.direction(1).seed
    zs = [_reference(mix_seed(seed, pid), t, "gaussian") for pid, t in enumerate(theta)]

    def loss_at(scale):
        with torch.no_grad():
            for p, t, z in zip(model.parameters(), theta, zs):
                p.copy_(t + scale * z)
        return float(loss())

    g = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    assert opt.last_step_info["projected_grad"] == pytest.approx(g, rel=1e-4)
    g = opt.last_step_info["projected_grad"]
    for t, z, p, lam in zip(theta, zs, stepped, (decay, 0.0)):
        torch.testing.assert_close(p, (1 - lr * lam) * t - lr * g * z, rtol=0, atol=1e-6)


def test_mezo_on_triton_is_reproducible_from_its_seed():
    results = []
    for _ in range(2):
        model = tiny_model("llama")
        opt = MeZO(model.parameters(), lr=1e-2, eps=1e-3, seed=4, engine=build_engine("triton", "virtual", model))
        opt.step(_closure(model, torch.arange(12).view(2, 6)))
        results.append([p.clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_hizoo_perturbs_and_updates_with_the_same_kernel_z():
    """HiZOO perturbs with z/√Σ (a Direction subclass: the torch path) and updates through
    ``foreach`` with the plain Direction: both must be this backend's z (Σ = 1 at step 1)."""
    gen = torch.Generator().manual_seed(1)
    inputs, targets = torch.randn(16, 5, generator=gen), torch.randn(16, 2, generator=gen)
    model = nn.Linear(5, 2).requires_grad_(False)
    theta = [p.clone() for p in model.parameters()]
    lr, eps = 0.1, 1e-2
    opt = HiZOO(
        model.parameters(), lr=lr, eps=eps, hessian_smooth=0.1, seed=2, engine=build_engine("triton", "virtual", model)
    )
    opt.step(lambda: ((model(inputs) - targets) ** 2).mean())
    stepped = [p.clone() for p in model.parameters()]
    seed = opt.direction(1).seed
    zs = [_reference(mix_seed(seed, pid), t, "gaussian") for pid, t in enumerate(theta)]
    with torch.no_grad():
        for p, t, z in zip(model.parameters(), theta, zs):
            p.copy_(torch.add(t, z, alpha=eps))
        loss_plus = float(((model(inputs) - targets) ** 2).mean())
        for p, t in zip(model.parameters(), theta):
            p.copy_(t)
    assert opt.last_step_info["loss_plus"] == loss_plus
    g, curvature = opt.last_step_info["projected_grad"], opt.last_step_info["curvature"]
    for t, z, p in zip(theta, zs, stepped):
        new_sigma = (1 - 0.1) + 0.1 * curvature * z * z  # Σ' from Σ = 1: the update uses z/√Σ' (HiZOO l.512)
        torch.testing.assert_close(p, t - lr * g * z / new_sigma.sqrt(), rtol=0, atol=1e-6)


def test_sparse_mezo_masks_the_kernel_z():
    model = nn.Linear(40, 30).requires_grad_(False)
    theta = model.weight.clone()
    x = torch.randn(8, 40, generator=torch.Generator().manual_seed(2))
    opt = SparseMeZO(
        model.parameters(), lr=0.5, eps=1e-3, sparsity=0.75, seed=5, engine=build_engine("triton", "virtual", model)
    )
    opt.step(lambda: model(x).square().mean())
    mask = theta.abs() <= theta.abs().flatten().kthvalue(300).values  # the 25% smallest move
    z = _reference(mix_seed(opt.direction(1).seed, 0), theta, "gaussian")
    g = opt.last_step_info["projected_grad"]
    torch.testing.assert_close(model.weight, theta - 0.5 * g * z * mask, rtol=0, atol=1e-6)


def test_foreach_hands_out_the_kernel_z():
    p = torch.zeros(10, 10)
    seen = []
    te.TritonInPlaceEngine().foreach([(4, p)], Direction(8, "rademacher"), lambda pid, q, piece: seen.append(piece))
    assert len(seen) == 1 and (seen[0].start, seen[0].stop) == (0, 100)  # the kernels' z is drawn whole
    assert torch.equal(seen[0].z, _reference(mix_seed(8, 4), p, "rademacher").view(-1))


# --- selection -----------------------------------------------------------------------------------


def test_build_engine_selects_the_triton_engines():
    model = tiny_model("llama")
    assert type(build_engine("triton", "inplace", model)) is te.TritonInPlaceEngine
    assert type(build_engine("triton", "virtual", model)) is te.TritonVirtualEngine
    assert resolve_backend("auto", model) == "torch"  # CPU: the interpreter is for tests only


def test_auto_picks_triton_for_a_model_on_cuda(monkeypatch):
    import zobench.engine as engine

    monkeypatch.setattr(engine, "_model_on_cuda", lambda model: True)
    assert resolve_backend("auto", nn.Linear(2, 2)) == "triton"
    monkeypatch.setattr(engine, "_triton_installed", lambda: False)
    assert resolve_backend("auto", nn.Linear(2, 2)) == "torch"


def test_triton_off_cuda_without_the_interpreter_is_a_config_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ConfigError, match="engine.backend=triton needs the model on CUDA"):
        build_engine("triton", "virtual", nn.Linear(2, 2))


def test_triton_not_installed_is_a_missing_package_error(monkeypatch):
    import zobench.engine as engine

    monkeypatch.setattr(engine, "_triton_installed", lambda: False)
    with pytest.raises(MissingPackageError, match="pip install 'triton"):
        build_engine("triton", "inplace")


# --- batched replicas and forward-mode duals measure along the kernels' z --------------------------


def test_batched_replicas_on_triton_measure_along_the_kernel_z():
    """Batched FZOO evaluates N perturbations in one forward; on this backend they must be the
    Philox z that the update sweeps then move along (torch's z there would make FZOO's update
    unrelated to what it measured)."""
    model = tiny_model("llama")
    params = list(enumerate(model.parameters()))
    engine = build_engine("triton", "virtual", model)
    directions = [Direction(seed, "rademacher") for seed in range(3)]
    ids = torch.randint(3, 60, (2, 6), generator=torch.Generator().manual_seed(2))
    sequential = _sequential_losses(engine, params, model, ids, directions)
    with torch.no_grad(), engine.replicas(params, directions, 1e-2):
        batched = _replica_losses(model, ids, 3)
    torch.testing.assert_close(batched, torch.tensor(sequential), rtol=1e-5, atol=1e-5)


def test_forward_mode_dual_on_triton_is_the_derivative_along_the_kernel_z():
    import torch.autograd.forward_ad as fwAD

    model = tiny_model("llama", torch.float64)
    params = list(enumerate(model.parameters()))
    engine = build_engine("triton", "virtual", model)
    direction = Direction(5)
    ids = torch.randint(3, 60, (2, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), engine.dual(params, direction):
        _, tangent = fwAD.unpack_dual(_loss(model, ids))
    model.requires_grad_(True)
    grads = torch.autograd.grad(_loss(model, ids), [p for _, p in params], allow_unused=True)
    along_kernel_z = sum(
        float((g * _reference(mix_seed(5, pid), p, "gaussian").double()).sum())
        for (pid, p), g in zip(params, grads)
        if g is not None
    )
    assert float(tangent) == pytest.approx(along_kernel_z, rel=1e-6)


def test_batched_fzoo_on_triton_steps_as_sequential_fzoo():
    """End to end: one FZOO step with the N directions in one batched forward equals the step
    with N sequential perturbed forwards, on this backend."""
    from zobench.optim import FZOO

    ids = torch.randint(3, 60, (2, 6), generator=torch.Generator().manual_seed(4))
    stepped = {}
    for batched in (True, False):
        model = tiny_model("llama")

        def closure(replicas=1, _model=model):
            return _replica_losses(_model, ids, replicas) if replicas > 1 else _loss(_model, ids)

        opt = FZOO(
            model.parameters(),
            lr=1e-3,
            eps=1e-2,
            num_directions=3,
            batched=batched,
            seed=6,
            engine=build_engine("triton", "virtual", model),
        )
        with torch.no_grad():
            opt.step(closure if batched else (lambda _c=closure: _c()))
        stepped[batched] = [p.clone() for p in model.parameters()]
    for a, b in zip(stepped[True], stepped[False]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
