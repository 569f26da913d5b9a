"""The virtual engine's other evaluations: forward-mode duals (∇L·z in one forward), batched
replicas (N perturbations in one forward) and mirrored pairs (L(θ±εz) in one forward, one z),
each checked against the plain engine."""

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

from tests.helpers import TINY_ARCHS, tiny_model
from tests.helpers import loss_of as _loss
from tests.helpers import replica_losses as _replica_losses
from tests.helpers import sequential_losses as _sequential_losses
from zobench.engine import Direction, InPlaceEngine, VirtualEngine

CAUSAL = [f for f, (kind, _) in TINY_ARCHS.items() if kind == "causal"]


def _params(model):
    return [(pid, p) for pid, p in enumerate(model.parameters())]


@pytest.mark.parametrize("family", list(TINY_ARCHS))
def test_dual_tangent_is_the_directional_derivative(family):
    """float64: tangent = autograd's ∇L·z, and = the central difference (L(θ+hz)-L(θ-hz))/2h.
    Llama/Gemma compute their norms and rotary tables in float32 even in a float64 model, so the
    difference quotient carries float32 noise there, and both derivatives float32 rounding."""
    model = tiny_model(family, torch.float64)
    fd_rel, ad_rel = (1e-3, 1e-6) if family in ("llama", "gemma3") else (1e-6, 1e-9)
    params, direction = _params(model), Direction(7)
    ids = torch.randint(3, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    engine = VirtualEngine(model)
    with torch.no_grad(), engine.dual(params, direction):
        primal, tangent = fwAD.unpack_dual(_loss(model, ids))
        primal, tangent = float(primal), float(tangent)
    with torch.no_grad():
        assert primal == float(_loss(model, ids))  # the primal is the plain loss, bit for bit
        h = 1e-6
        engine.perturb(params, direction, h)
        plus = float(_loss(model, ids))
        engine.perturb(params, direction, -h)
        minus = float(_loss(model, ids))
        engine.restore(params)
    assert tangent == pytest.approx((plus - minus) / (2 * h), rel=fd_rel, abs=1e-8)
    model.requires_grad_(True)
    grads = torch.autograd.grad(_loss(model, ids), [p for _, p in params], allow_unused=True)
    expected = sum(
        float((g * direction.sample(pid, p).double()).sum()) for (pid, p), g in zip(params, grads) if g is not None
    )
    assert tangent == pytest.approx(expected, rel=ad_rel, abs=1e-12)


def test_dual_leaves_the_parameters_in_their_slots_and_refuses_inference_mode():
    model = tiny_model("llama")
    before = {n: p for n, p in model.named_parameters()}
    engine = VirtualEngine(model)
    ids = torch.randint(0, 64, (1, 4))
    with torch.no_grad(), engine.dual(_params(model), Direction(1)):
        _loss(model, ids)
    assert all(p is before[n] for n, p in model.named_parameters())
    with pytest.raises(RuntimeError, match="inference_mode"):
        with torch.inference_mode(), engine.dual(_params(model), Direction(1)):
            _loss(model, ids)
    assert all(p is before[n] for n, p in model.named_parameters())
    with pytest.raises(NotImplementedError, match="engine.mode=virtual"):
        InPlaceEngine().dual(_params(model), Direction(1))


@pytest.mark.parametrize("stream", [False, True], ids=["materialised", "streamed"])
@pytest.mark.parametrize("family", CAUSAL)
def test_one_batched_forward_equals_n_sequential_perturbed_forwards(family, stream, monkeypatch):
    """Streamed (large) linear and embedding weights give each replica x_i(θ + εZ_i)ᵀ block by
    block of rows, with no weight-sized Z_i: on Llama no replica draws a matrix's z whole."""
    from zobench.engine import directions

    if stream:
        monkeypatch.setattr(directions, "Z_CHUNK", 64)
    model = tiny_model(family)
    params, engine = _params(model), VirtualEngine(model, stream_elements=1 if stream else None)
    assert engine.replica_support(params) is None
    whole = []
    sample = Direction.sample
    monkeypatch.setattr(Direction, "sample", lambda self, pid, like: whole.append(like.ndim) or sample(self, pid, like))
    directions = [Direction(seed, "rademacher") for seed in range(5)]
    ids = torch.randint(3, 64, (3, 7), generator=torch.Generator().manual_seed(1))
    sequential = _sequential_losses(engine, params, model, ids, directions)
    with torch.no_grad():
        whole.clear()
        with engine.replicas(params, directions, 1e-2):
            assert engine.replica_count == 5
            batched = _replica_losses(model, ids, 5)
        assert engine.replica_count == 1
        if stream and family == "llama":
            assert 2 not in whole
        plain = float(_loss(model, ids))
    torch.testing.assert_close(batched, torch.tensor(sequential), rtol=1e-5, atol=1e-5)
    # the replicas differ from each other and from θ: the perturbation really acted per replica
    assert len({round(v, 6) for v in sequential + [plain]}) == 6
    # after the context, the model is the plain one again
    assert float(_loss(model, ids)) == plain


def test_replicas_refuse_what_they_cannot_evaluate():
    class OwnsAndNests(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))
            self.inner = nn.Linear(3, 3)

        def forward(self, x):
            return self.inner(x) * self.scale

    model = OwnsAndNests()
    engine = VirtualEngine(model)
    assert "parametrised submodules" in engine.replica_support(_params(model))
    with pytest.raises(ValueError, match="parametrised submodules"):
        with engine.replicas(_params(model), [Direction(0)], 1e-3):
            pass
    linear = nn.Linear(3, 2)
    engine = VirtualEngine(linear)
    with pytest.raises(ValueError, match="not a multiple"):
        with torch.no_grad(), engine.replicas(_params(linear), [Direction(0), Direction(1)], 1e-3):
            linear(torch.ones(3, 3))
    assert "no batched replica" in InPlaceEngine().replica_support(_params(linear))


# --- mirrored pairs: SPSA's L(θ+εz), L(θ-εz) in one forward ----------------------------------------


def _pair_losses(model, ids):
    """Per-half losses of the batch repeated twice (the closure contract, replicas=2)."""
    return _replica_losses(model, ids, 2)


@pytest.mark.parametrize("stream", [False, True], ids=["materialised", "streamed"])
@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
@pytest.mark.parametrize("family", list(TINY_ARCHS))
def test_a_mirrored_pair_equals_the_two_sequential_evaluations_with_one_z(family, distribution, stream, monkeypatch):
    """Every family (OPT's learned positions and Gemma's scaled embedding are embedding
    subclasses, RoBERTa's head a module of its own, the norms generic), its weights swapped whole
    or streamed in blocks of rows: the two halves are L(θ+εz) and L(θ-εz) of the sequential
    engine, each parameter's z is drawn once, not twice, and the weights are never written."""
    from zobench.engine import directions

    if stream:
        monkeypatch.setattr(directions, "Z_CHUNK", 64)
    model = tiny_model(family)
    snapshot = {n: p.clone() for n, p in model.named_parameters()}
    params, direction = _params(model), Direction(11, distribution)
    engine = VirtualEngine(model, stream_elements=1 if stream else None)
    assert engine.mirror_support(params) is None
    ids = torch.randint(3, 60, (3, 7), generator=torch.Generator().manual_seed(2))
    sequential = _sequential_losses(engine, params, model, ids, [direction, direction], (1e-2, -1e-2))
    with torch.no_grad():
        drawn = []
        original = Direction.chunks
        monkeypatch.setattr(
            Direction, "chunks", lambda self, pid, like, size=None: drawn.append(pid) or original(self, pid, like, size)
        )
        with engine.mirrored(params, direction, 1e-2):
            assert engine.replica_count == 2
            mirrored = _pair_losses(model, ids)
        monkeypatch.setattr(Direction, "chunks", original)
        assert engine.replica_count == 1
    torch.testing.assert_close(mirrored, torch.tensor(sequential), rtol=1e-6, atol=1e-6)
    assert sequential[0] != sequential[1]
    # one z per parameter for both halves (a streamed tied embedding / LM head: one per use)
    head, embedding = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    tied = [pid for pid, p in params if p is embedding and p is head] if stream else []
    assert sorted(drawn) == sorted([pid for pid, _ in params] + tied)
    assert all(torch.equal(p, snapshot[n]) for n, p in model.named_parameters())


def test_mirrored_refuses_what_it_cannot_split():
    class HandMadeEmbedding(nn.Embedding):
        def forward(self, ids):
            return self.weight[ids] * 2  # indexes the weight itself: no F.embedding to split

    model = nn.Sequential(HandMadeEmbedding(10, 4), nn.Linear(4, 2))
    engine = VirtualEngine(model)
    with pytest.raises(RuntimeError, match="engine.paired=false"):
        with torch.no_grad(), engine.mirrored(_params(model), Direction(0), 1e-3):
            model(torch.ones(2, 3, dtype=torch.long))
    linear = nn.Linear(3, 2)
    engine = VirtualEngine(linear)
    with pytest.raises(ValueError, match="replicas=2"):
        with torch.no_grad(), engine.mirrored(_params(linear), Direction(0), 1e-3):
            linear(torch.ones(3, 3))
    assert VirtualEngine(linear, paired=False).mirror_support(_params(linear)) == "engine.paired=false"
    assert "one perturbation per forward" in InPlaceEngine().mirror_support(_params(linear))


@pytest.mark.parametrize("stream", [False, True], ids=["materialised", "streamed"])
def test_replicas_of_one_direction_share_one_draw_of_z(stream, monkeypatch):
    """The replica path with (direction, scale) per replica: replicas that share a direction draw
    its z once (two directions, four replicas: two draws per parameter, one more per use of a
    streamed tied weight), in any order, and each replica is the sequential evaluation."""
    from zobench.engine import directions

    if stream:
        monkeypatch.setattr(directions, "Z_CHUNK", 64)
    model = tiny_model("llama")
    params, engine = _params(model), VirtualEngine(model, stream_elements=1 if stream else None)
    first, second = Direction(3), Direction(4, "rademacher")
    replicas = [(first, 1e-2), (second, 2e-2), (first, -1e-2), (second, -2e-2)]
    ids = torch.randint(3, 60, (2, 7), generator=torch.Generator().manual_seed(4))
    sequential = _sequential_losses(engine, params, model, ids, [d for d, _ in replicas], [s for _, s in replicas])
    drawn = []
    original = Direction.chunks
    monkeypatch.setattr(
        Direction, "chunks", lambda self, pid, like, size=None: drawn.append(pid) or original(self, pid, like, size)
    )
    with torch.no_grad(), engine.batch(params, replicas):
        assert engine.replica_count == 4
        batched = _replica_losses(model, ids, 4)
    monkeypatch.setattr(Direction, "chunks", original)
    torch.testing.assert_close(batched, torch.tensor(sequential), rtol=1e-5, atol=1e-5)
    assert len({round(v, 6) for v in sequential}) == 4
    head, embedding = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    tied = [pid for pid, p in params if p is embedding and p is head] if stream else []
    assert sorted(drawn) == sorted(2 * ([pid for pid, _ in params] + tied))
