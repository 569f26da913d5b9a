"""Engine invariants: exact restore (virtual), MeZO arithmetic (in-place), hook coverage."""

import pytest
import torch

from tests.helpers import TINY_ARCHS, tiny_model
from zobench.engine import Direction, InPlaceEngine, VirtualEngine, build_engine
from zobench.optim import MeZO, decay_groups

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _bit_identical(model, snap):
    return all(
        torch.equal(p.view(torch.uint8) if p.dtype != torch.bool else p, snap[n].view(torch.uint8))
        for n, p in model.named_parameters()
    )


def _closure(model, ids):
    def closure():
        out = model(input_ids=ids)
        return out.logits.float().logsumexp(-1).mean()

    return closure


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_virtual_mode_lr0_leaves_every_weight_bit_identical(dtype):
    model = tiny_model("llama", dtype)
    snap = _snapshot(model)
    opt = MeZO(decay_groups(model.named_parameters(), 0.1), lr=0.0, eps=1e-3, engine=VirtualEngine(model))
    ids = torch.randint(0, 64, (2, 6))
    for _ in range(20):
        opt.step(_closure(model, ids))
    assert _bit_identical(model, snap)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_inplace_mode_drifts_as_the_authors_code_does(dtype):
    """In-place +ε, -2ε, +ε is not invertible in floating point: documented, and bounded."""
    model = tiny_model("llama", dtype)
    snap = _snapshot(model)
    opt = MeZO(model.parameters(), lr=0.0, eps=1e-3, engine=InPlaceEngine())
    ids = torch.randint(0, 64, (2, 6))
    for _ in range(5):
        opt.step(_closure(model, ids))
    assert not _bit_identical(model, snap)  # the drift exists...
    for n, p in model.named_parameters():  # ...and stays at the rounding level of ε·z
        bound = 5 * 1e-3 * 6 * torch.finfo(dtype).eps * 8 + 4 * snap[n].abs().float() * torch.finfo(dtype).eps
        assert ((p.float() - snap[n].float()).abs() <= bound).all(), n


def test_inplace_engine_restores_exactly_when_no_rounding_happens():
    # values and steps that are exact in binary: θ ± εz representable, so restore is exact
    p = torch.tensor([1.0, -2.0, 4.0])
    engine = InPlaceEngine()
    direction = Direction(0, "rademacher")
    engine.perturb([(0, p)], direction, 0.5)
    assert not torch.equal(p, torch.tensor([1.0, -2.0, 4.0]))
    engine.perturb([(0, p)], direction, -0.5)
    engine.restore([(0, p)])
    assert torch.equal(p, torch.tensor([1.0, -2.0, 4.0]))


@pytest.mark.parametrize("family", sorted(TINY_ARCHS))
def test_virtual_perturbation_reaches_every_parameter_of_every_family(family):
    """L(θ+εz) through the hooks equals L at weights really moved to θ+εz, bit for bit:
    so every parameter (tied embeddings included) is perturbed, once, with the right z."""
    model = tiny_model(family)
    params = list(enumerate(p for _, p in model.named_parameters()))
    ids = torch.randint(3, 60, (2, 7))
    closure = _closure(model, ids)
    direction = Direction(42)
    virtual = VirtualEngine(model)
    virtual.perturb(params, direction, 1e-2)
    loss_virtual = closure()
    virtual.restore(params)
    virtual.remove()
    clean = closure()
    inplace = InPlaceEngine()
    inplace.perturb(params, direction, 1e-2)
    loss_inplace = closure()
    assert torch.equal(loss_virtual, loss_inplace)
    assert not torch.equal(loss_virtual, clean)


def test_virtual_engine_puts_weights_back_when_forward_raises():
    model = tiny_model("llama")
    snap = _snapshot(model)
    params = list(enumerate(model.parameters()))
    engine = VirtualEngine(model)
    engine.perturb(params, Direction(1), 0.1)
    with pytest.raises(IndexError):
        model(input_ids=torch.full((1, 3), 10_000))  # index out of the embedding
    assert _bit_identical(model, snap)


def test_virtual_engine_refuses_parameters_of_another_model():
    engine = VirtualEngine(tiny_model("llama"))
    with pytest.raises(ValueError, match="not owned by any module"):
        engine.perturb([(0, torch.nn.Parameter(torch.zeros(3)))], Direction(0), 1.0)


def test_virtual_engine_keeps_its_model_alive():
    """Ownership is tracked by id(): if the model could die, a new tensor could reuse an id."""
    import gc
    import weakref

    model = tiny_model("llama")
    alive = weakref.ref(model)
    engine = VirtualEngine(model)
    del model
    gc.collect()
    assert alive() is not None
    del engine
    gc.collect()
    assert alive() is None


def test_virtual_and_inplace_updates_agree():
    ids = torch.randint(0, 64, (2, 6))
    results = []
    for mode in ("virtual", "inplace"):
        model = tiny_model("llama")
        opt = MeZO(model.parameters(), lr=1e-2, eps=1e-3, engine=build_engine("torch", mode, model))
        losses = [float(opt.step(_closure(model, ids))) for _ in range(3)]
        results.append((losses, _snapshot(model)))
    (l_v, s_v), (l_i, s_i) = results
    assert l_v == pytest.approx(l_i, rel=1e-5)
    for name in s_v:
        torch.testing.assert_close(s_v[name], s_i[name], rtol=0, atol=1e-6)


def test_build_engine_validates_its_options():
    with pytest.raises(ValueError, match="engine.backend='cuda'"):
        build_engine("cuda", "inplace")
    with pytest.raises(ValueError, match="engine.mode='lazy'"):
        build_engine("torch", "lazy")


def test_virtual_mode_generates_each_parameters_z_once_per_evaluation(monkeypatch):
    """The tied embedding / LM head is one parameter used by two modules: one z, not two (below
    the streaming threshold; a streamed tied weight is drawn at each use instead of kept whole)."""
    model = tiny_model("llama")  # tie_word_embeddings=True
    assert model.lm_head.weight is model.model.embed_tokens.weight
    params = list(enumerate(p for _, p in model.named_parameters()))
    calls = []
    original = Direction.sample
    monkeypatch.setattr(Direction, "sample", lambda self, pid, like: calls.append(pid) or original(self, pid, like))
    engine = VirtualEngine(model)
    for scale in (1e-3, -1e-3):
        calls.clear()
        engine.perturb(params, Direction(7), scale)
        model(input_ids=torch.randint(0, 64, (2, 5)))
        assert sorted(calls) == [pid for pid, _ in params]
    engine.restore(params)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_restore_and_update_is_bit_identical_to_the_pair_with_one_z_less(dtype, monkeypatch):
    weights = torch.randn(4, 300, generator=torch.Generator().manual_seed(0)).to(dtype) * 0.02
    direction = Direction(11)
    results, samples = [], []
    original = Direction.sample
    monkeypatch.setattr(Direction, "sample", lambda self, pid, like: samples.append(pid) or original(self, pid, like))
    for fused in (False, True):
        p = weights.clone()
        engine = InPlaceEngine()
        engine.perturb([(0, p)], direction, 1e-3)
        engine.perturb([(0, p)], direction, -1e-3)
        samples.clear()
        if fused:
            engine.restore_and_update([(0, p)], direction, coeff=-0.05, decay=0.01)
        else:
            engine.restore([(0, p)])
            engine.update([(0, p)], direction, coeff=-0.05, decay=0.01)
        results.append((p, len(samples)))
    (unfused, n_unfused), (fused, n_fused) = results
    assert torch.equal(unfused.view(torch.uint8), fused.view(torch.uint8))
    assert (n_unfused, n_fused) == (2, 1)


# --- streamed weights: no parameter-sized θ + εz in virtual mode ------------------------------------


@pytest.fixture
def small_chunks(monkeypatch):
    """Blocks of a few rows, so every tiny weight streams in many blocks."""
    from zobench.engine import directions

    monkeypatch.setattr(directions, "Z_CHUNK", 64)


def _perturbed_losses(model, ids, direction, stream_elements):
    params = list(enumerate(p for _, p in model.named_parameters()))
    engine = VirtualEngine(model, stream_elements=stream_elements)
    whole = []
    original = engine.provider.values
    engine.provider.values = lambda p, *a: whole.append(tuple(p.shape)) or original(p, *a)
    losses = []
    for scale in (1e-2, -1e-2):
        engine.perturb(params, direction, scale)
        losses.append(_closure(model, ids)())
    engine.restore(params)
    engine.remove()
    return losses, whole


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
@pytest.mark.parametrize("family", sorted(TINY_ARCHS))
def test_streamed_weights_give_the_materialised_losses_without_materialising(family, distribution, small_chunks):
    """Every 2-D weight streamed (embeddings, OPT's learned positions, Gemma's scaled embedding,
    the tied LM head): the same losses as swapping in θ + εz whole, to float rounding, while no
    2-D θ + εz is ever built whole and the stored weights are untouched."""
    model = tiny_model(family)
    snap = _snapshot(model)
    ids = torch.randint(3, 60, (2, 7))
    direction = Direction(42, distribution)
    materialised, whole = _perturbed_losses(model, ids, direction, stream_elements=None)
    assert any(len(shape) == 2 for shape in whole)
    streamed, whole = _perturbed_losses(model, ids, direction, stream_elements=1)
    assert [shape for shape in whole if len(shape) == 2] == []
    for a, b in zip(streamed, materialised):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(streamed[0], streamed[1])
    assert _bit_identical(model, snap)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_streamed_embedding_rows_are_bit_identical(small_chunks, dtype):
    model = tiny_model("llama", dtype)
    params = list(enumerate(p for _, p in model.named_parameters()))
    ids = torch.randint(0, 64, (3, 9))
    rows = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, a, out: rows.append(out.clone()))
    for stream_elements in (None, 1):
        engine = VirtualEngine(model, stream_elements=stream_elements)
        engine.perturb(params, Direction(3), 1e-2)
        model(input_ids=ids)
        engine.restore(params)
        engine.remove()
    hook.remove()
    assert torch.equal(rows[0].view(torch.uint8), rows[1].view(torch.uint8))


def test_streamed_embedding_refuses_an_id_out_of_range(small_chunks):
    model = tiny_model("llama")
    snap = _snapshot(model)
    params = list(enumerate(model.parameters()))
    engine = VirtualEngine(model, stream_elements=1)
    engine.perturb(params, Direction(1), 0.1)
    with pytest.raises(IndexError, match="out of range"):
        model(input_ids=torch.full((1, 3), 64))
    engine.restore(params)
    assert _bit_identical(model, snap)


def test_a_streamed_weight_used_outside_linear_and_embedding_is_materialised(small_chunks):
    """A module that multiplies its weight by hand still sees θ + εz (the whole of it)."""

    class HandMade(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(40, 8), requires_grad=False)

        def forward(self, x):
            return x @ self.weight.t()

    model = HandMade()
    x = torch.randn(3, 8)
    params = [(0, model.weight)]
    out = []
    for stream_elements in (None, 1):
        engine = VirtualEngine(model, stream_elements=stream_elements)
        engine.perturb(params, Direction(9), 0.1)
        out.append(model(x))
        engine.restore(params)
        engine.remove()
    assert torch.equal(out[0], out[1])
    assert not torch.equal(out[0], x @ model.weight.t())


def test_a_model_below_the_threshold_streams_nothing():
    model = tiny_model("llama")  # 64 x 16 embedding: far below the default threshold
    engine = VirtualEngine(model)
    engine.perturb(list(enumerate(model.parameters())), Direction(1), 0.1)
    assert engine._streamed == set()
