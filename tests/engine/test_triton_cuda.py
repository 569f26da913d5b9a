"""Triton backend compiled for a real GPU (skipped without CUDA, and under the interpreter).

The interpreter tests (test_triton_backend.py) pin the definition of z bit for bit; here the same
kernels are compiled by Triton for the GPU, where ``tl.randn4x``'s log/cos/sin are the device's: z must
match the reference to float32 rounding, the sweeps must do the documented float32 arithmetic
with one rounding, the 64-bit index path (tensors of 2^31+ elements) must draw the right z, and
the engines must be exact where they claim it. Run it alone, on a GPU machine:

    python -m pytest tests/engine/test_triton_cuda.py

(test_triton_backend.py sets TRITON_INTERPRET=1 when it is imported first; in one session with
it, these tests skip.)
"""

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[dev]')")

from tests.helpers import tiny_model  # noqa: E402
from zobench.engine import Direction, build_engine, mix_seed  # noqa: E402
from zobench.engine.philox import philox_z, philox_z_at  # noqa: E402
from zobench.engine.triton import engines as te  # noqa: E402
from zobench.engine.triton import kernels as tk  # noqa: E402
from zobench.engine.triton.primitives import interpreted  # noqa: E402
from zobench.optim import MeZO  # noqa: E402

if interpreted():
    pytest.skip("TRITON_INTERPRET=1: the kernels were built for the interpreter", allow_module_level=True)

CUDA = torch.device("cuda")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ULP_OF_ONE = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def _weights(shape, dtype, seed=0):
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.02).to(dtype).to(CUDA)


def _within_one_ulp(out, ref, dtype, scale=None):
    """|out - ref| ≤ one unit in the last place of dtype at the magnitude of ref or of the
    operands (``scale``): FMA contraction on the GPU rounds the float32 intermediate differently,
    which matters where the operands cancel (a small result of large terms)."""
    magnitude = ref.float().abs() if scale is None else torch.maximum(ref.float().abs(), scale.float().abs())
    ulp = ULP_OF_ONE[dtype] * torch.exp2(torch.floor(torch.log2(magnitude.clamp_min(2.0**-14))))
    if dtype != torch.float32:
        ulp = ulp + 2.0**-23 * magnitude  # the float32 intermediate's own error, before rounding
    return bool(((out.float() - ref.float()).abs() <= 2 * ulp).all())


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
@pytest.mark.parametrize("key", [0, 2**40 + 17, mix_seed(3, 5)])
def test_compiled_z_is_the_reference_z_to_float32_rounding(distribution, key):
    like = torch.empty(3, 100_003, device=CUDA)
    z = tk.generate_z(key, like, distribution).cpu().flatten()
    ref = philox_z(key, like.numel(), distribution)
    if distribution == "rademacher":
        assert torch.equal(z, ref)  # integer bits only: no transcendental in the way
    else:
        # the device's log/cos against numpy's: a few float32 ulps, more near u → 0 (large |z|)
        torch.testing.assert_close(z, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_compiled_sweep_is_the_documented_float32_formula(dtype, distribution):
    theta = _weights((257, 1031), dtype)
    key, undo, keep, coeff = mix_seed(11, 2), 1e-3, 1 - 1e-4, -3e-4
    z = tk.generate_z(key, theta, distribution)
    expected = (keep * (theta.float() + undo * z) + coeff * z).to(dtype)
    out = theta.clone()
    tk.sweep(out, key, distribution, undo=undo, keep=keep, coeff=coeff)
    operands = theta.float().abs() + (undo + abs(coeff)) * z.abs()
    assert _within_one_ulp(out, expected, dtype, scale=operands)
    if dtype != torch.float32:  # in half precision the single rounding hides the FMA's ulp
        assert (out == expected).float().mean() > 0.99


@pytest.mark.parametrize("dtype", DTYPES)
def test_compiled_perturbed_copy_leaves_theta_alone(dtype):
    theta = _weights((64, 333), dtype)
    before = theta.clone()
    key = mix_seed(5, 9)
    out = tk.perturbed_copy(theta, key, "gaussian", 1e-2)
    assert torch.equal(theta, before)
    z = tk.generate_z(key, theta, "gaussian")
    assert _within_one_ulp(out, (theta.float() + 1e-2 * z).to(dtype), dtype, scale=theta.float().abs() + 1e-2 * z.abs())


def test_tensors_past_2_31_elements_draw_z_at_their_64_bit_index():
    """The element index is the Philox counter; past 2^31 it needs the counter's high word."""
    free, _ = torch.cuda.mem_get_info()
    numel = 2**31 + 4096
    if free < 3 * numel * 2 + 2**30:
        pytest.skip("needs ~13 GB of free GPU memory")
    theta = torch.zeros(numel, dtype=torch.bfloat16, device=CUDA)
    key, scale = mix_seed(7, 1), 1.0
    out = tk.perturbed_copy(theta, key, "rademacher", scale)
    tail = torch.arange(numel - 4096, numel, dtype=torch.int64)
    assert torch.equal(out[-4096:].cpu(), philox_z_at(key, tail, "rademacher").to(torch.bfloat16))
    assert torch.equal(out[:4096].cpu(), philox_z(key, 4096, "rademacher").to(torch.bfloat16))
    del out
    # and the Gaussian path at the same far offsets (float32 rounding of the device's log/cos/sin)
    z = tk.generate_z(key, theta, "gaussian")[-4096:].cpu()
    torch.testing.assert_close(z, philox_z_at(key, tail, "gaussian"), rtol=1e-5, atol=1e-5)


def _closure(model, ids):
    def loss():
        logits = model(input_ids=ids).logits.float()
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

    return loss


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_virtual_mode_lr0_leaves_every_weight_bit_identical_on_the_gpu(dtype):
    model = tiny_model("llama", dtype).to(CUDA)
    snap = {n: p.clone() for n, p in model.named_parameters()}
    opt = MeZO(model.parameters(), lr=0.0, eps=1e-3, engine=build_engine("triton", "virtual", model))
    closure = _closure(model, torch.randint(0, 64, (2, 6), device=CUDA))
    clean = float(closure())
    losses = [float(opt.step(closure)) for _ in range(50)]
    assert any(loss != clean for loss in losses)  # the perturbation reached the forward...
    assert all(torch.equal(p, snap[n]) for n, p in model.named_parameters())  # ...and left nothing


def test_virtual_and_inplace_kernels_perturb_alike_and_step_alike():
    """Same Philox z in both modes: the perturbed loss and a MeZO step agree (fp32)."""
    ids = torch.randint(3, 60, (2, 7), device=CUDA)
    results = {}
    for mode in ("virtual", "inplace"):
        model = tiny_model("llama").to(CUDA)
        opt = MeZO(model.parameters(), lr=1e-2, eps=1e-3, seed=2, engine=build_engine("triton", mode, model))
        opt.step(_closure(model, ids))
        results[mode] = (opt.last_step_info["projected_grad"], [p.clone() for p in model.parameters()])
    (g_virtual, p_virtual), (g_inplace, p_inplace) = results["virtual"], results["inplace"]
    assert g_virtual == pytest.approx(g_inplace, rel=1e-3, abs=1e-4)
    for a, b in zip(p_virtual, p_inplace):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_auto_picks_triton_on_cuda():
    model = tiny_model("llama").to(CUDA)
    assert isinstance(build_engine("auto", "virtual", model), te.TritonVirtualEngine)
    assert isinstance(build_engine("auto", "inplace", model), te.TritonInPlaceEngine)


def test_engine_sweeps_the_documented_z_of_every_parameter():
    model = tiny_model("llama", torch.bfloat16).to(CUDA)
    params = list(enumerate(model.parameters()))
    before = [p.clone() for _, p in params]
    engine = build_engine("triton", "inplace", model)
    direction = Direction(9)
    engine.perturb(params, direction, 1e-2)
    for (pid, p), b in zip(params, before):
        expected = (b.float() + 1e-2 * tk.generate_z(mix_seed(9, pid), b, "gaussian")).to(torch.bfloat16)
        assert _within_one_ulp(p, expected, torch.bfloat16)


# --- perturbation inside the matmul (engine.fused_linear) ---------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_compiled_fused_linear_and_gather_match_the_perturbed_copy(dtype):
    """The compiled GEMM multiplies by fl(W + sZ) with the copy kernel's bits (same z, same
    rounding): close to cuBLAS on the materialised copy, and the pair's halves are the single
    products; the gather is the lookup in that copy bit for bit."""
    from zobench.engine.triton import fused as tf

    weight = _weights((1000, 512), dtype)
    bias = _weights((1000,), dtype, seed=1)
    x = (torch.randn(3, 37, 512, generator=torch.Generator().manual_seed(2))).to(dtype).to(CUDA)
    key = mix_seed(4, 2)
    copy = tk.perturbed_copy(weight, key, "gaussian", 1e-2)
    reference = torch.nn.functional.linear(x.float(), copy.float(), bias.float())
    fused = tf.perturbed_linear(x, weight, bias, key, "gaussian", 1e-2)
    torch.testing.assert_close(fused.float(), reference, rtol=4 * ULP_OF_ONE[dtype], atol=1e-3)
    plus, minus = tf.perturbed_linear(x, weight, bias, key, "gaussian", 1e-2, x_minus=x, bias_minus=bias)
    assert torch.equal(plus, fused)
    torch.testing.assert_close(
        minus.float(),
        torch.nn.functional.linear(x.float(), tk.perturbed_copy(weight, key, "gaussian", -1e-2).float(), bias.float()),
        rtol=4 * ULP_OF_ONE[dtype],
        atol=1e-3,
    )
    ids = torch.randint(0, 1000, (4, 9), device=CUDA)
    assert torch.equal(tf.perturbed_gather(ids, weight, key, "gaussian", 1e-2), copy[ids])


def test_fused_engine_on_the_gpu_gives_the_unfused_losses():
    model = tiny_model("opt", torch.float16).to(CUDA)
    params = list(enumerate(model.parameters()))
    ids = torch.randint(3, 60, (2, 7), device=CUDA)
    losses = []
    for fused in (False, True):
        engine = build_engine("triton", "virtual", model, fused_linear=fused)
        with torch.no_grad(), engine.mirrored(params, Direction(3), 1e-2):
            logits = model(input_ids=ids.repeat(2, 1)).logits.float()
        engine.remove()
        losses.append(logits.logsumexp(-1).reshape(2, -1).mean(-1))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-3, atol=1e-3)


def test_rademacher_z_is_one_definition_on_the_gpu_too():
    """The torch backend's Rademacher z on CUDA (bit shifts), the compiled kernels' (``_signs``,
    two counters per unaligned row in the fused gather) and the CPU reference: the same bits."""
    from zobench.engine.triton import fused as triton_fused

    key, like = mix_seed(5, 3), torch.empty(37, 132, device=CUDA)
    reference = philox_z(key, like.numel(), "rademacher").view(like.shape)
    assert torch.equal(Direction(5, "rademacher").sample(3, like).cpu(), reference)
    assert torch.equal(tk.generate_z(key, like, "rademacher").cpu(), reference)
    rows = triton_fused.perturbed_gather(torch.arange(37, device=CUDA), torch.zeros_like(like), key, "rademacher", 1.0)
    assert torch.equal(rows.cpu(), reference)
