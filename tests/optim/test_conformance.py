"""The contract every ZO method meets (DESIGN.md "Optimizer"): converges on a quadratic and on a
tiny MLP, uses exactly its declared forward passes, resumes bit-identically from its state_dict,
does nothing with lr=0, respects weight-decay groups, keeps the state it declares (drawing z in
pieces, no parameter-sized temporary), and trains LoRA / prefix adapters alone. The suite runs over
the method registry (``zobench.optim.registry``), and every class ``zobench.optim`` exports, every
method module and every ``conf/optimizer`` target must be registered, so no method escapes it."""

import copy
import math
from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import get_object
from torch import nn

import zobench.optim as optim
from zobench.engine import Direction, VirtualEngine, directions
from zobench.optim import MeZO, SparseMeZO, ZOOptimizer, decay_groups, methods
from zobench.optim.registry import unregister
from zobench.resources import conf_dir

# method (its registry name) -> {case: hyperparameters that converge on the quadratic below}.
# A registered method without a row is checked with DEFAULT_SETTINGS under its own name.
SETTINGS = {
    "mezo": {
        "mezo": dict(lr=0.02, eps=1e-3),
        "mezo_nspsa": dict(lr=0.02, eps=1e-3, num_directions=4),
        "mezo_one_sided": dict(lr=0.02, eps=1e-3, one_sided=True),
    },
    "zo_sgd_momentum": {"zo_sgd_momentum": dict(lr=0.005, eps=1e-3, momentum=0.8)},
    "zo_sgd_sign": {
        "zo_sgd_sign": dict(lr=0.01, eps=1e-3),
        "zo_sgd_sign_elementwise": dict(lr=0.01, eps=1e-3, sign="elementwise"),
        "zo_sgd_sign_adamw": dict(lr=0.01, eps=1e-3, base="adamw"),
    },
    "zo_sgd_cons": {
        "zo_sgd_cons": dict(lr=0.02, eps=1e-3),
        "zo_sgd_cons_adamw": dict(lr=0.02, eps=1e-3, base="adamw"),
    },
    "forward_gradient": {"forward_gradient": dict(lr=0.02)},
    "zo_adam": {
        "zo_adam": dict(lr=0.02, eps=1e-3),
        "zo_adam_bf16_state": dict(lr=0.02, eps=1e-3, state_dtype="bfloat16"),
    },
    "hizoo": {
        "hizoo": dict(lr=0.02, eps=1e-3, hessian_smooth=1e-3),
        # the 2024 rule perturbs by √Σ z and Σ settles near √c (c grows with Σ here): a smaller η
        "hizoo_2024": dict(lr=0.005, eps=1e-3, hessian_smooth=1e-3, rule="2024"),
    },
    # FZOO's σ ≈ ε‖∇L‖ makes its step ~η along a normalised direction (the authors' rule, no 1/ε)
    "fzoo": {
        "fzoo": dict(lr=1e-2, eps=1e-3, num_directions=4),
        "fzoo_reuse": dict(lr=1e-2, eps=1e-3, num_directions=4, reuse=True),
    },
    "sparse_mezo": {"sparse_mezo": dict(lr=0.02, eps=1e-3, sparsity=0.5)},
    # low-rank methods: TeZO's fixed factors span `rank` directions per matrix (24 > 2×10 here);
    # a random, non-orthogonal basis conditions the problem worse, hence the larger steps. Z = U diag(τ) Vᵀ
    # and LOZO's U Vᵀ have entries of variance r (no 1/√r, as the references): lr/r for SGD, lr/√r for Adam
    "tezo": {
        "tezo": dict(lr=0.05 / 24, eps=1e-3, rank=24),
        "tezo_momentum": dict(lr=0.01 / 24, eps=1e-3, rank=24, variant="momentum", momentum=0.8),
        "tezo_adam": dict(lr=0.05 / 24**0.5, eps=1e-3, rank=24, variant="adam"),
    },
    "lozo": {"lozo": dict(lr=0.01, eps=1e-3, rank=2, lazy_steps=5)},
    "subzero": {"subzero": dict(lr=0.02, eps=1e-3, rank=2, refresh_steps=10)},
    # a projection round every 3 steps (so the 3-step checks below include one); unnamed
    # parameters: every matrix is projected
    "dizo": {"dizo": dict(lr=0.02, eps=1e-3, interval=3, projection_iters=3)},
    # unnamed parameters are one block each; the quadratic has one, so n_drop=0 here (the
    # dropping itself: tests/optim/test_lezo_dizo_svrg.py, on named tiny models)
    "lezo": {"lezo": dict(lr=0.02, eps=1e-3, n_drop=0)},
    "mezo_svrg": {"mezo_svrg": dict(lr=0.02, eps=1e-3, q=2)},
}
DEFAULT_SETTINGS = dict(lr=0.02, eps=1e-3)

# case -> (class, hyperparameters): every registered method, so a new one is in the suite by registering
METHODS = {
    case: (cls, kwargs)
    for method, cls in methods().items()
    for case, kwargs in SETTINGS.get(method, {method: DEFAULT_SETTINGS}).items()
}


def _declared_passes(opt, steps):
    """Forward passes the method declares for ``steps`` steps: exact where its steps differ in
    cost (``forward_passes``: DiZO's rounds, MeZO-SVRG's anchors), else per step × steps."""
    exact = getattr(opt, "forward_passes", None)
    return exact(steps) if exact is not None else steps * opt.forward_passes_per_step


from tests.helpers import Quadratic  # noqa: E402


def _make(name, model, params=None, **override):
    cls, kwargs = METHODS[name]
    return cls(
        params if params is not None else model.parameters(),
        **{**kwargs, **override},
        seed=1,
        engine=VirtualEngine(model),
    )


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.slow
def test_converges_on_a_quadratic(name):
    model = Quadratic()
    opt = _make(name, model)
    start = float(model().detach())
    for _ in range(1500):
        opt.step(model)
    assert float(model()) < 0.02 * start


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.slow
def test_converges_on_a_tiny_mlp(name):
    gen = torch.Generator().manual_seed(0)
    inputs, teacher = torch.randn(64, 4, generator=gen), nn.Linear(4, 1)
    torch.manual_seed(0)
    targets = teacher(inputs).detach()
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).requires_grad_(False)

    def loss():
        return ((model(inputs) - targets) ** 2).mean()

    opt = _make(name, model, lr=METHODS[name][1]["lr"] / 2)
    start = float(loss())
    for _ in range(800):
        opt.step(loss)
    assert float(loss()) < 0.5 * start


@pytest.mark.parametrize("name", METHODS)
def test_forward_passes_per_step_are_as_declared(name):
    model = Quadratic()
    opt = _make(name, model)
    calls = []
    for _ in range(3):
        opt.step(lambda: calls.append(1) or model())
    assert len(calls) == _declared_passes(opt, 3)


@pytest.mark.parametrize("name", METHODS)
def test_batched_evaluations_give_the_one_at_a_time_steps(name):
    """With a closure that takes ``replicas`` (the run loop's), the virtual engine evaluates SPSA's
    ± pair in one call (``engine.paired``, the default) and FZOO its N directions: the same
    steps as evaluating one perturbation per call, and the declared passes per step, counted
    as the rows the calls evaluated."""
    gen = torch.Generator().manual_seed(0)
    inputs, targets = torch.randn(16, 4, generator=gen), torch.randn(16, 1, generator=gen)
    weights = {}
    for paired in (True, False):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).requires_grad_(False)
        calls = []

        def loss(replicas=1):
            calls.append(replicas)
            per_replica = (model(inputs.repeat(replicas, 1)) - targets.repeat(replicas, 1)) ** 2
            per_replica = per_replica.reshape(replicas, -1).mean(-1)
            return per_replica[0] if replicas == 1 else per_replica

        cls, kwargs = METHODS[name]
        opt = cls(model.parameters(), **kwargs, seed=1, engine=VirtualEngine(model, paired=paired))
        for _ in range(3):
            opt.step(loss)
        assert sum(calls) == _declared_passes(opt, 3)
        if name not in ("mezo_one_sided", "forward_gradient", "fzoo", "fzoo_reuse"):  # SPSA's ± pair
            assert (2 in calls) == paired  # one call for the pair, or one call each
        weights[paired] = [p.clone() for p in model.parameters()]
    for a, b in zip(weights[True], weights[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", METHODS)
def test_state_dict_round_trip_resumes_bit_identically(name):
    model = Quadratic()
    opt = _make(name, model)
    for _ in range(4):
        opt.step(model)
    saved_weights, saved_state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    for _ in range(4):
        opt.step(model)
    reference = model.x.detach().clone()

    resumed_model = Quadratic()
    resumed_model.load_state_dict(saved_weights)
    resumed = _make(name, resumed_model, lr=123.0)  # hyperparameters come back with the state
    resumed.load_state_dict(saved_state)
    for _ in range(4):
        resumed.step(resumed_model)
    assert torch.equal(resumed_model.x, reference)


@pytest.mark.parametrize("name", METHODS)
def test_lr_zero_changes_no_weight(name):
    model = Quadratic()
    before = model.x.detach().clone()
    opt = _make(name, model, lr=0.0)
    for _ in range(5):
        opt.step(model)
    assert torch.equal(model.x.view(torch.int32), before.view(torch.int32))


@pytest.mark.parametrize("name", METHODS)
def test_weight_decay_applies_only_to_decay_groups(name):
    model = nn.Linear(6, 3)
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    opt = _make(name, model, params=decay_groups(model.named_parameters(), 0.5), lr=0.1)
    opt.step(lambda: model(torch.zeros(1, 6)).sum() * 0 + 1.0)  # constant loss: no gradient signal
    # ZO-Bench's Cons under AdamW makes 2 AdamW steps (each with its decay) when the losses tie
    decays = 2 if name == "zo_sgd_cons_adamw" else 1
    torch.testing.assert_close(model.weight, w0 * (1 - 0.1 * 0.5) ** decays, rtol=0, atol=1e-7)
    assert torch.equal(model.bias, b0)


@pytest.mark.parametrize("name", METHODS)
def test_declared_state_is_the_state_kept(name):
    """Parameter-sized buffers are what costs memory: exactly the declared number of them, and
    nothing else bigger than a few numbers per parameter tensor (TeZO's τ moments are r long)."""
    model = Quadratic()
    opt = _make(name, model)
    opt.step(model)
    tensors = [
        t
        for p, state in opt.state.items()
        if isinstance(p, torch.Tensor)
        for t in state.values()
        if isinstance(t, torch.Tensor)
    ]
    full = [t for t in tensors if t.shape == model.x.shape]
    assert len(full) == opt.state_buffers_per_param
    assert all(t.numel() <= 32 for t in tensors if t.shape != model.x.shape)


# the forward gradient's tangent is one whole tensor per parameter, by design (forward-mode AD);
# the low-rank methods draw no z for matrices but form Z = ABᵀ a block of rows at a time (below)
WHOLE_Z = {"forward_gradient"}
LOW_RANK = {"tezo", "tezo_momentum", "tezo_adam", "lozo", "subzero"}


@pytest.mark.parametrize("name", METHODS)
def test_z_drawn_in_pieces_gives_the_whole_tensor_steps(name, monkeypatch):
    """On CPU the engine draws z Z_CHUNK elements at a time: in the perturbation, in the update
    and in the stateful updates (``Engine.foreach`` hands them pieces, with the optimizer state
    sliced alike). With 64-element chunks the steps and the state are bit-identical to drawing
    every z whole (not compared for the low-rank methods: Z = ABᵀ is a matmul per block of rows,
    whose rounding depends on the block; at a fixed block size every use of Z has the same bits,
    tested below), and an elementwise method never draws more than one chunk of z at once, so no
    step holds a parameter-sized z or temporary."""
    gen = torch.Generator().manual_seed(0)
    inputs, targets = torch.randn(16, 40, generator=gen), torch.randn(16, 1, generator=gen)
    draw = Direction._draw
    results = {}
    for chunk in (64, 1 << 20):
        monkeypatch.setattr(directions, "Z_CHUNK", chunk)
        sizes = []
        monkeypatch.setattr(
            Direction,
            "_draw",
            lambda self, g, shape, device: sizes.append(math.prod(shape)) or draw(self, g, shape, device),
        )
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(40, 30), nn.Tanh(), nn.Linear(30, 1)).requires_grad_(False)

        def loss():
            return ((model(inputs) - targets) ** 2).mean()

        opt = _make(name, model, lr=METHODS[name][1]["lr"] / 2)
        for _ in range(3):
            opt.step(loss)
        state = [t.clone() for st in opt.state.values() for t in st.values() if isinstance(t, torch.Tensor)]
        results[chunk] = [p.clone() for p in model.parameters()], state, max(sizes, default=0)
    (pieces, pieces_state, largest), (whole, whole_state, _) = results[64], results[1 << 20]
    for a, b in zip(pieces + pieces_state, whole + whole_state, strict=True):
        if name not in LOW_RANK:  # their blocks of rows follow Z_CHUNK: other blocks, other rounding
            assert torch.equal(a, b)
    if name not in WHOLE_Z:
        assert largest < 64 + 16  # the last chunk absorbs a tail shorter than 16


@pytest.mark.parametrize("name", sorted(LOW_RANK))
def test_low_rank_z_is_formed_a_block_of_rows_at_a_time(name, monkeypatch):
    """Z = ABᵀ of a matrix is never formed whole on the engine's paths: the largest product is one
    block of rows (~Z_CHUNK elements, a multiple of 64), and ``sample`` gives the same bits."""
    monkeypatch.setattr(directions, "Z_CHUNK", 256)
    products = []
    matmul = torch.Tensor.__matmul__
    monkeypatch.setattr(
        torch.Tensor, "__matmul__", lambda a, b: products.append(a.shape[0] * b.shape[1]) or matmul(a, b)
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 30), nn.Tanh(), nn.Linear(30, 1)).requires_grad_(False)
    inputs = torch.randn(8, 40, generator=torch.Generator().manual_seed(1))
    opt = _make(name, model, lr=1e-3)
    for _ in range(2):
        opt.step(lambda: model(inputs).square().mean())
    # the 30×40 matrix (1200 elements) in blocks of 8 rows: 8·40 = 320, the least multiple of 64
    assert products and max(products) == 320


def test_low_rank_blocks_are_the_sampled_z_bit_for_bit(monkeypatch):
    from zobench.optim._lowrank import LowRankDirection, gaussian

    monkeypatch.setattr(directions, "Z_CHUNK", 256)
    direction = LowRankDirection(
        3,
        factors=lambda pid, like: (
            gaussian(pid, (like.shape[0], 4), like),
            gaussian(pid + 1, (like.shape[1], 4), like),
        ),
    )
    weight = torch.empty(300, 50)
    pieces = list(direction.chunks(0, weight, size=64 * 50))  # a caller's size: the blocks stay the same
    assert len(pieces) > 1 and all(start % 50 == 0 and stop % 50 == 0 for start, stop, _ in pieces)
    assert torch.equal(torch.cat([z for _, _, z in pieces]), direction.sample(0, weight).view(-1))
    a, b = direction.factors(0, weight)
    torch.testing.assert_close(direction.sample(0, weight), a @ b.T)


def test_hizoo_hessian_really_moves_and_stays_float32():
    """The authors' fp16 Σ with α=1e-8 never changes; ours must."""
    model = Quadratic()
    opt = _make("hizoo", model, hessian_smooth=1e-8)
    opt.step(model)
    sigma = opt.state[model.x]["hessian"]
    assert sigma.dtype == torch.float32 and not torch.equal(sigma, torch.ones_like(sigma))
    assert opt.last_step_info["curvature"] > 0


def test_sparse_mezo_perturbs_only_small_weights_and_in_place_keeps_the_steps_mask():
    model = nn.Linear(10, 10, bias=False)
    opt = _make("sparse_mezo", model, sparsity=0.75)
    before = model.weight.detach().clone()
    opt.step(lambda: model(torch.ones(1, 10)).pow(2).sum())
    moved = model.weight != before
    threshold = before.abs().flatten().kthvalue(25).values
    assert moved.sum() == 25 and (before[moved].abs() <= threshold).all()
    # in place (the default engine): θ + εẑ is in the weights while ẑ is drawn again, so the mask
    # is the one taken before the first move: the same 25 weights move, by the virtual step's amount
    virtual = model.weight.detach().clone()
    model.weight.data.copy_(before)
    SparseMeZO(model.parameters(), lr=0.02, eps=1e-3, sparsity=0.75, seed=1).step(
        lambda: model(torch.ones(1, 10)).pow(2).sum()
    )
    assert torch.equal(model.weight != before, moved)
    torch.testing.assert_close(model.weight.detach(), virtual, rtol=0, atol=1e-5)


def test_fzoo_step_is_normalised_by_the_loss_spread():
    """Scaling the loss by c scales every ℓ_i - ℓ0 and σ by c: the step does not change."""
    steps = []
    for c in (1.0, 100.0):
        model = Quadratic()
        opt = _make("fzoo", model)
        before = model.x.detach().clone()
        opt.step(lambda: c * model())
        steps.append(model.x.detach() - before)
    # float32 losses near 16 differ by ~1e-3: their differences carry ~1e-3 relative rounding
    torch.testing.assert_close(steps[0], steps[1], rtol=1e-2, atol=1e-8)
    assert steps[0].abs().max() > 0


def test_hizoo_hessian_update_follows_the_formula():
    """Σ₁ = (1-α)Σ₀ + α c Σ₀⊙z² with Σ₀ = 1 and c = |ℓ+ + ℓ- - 2ℓ0| / 2ε²."""
    from zobench.engine import Direction

    model = Quadratic()
    alpha = 0.3
    opt = _make("hizoo", model, hessian_smooth=alpha)
    opt.step(model)
    c = opt.last_step_info["curvature"]
    z = Direction(opt.direction(1).seed).sample(0, model.x)
    torch.testing.assert_close(opt.state[model.x]["hessian"], (1 - alpha) + alpha * c * z * z)


LORA = {"name": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
PREFIX = {"name": "prefix", "num_virtual_tokens": 3, "init_by_real_act": True}


@pytest.mark.parametrize("tuning", [LORA, PREFIX], ids=["lora", "prefix"])
@pytest.mark.parametrize("name", METHODS)
def test_works_with_lora_and_prefix_tuning(name, tuning):
    """On a peft-wrapped model (LoRA factors; a prefix embedding) every method takes its declared
    forward passes, stays finite and moves the adapter parameters and nothing else."""
    from tests.helpers import tiny_model
    from zobench.models import apply_tuning, trainable

    model = apply_tuning(tiny_model("llama"), tuning, "causal", seed=0)
    ids = torch.randint(5, 60, (4, 6), generator=torch.Generator().manual_seed(2))
    target = torch.randint(5, 60, (4,), generator=torch.Generator().manual_seed(3))
    before = {n: p.clone() for n, p in model.named_parameters()}
    calls = []

    def loss():
        calls.append(1)
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1].float()
        return nn.functional.cross_entropy(logits, target)

    opt = _make(name, model, params=[p for _, p in trainable(model)], lr=METHODS[name][1]["lr"] / 10)
    with torch.no_grad():
        for _ in range(2):
            assert math.isfinite(float(opt.step(loss)))
    assert len(calls) == _declared_passes(opt, 2)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    adapters = {n for n, _ in trainable(model)}
    # ZO-SGD-cons may keep θ when no trial step lowers the loss; every other method moves them all
    assert moved <= adapters and (moved == adapters or name == "zo_sgd_cons")


# conf/optimizer options that are not ZO methods: the backprop baselines and linear probing
# (tests/test_run.py trains with them), by their _target_
NOT_ZO = {
    "adam": "torch.optim.AdamW",
    "sgd": "torch.optim.SGD",
    "linear_probe": "zobench.models.linear_probe.fit_linear_probe",
}


def _optimizer_config(name):
    return yaml.safe_load((conf_dir() / "optimizer" / f"{name}.yaml").read_text())


def test_every_method_module_registers_its_method():
    """One file per method: each public module of zobench/optim is the registered method of its
    name (a new file that zobench/optim/__init__.py does not import is not registered: this fails)."""
    package = Path(optim.__file__).parent
    modules = {p.stem for p in package.glob("*.py") if not p.stem.startswith("_")} - {"registry"}
    unregistered = modules - set(methods())
    assert not unregistered, f"{sorted(unregistered)}: no registered method (import it in zobench/optim/__init__.py)"
    assert modules >= set(methods()), "a registered method without its own module"
    assert set(SETTINGS) <= set(methods()), "a SETTINGS row for a method that is not registered"


def test_every_exported_optimizer_is_registered_and_configured():
    exported = [getattr(optim, name) for name in optim.__all__]
    zo = {c for c in exported if isinstance(c, type) and issubclass(c, ZOOptimizer) and c is not ZOOptimizer}
    assert zo == set(methods().values())
    for name, cls in methods().items():
        config = _optimizer_config(name)  # conf/optimizer/<method>.yaml
        assert config["name"] == name and get_object(config["_target_"]) is cls, name
        assert getattr(optim, cls.__name__) is cls


def test_every_optimizer_config_is_a_registered_method_or_a_known_baseline():
    for path in sorted((conf_dir() / "optimizer").glob("*.yaml")):
        config = _optimizer_config(path.stem)
        assert config["name"] == path.stem
        if path.stem in NOT_ZO:
            assert config["_target_"] == NOT_ZO[path.stem]
        else:
            assert get_object(config["_target_"]) is methods().get(path.stem), f"{path}: not a registered method"


def test_every_optimizer_config_has_a_row_in_the_readme_methods_table():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("\n## Methods\n", 1)[1].split("\n## ", 1)[0]
    named = {
        name for line in table.splitlines() if line.startswith("| `") for name in line.split("|")[1].split("`")[1::2]
    }
    options = {path.stem for path in (conf_dir() / "optimizer").glob("*.yaml")}
    assert options <= named, f"README.md Methods table: no row for {sorted(options - named)}"


def test_a_method_defined_elsewhere_registers_by_name_and_names_are_unique():
    class Throwaway(MeZO):  # a test's subclass, outside zobench.optim, unnamed: not a method
        pass

    assert Throwaway not in methods().values()
    try:

        class MyZO(MeZO, method="my_zo"):
            pass

        assert methods()["my_zo"] is MyZO
        with pytest.raises(TypeError, match=r"method 'mezo' is already zobench\.optim\.mezo\.MeZO"):

            class Clash(MeZO, method="mezo"):
                pass

        assert methods()["mezo"] is MeZO
    finally:
        unregister("my_zo")
    assert "my_zo" not in methods()
