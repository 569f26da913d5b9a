"""Perturbation inside the matmul (``engine.fused_linear``), through Triton's interpreter: the
GEMM's in-tile θ + εz is the unfused engine's perturbed copy (the same z, the same rounding), the
gather reads exactly the looked-up rows of it, and a model evaluated with the fused kernels never
builds a 2-D θ + εz yet gives the unfused losses, single, mirrored and per replica, in every family."""

import os
import sys

import pytest
import torch
import torch.nn.functional as F

if "zobench.engine.triton.primitives" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are defined (first import)
pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[dev]')")
pytestmark = pytest.mark.slow  # Triton's interpreter runs the kernels in Python: seconds per test

from tests.helpers import TINY_ARCHS, tiny_model  # noqa: E402
from tests.helpers import loss_of as _loss  # noqa: E402
from tests.helpers import replica_losses as _replica_losses  # noqa: E402
from tests.helpers import sequential_losses as _sequential_losses  # noqa: E402
from zobench.engine import Direction, build_engine, mix_seed  # noqa: E402
from zobench.engine.triton import engines as te  # noqa: E402
from zobench.engine.triton import fused as tf  # noqa: E402
from zobench.engine.triton import kernels as tk  # noqa: E402
from zobench.engine.triton.primitives import interpreted  # noqa: E402
from zobench.errors import ConfigError  # noqa: E402
from zobench.optim import MeZO  # noqa: E402

if not interpreted():
    pytest.skip("zobench.engine.triton was imported before TRITON_INTERPRET=1 was set", allow_module_level=True)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DISTRIBUTIONS = ["gaussian", "rademacher"]


def _bits(t):
    return t.contiguous().view(torch.uint8)


def _tensor(shape, dtype, seed, std=1.0):
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * std).to(dtype)


def _ulp(values, dtype):
    """One unit in the last place of ``dtype`` at ``values`` (the output's final rounding)."""
    return torch.finfo(dtype).eps * values.abs().clamp_min(torch.finfo(dtype).tiny)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("rows", [1, 21, 40, 70, 130])  # every x tile height, and masked tails
def test_fused_linear_is_the_linear_map_of_the_perturbed_copy(dtype, distribution, rows):
    """y = x·fl(W + sZ)ᵀ + b with fl(W + sZ) the bits of ``perturbed_copy``: within one rounding
    of the exact product of those very operands (N=70, K=100: neither a multiple of a tile)."""
    weight, bias = _tensor((70, 100), dtype, 0, 0.02), _tensor((70,), dtype, 1, 0.1)
    x = _tensor((rows, 100), dtype, 2)
    key, scale = mix_seed(9, 4), 0.05
    y = tf.perturbed_linear(x, weight, bias, key, distribution, scale)
    perturbed = tk.perturbed_copy(weight, key, distribution, scale)
    exact = x.double() @ perturbed.double().T + bias.double()
    assert y.dtype == dtype and y.shape == (rows, 70)
    # float32 accumulation over K=100 terms: a few float32 ulps of the terms' scale, then one rounding
    slack = 4 * 100 * torch.finfo(torch.float32).eps * (x.double().abs() @ perturbed.double().abs().T)
    assert bool(((y.double() - exact).abs() <= _ulp(exact, dtype) + slack).all())
    wrong_z = tk.perturbed_copy(weight, key + 1, distribution, scale)
    assert not torch.allclose(y.double(), x.double() @ wrong_z.double().T + bias.double(), rtol=0, atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_pair_is_the_two_single_products_bit_for_bit(dtype):
    """The mirrored pair shares each tile's load and z: its halves are the single kernel at +s
    and at -s, bit for bit, biases included."""
    weight = _tensor((40, 64), dtype, 3, 0.02)
    x_plus, x_minus = _tensor((2, 5, 64), dtype, 4), _tensor((2, 5, 64), dtype, 5)
    b_plus, b_minus = _tensor((40,), dtype, 6), _tensor((40,), dtype, 7)
    key = mix_seed(1, 2)
    plus, minus = tf.perturbed_linear(x_plus, weight, b_plus, key, "gaussian", 0.1, x_minus=x_minus, bias_minus=b_minus)
    assert plus.shape == (2, 5, 40)
    assert torch.equal(_bits(plus), _bits(tf.perturbed_linear(x_plus, weight, b_plus, key, "gaussian", 0.1)))
    assert torch.equal(_bits(minus), _bits(tf.perturbed_linear(x_minus, weight, b_minus, key, "gaussian", -0.1)))
    with pytest.raises(ValueError, match="bias_minus"):
        tf.perturbed_linear(x_plus, weight, b_plus, key, "gaussian", 0.1, x_minus=x_minus)
    # any two replicas of one direction, not only ±s: the second at its own scale
    _, other = tf.perturbed_linear(
        x_plus, weight, b_plus, key, "gaussian", 0.1, x_minus=x_minus, bias_minus=b_minus, scale_minus=0.3
    )
    assert torch.equal(_bits(other), _bits(tf.perturbed_linear(x_minus, weight, b_minus, key, "gaussian", 0.3)))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_fused_gather_is_the_lookup_in_the_perturbed_copy_bit_for_bit(dtype, distribution):
    weight = _tensor((300, 136), dtype, 8, 0.02)  # 136 columns: two column tiles, the second masked
    ids = torch.tensor([[0, 299, 17, 17], [5, 150, 0, 298]])  # repeats, both ends of the table
    key = mix_seed(3, 7)
    out = tf.perturbed_gather(ids, weight, key, distribution, -0.25)
    assert out.shape == (2, 4, 136)
    assert torch.equal(_bits(out), _bits(F.embedding(ids, tk.perturbed_copy(weight, key, distribution, -0.25))))
    with pytest.raises(IndexError, match="index out of range"):
        tf.perturbed_gather(torch.tensor([300]), weight, key, distribution, 0.1)


def test_only_row_lengths_divisible_by_4_are_fused():
    """A tile row must start on a Philox counter (4 elements each); other weights are refused by
    the kernels and left to the unfused path by the engine."""
    assert tf.fusable(torch.empty(8, 12)) and not tf.fusable(torch.empty(8, 10))
    assert not tf.fusable(torch.empty(12, 8).T) and not tf.fusable(torch.empty(16))
    assert not tf.fusable(torch.empty(8, 12, dtype=torch.float64))
    with pytest.raises(ValueError, match="divisible by 4"):
        tf.perturbed_linear(torch.ones(2, 10), torch.ones(3, 10), None, 1, "gaussian", 0.1)


# --- the engine ----------------------------------------------------------------------------------


def _no_weight_sized_copy(engine, monkeypatch):
    """Record the shapes of every θ + εz the unfused kernels make for this engine."""
    made = []
    for name in ("perturbed_copy", "perturbed_rows", "perturbed_pair"):
        original = getattr(te, name)

        def spy(p, *args, _original=original, **kwargs):
            made.append(tuple(p.shape))
            return _original(p, *args, **kwargs)

        monkeypatch.setattr(te, name, spy)
    return made


@pytest.mark.parametrize("family", list(TINY_ARCHS))
def test_fused_engine_gives_the_unfused_losses_without_a_perturbed_matrix(family, monkeypatch):
    """Single (+ε, -ε) and mirrored evaluations: the unfused engine's losses, while the only θ + εz
    written is that of 1-D parameters (biases, norms)."""
    model = tiny_model(family)
    params = list(enumerate(model.parameters()))
    ids = torch.randint(3, 40, (2, 7), generator=torch.Generator().manual_seed(1))
    direction = Direction(11)
    losses = {}
    for fused in (False, True):
        engine = te.TritonVirtualEngine(model, fused_linear=fused)
        made = _no_weight_sized_copy(engine, monkeypatch) if fused else []
        single = _sequential_losses(engine, params, model, ids, [direction, direction], (1e-2, -1e-2))
        with torch.no_grad(), engine.mirrored(params, direction, 1e-2):
            mirrored = _replica_losses(model, ids, 2)
        engine.remove()
        monkeypatch.undo()
        losses[fused] = (torch.tensor(single), mirrored)
        if fused:
            assert made and all(len(shape) == 1 for shape in made), made
    torch.testing.assert_close(losses[True][0], losses[False][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses[True][1], losses[False][1], rtol=1e-5, atol=1e-5)
    assert losses[True][0][0] != losses[True][0][1]


def test_fused_replicas_equal_sequential_fused_evaluations(monkeypatch):
    model = tiny_model("opt")
    params = list(enumerate(model.parameters()))
    engine = te.TritonVirtualEngine(model, fused_linear=True)
    directions = [Direction(seed, "rademacher") for seed in range(3)]
    ids = torch.randint(3, 60, (2, 6), generator=torch.Generator().manual_seed(2))
    sequential = _sequential_losses(engine, params, model, ids, directions)
    made = _no_weight_sized_copy(engine, monkeypatch)
    with torch.no_grad(), engine.replicas(params, directions, 1e-2):
        batched = _replica_losses(model, ids, 3)
    torch.testing.assert_close(batched, torch.tensor(sequential), rtol=1e-5, atol=1e-5)
    assert all(len(shape) == 1 for shape in made), made


def test_transformed_directions_take_the_unfused_path():
    """A direction that transforms z (HiZOO's z/√Σ, Sparse-MeZO's mask) is not the kernels' plain
    z: the fused engine must perturb along the transformed one, as the unfused engine does."""
    from zobench.optim.sparse_mezo import MaskedDirection

    model = tiny_model("llama")
    params = list(enumerate(model.parameters()))
    ids = torch.randint(3, 60, (2, 6), generator=torch.Generator().manual_seed(3))
    direction = MaskedDirection(4, thresholds={pid: float(p.abs().median()) for pid, p in params})
    losses = []
    for fused in (False, True, "plain"):
        if fused == "plain":  # the same seed unmasked: another loss, so the mask was applied
            direction = Direction(4)
        engine = te.TritonVirtualEngine(model, fused_linear=bool(fused))
        with torch.no_grad():
            engine.perturb(params, direction, 1e-2)
            losses.append(float(_loss(model, ids)))
            engine.restore(params)
        engine.remove()
    assert losses[0] == pytest.approx(losses[1], rel=1e-6) and losses[2] != pytest.approx(losses[0], rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_fused_mezo_steps_like_the_unfused_engine_and_lr0_is_exact(dtype):
    """Same steps as the unfused engine (the projected gradient to rounding, the update sweep
    the same kernel), and lr=0 leaves every weight bit-identical: the fused kernels write none."""
    ids = torch.randint(3, 60, (2, 6), generator=torch.Generator().manual_seed(5))
    grads, weights = [], []
    for fused in (False, True):
        model = tiny_model("llama", dtype)
        opt = MeZO(
            model.parameters(),
            lr=1e-3,
            eps=1e-2,
            seed=2,
            engine=build_engine("triton", "virtual", model, fused_linear=fused),
        )
        with torch.no_grad():
            opt.step(
                lambda replicas=1, m=model: (
                    _replica_losses(m, ids, replicas).float() if replicas > 1 else _loss(m, ids).float()
                )
            )
        grads.append(opt.last_step_info["projected_grad"])
        weights.append(torch.cat([p.float().flatten() for p in model.parameters()]))
    assert grads[1] == pytest.approx(grads[0], rel=1e-2, abs=1e-3)
    model = tiny_model("llama", dtype)
    snapshot = [p.clone() for p in model.parameters()]
    opt = MeZO(model.parameters(), lr=0.0, eps=1e-2, engine=build_engine("triton", "virtual", model, fused_linear=True))
    with torch.no_grad():
        opt.step(lambda replicas=1: _replica_losses(model, ids, replicas) if replicas > 1 else _loss(model, ids))
    assert all(torch.equal(_bits(p), _bits(s)) for p, s in zip(model.parameters(), snapshot))


def test_fused_linear_needs_the_triton_virtual_engine():
    model = tiny_model("llama")
    with pytest.raises(ConfigError, match="engine.fused_linear=true needs the Triton backend in virtual mode"):
        build_engine("torch", "virtual", model, fused_linear=True)
    with pytest.raises(ConfigError, match="engine.mode=inplace"):
        build_engine("triton", "inplace", model, fused_linear=True)
    assert build_engine("triton", "virtual", model, fused_linear=True).fused_linear


# --- the OPT-1.3B shapes (issue 21: the Triton virtual engine was reported to stall there) -------


@pytest.mark.slow
@pytest.mark.parametrize("dtype, distribution", [(torch.float16, "gaussian"), (torch.bfloat16, "rademacher")], ids=str)
def test_every_kernel_runs_the_opt_1_3b_shapes_to_the_reference_bits(dtype, distribution):
    """Where OPT-1.3B differs from OPT-30B: rows of 2048 and 8192 elements (hidden, ffn), its 2050
    learned positions, OPT's 50272-row vocabulary. Each kernel terminates on them with the
    reference's bits at the real element indices: the streamed ± pair on the positions' last rows,
    the gather of the vocabulary's last rows, the fused GEMM's 128-tile loop over 8192-element rows
    (a few rows of W: the interpreter is slow). ``tests/engine/test_launch.py`` checks the grids and
    index widths of every shape of every config without running them."""
    from zobench.engine.philox import philox_z, philox_z_at

    key, scale = mix_seed(4, 1), 1e-3
    positions = _tensor((2050, 2048), dtype, 0, 0.02)
    plus, minus = tk.perturbed_pair(positions, key, distribution, scale, 2046, 2050)
    z = philox_z_at(key, torch.arange(2046 * 2048, 2050 * 2048), distribution).view(4, 2048)
    assert torch.equal(_bits(plus), _bits((positions[2046:].float() + scale * z).to(dtype)))
    assert torch.equal(_bits(minus), _bits((positions[2046:].float() + -scale * z).to(dtype)))

    vocabulary = torch.zeros(50272, 2048, dtype=dtype)
    ids = torch.tensor([50271, 0, 50270, 25136])
    rows = tf.perturbed_gather(ids, vocabulary, key, distribution, 1.0)
    z = philox_z_at(key, (ids[:, None] * 2048 + torch.arange(2048)).view(-1), distribution).view(4, 2048)
    assert torch.equal(_bits(rows), _bits(z.to(dtype)))

    fc2 = _tensor((20, 8192), dtype, 1, 0.02)  # 20 of fc2's 2048 rows: one masked column tile
    x = _tensor((3, 8192), dtype, 2)
    y = tf.perturbed_linear(x, fc2, None, key, distribution, scale)
    perturbed = (fc2.float() + scale * philox_z(key, fc2.numel(), distribution).view(fc2.shape)).to(dtype)
    exact = x.double() @ perturbed.double().T
    slack = 4 * 8192 * torch.finfo(torch.float32).eps * (x.double().abs() @ perturbed.double().abs().T)
    assert bool(((y.double() - exact).abs() <= _ulp(exact, dtype) + slack).all())
