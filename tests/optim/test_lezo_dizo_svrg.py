"""Defining properties of LeZO (no public code), and the parts of DiZO and MeZO-SVRG the
reference transcriptions do not cover: block grouping on every model family, the loop's extra
batches, exact forward-pass accounting for steps of unequal cost."""

import pytest
import torch
from torch import nn

from tests.helpers import tiny_model
from zobench.engine import Direction, VirtualEngine, directions
from zobench.optim import DiZO, LeZO, MeZO, MeZOSVRG, decay_groups
from zobench.optim.lezo import block_of

FAMILIES = ["llama", "opt", "phi", "gemma3", "roberta"]


def _loss(model, family, seed=0):
    ids = torch.randint(5, 60, (4, 6), generator=torch.Generator().manual_seed(seed))
    target = torch.randint(5, 60, (4,), generator=torch.Generator().manual_seed(seed + 1))

    def loss():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1].float()
        return nn.functional.cross_entropy(logits, target)

    return loss


@pytest.mark.parametrize("family", FAMILIES)
def test_lezo_finds_the_blocks_of_every_family(family):
    """Every family's blocks are its layers; embeddings, final norm and LM head sit outside."""
    model = tiny_model(family)
    layers = model.config.num_hidden_layers
    opt = LeZO(model.named_parameters(), n_drop=1, engine=VirtualEngine(model))
    assert len(opt.blocks) == layers
    outside = [n for n, _ in model.named_parameters() if block_of(n) is None]
    assert outside and all("layers." not in n and "layer." not in n for n in outside)
    assert any("embed" in n for n in outside)


@pytest.mark.parametrize("family", FAMILIES)
def test_lezo_leaves_the_dropped_blocks_untouched_and_draws_no_z_there(family, monkeypatch):
    model = tiny_model(family)
    named = list(model.named_parameters())
    before = {n: p.detach().clone() for n, p in named}
    opt = LeZO(decay_groups(named, 0.1, names=True), lr=1e-2, n_drop=1, seed=3, engine=VirtualEngine(model))
    pid_of = {id(p): pid for pid, p in opt._all_params}
    drawn = set()
    chunks = Direction.chunks
    monkeypatch.setattr(
        Direction, "chunks", lambda self, pid, like, size=None: drawn.add(pid) or chunks(self, pid, like, size)
    )
    opt.step(_loss(model, family))
    kept = opt.kept_blocks(1)
    assert len(kept) == len(opt.blocks) - 1
    for name, p in named:
        block = block_of(name)
        if block is not None and block not in kept:
            assert torch.equal(p, before[name]), name  # bit for bit, weight decay included
            assert pid_of[id(p)] not in drawn, name  # no z drawn for it
        else:
            assert not torch.equal(p, before[name]), name


def test_lezo_subsets_follow_the_seed_and_vary_by_step():
    model = tiny_model("llama")
    a = LeZO(model.named_parameters(), n_drop=1, seed=4, engine=VirtualEngine(model))
    b = LeZO(model.named_parameters(), n_drop=1, seed=4, engine=VirtualEngine(model))
    assert [a.kept_blocks(s) for s in range(1, 20)] == [b.kept_blocks(s) for s in range(1, 20)]
    assert len({frozenset(a.kept_blocks(s)) for s in range(1, 20)}) == 2  # both subsets of 2 blocks occur


def test_lezo_z_of_a_kept_block_is_mezos_and_n_drop_zero_is_mezo():
    """A kept parameter moves by -η g z with MeZO's z of the same step and seed; with no block
    dropped the whole step is MeZO's, bit for bit."""
    steps = {}
    for cls, extra in ((LeZO, dict(n_drop=0)), (MeZO, {})):
        model = tiny_model("llama")
        opt = cls(model.named_parameters(), lr=1e-2, seed=9, engine=VirtualEngine(model), **extra)
        for _ in range(2):
            opt.step(_loss(model, "llama"))
        steps[cls] = [p.detach().clone() for p in model.parameters()]
    for a, b in zip(steps[LeZO], steps[MeZO]):
        assert torch.equal(a, b)
    model = tiny_model("llama")
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = LeZO(model.named_parameters(), lr=1e-2, n_drop=1, seed=9, engine=VirtualEngine(model))
    opt.step(_loss(model, "llama"))
    g, z_step = opt.last_step_info["projected_grad"], MeZO(model.parameters(), seed=9).direction(1)
    for pid, (name, p) in enumerate(model.named_parameters()):
        if block_of(name) is None or block_of(name) in opt.kept_blocks(1):
            torch.testing.assert_close(p.detach(), start[name] - 1e-2 * g * z_step.sample(pid, p))


def test_lezo_n_drop_and_drop_rate_are_validated():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="n_drop=3: must be at most the number of blocks"):
        LeZO(model.named_parameters(), n_drop=3)
    with pytest.raises(ValueError, match="drop_rate"):
        LeZO(model.named_parameters(), drop_rate=1.5)
    assert LeZO(model.named_parameters(), drop_rate=0.5).param_groups[0]["n_drop"] == 1
    assert LeZO(model.named_parameters(), n_drop=2).kept_blocks(1) == set()  # only the outside moves


# -- DiZO --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family,count", [("llama", 4), ("opt", 4), ("phi", 4), ("gemma3", 4), ("roberta", 4)])
def test_dizo_projects_the_key_and_value_weights_of_every_family(family, count):
    model = tiny_model(family)
    opt = DiZO(model.named_parameters(), engine=VirtualEngine(model))
    names = {id(p): n for n, p in model.named_parameters()}
    chosen = [names[id(p)] for _, p in opt._projected]
    assert len(chosen) == count and all(
        ("k_proj" in n or "v_proj" in n or ".key." in n or ".value." in n) for n in chosen
    )


def test_dizo_state_is_theta0_of_the_projected_matrices_only():
    model = tiny_model("llama")
    opt = DiZO(model.named_parameters(), engine=VirtualEngine(model))
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step(_loss(model, "llama"))
    kept = {id(p) for p, st in opt.state.items() if isinstance(p, torch.Tensor) and "theta0" in st}
    assert kept == {id(p) for _, p in opt._projected}
    for n, p in model.named_parameters():
        if id(p) in kept:
            assert torch.equal(opt.state[p]["theta0"], theta0[n])


def test_dizo_rounds_take_fresh_batches_and_the_declared_passes():
    """A round every κ steps: 2·projection_iters passes, each pair on its own batch from
    ``bind_data``; ``forward_passes(steps)`` is the exact count."""
    model = tiny_model("llama")
    opt = DiZO(model.named_parameters(), lr=1e-2, interval=3, projection_iters=2, engine=VirtualEngine(model))
    served, calls = [], []

    def sample():
        served.append(len(served))
        inner = _loss(model, "llama", seed=10 + len(served))
        return lambda: calls.append("round") or inner()

    opt.bind_data(sample)
    step_loss = _loss(model, "llama")
    for _ in range(7):
        opt.step(lambda: calls.append("step") or step_loss())
    assert len(served) == 2 * 2  # rounds after steps 3 and 6, one batch per iteration
    assert calls.count("round") == 2 * 2 * 2 and len(calls) == opt.forward_passes(7) == 2 * 7 + 8
    assert opt.forward_passes_per_step == 2 + 4 / 3


def test_forward_budget_schedules_methods_of_unequal_step_cost_exactly():
    from omegaconf import OmegaConf

    from zobench.run import _schedule

    model = nn.Linear(3, 2)
    train = OmegaConf.create({"forward_budget": 100, "steps": 0, "eval_every": 10, "eval_every_passes": None})
    dizo = DiZO(model.parameters(), interval=5, projection_iters=10)  # a step 2, every 5th 22
    steps, _ = _schedule(train, dizo, False)
    assert dizo.forward_passes(steps) <= 100 < dizo.forward_passes(steps + 1)
    svrg = MeZOSVRG(model.parameters(), q=2, anchor_examples=64)
    svrg.bind_data(lambda: None, batch_size=16)  # anchor: 4 batches, 8 passes; inner 4
    steps, _ = _schedule(train, svrg, False)
    assert svrg.forward_passes(steps) <= 100 < svrg.forward_passes(steps + 1)
    assert svrg.forward_passes(3) == 8 + 4 + 8 and svrg.forward_passes_per_step == 6


# -- MeZO-SVRG ----------------------------------------------------------------------------------------


def test_mezo_svrg_anchor_averages_the_loop_batches_and_inner_steps_use_the_step_batch():
    model = nn.Linear(4, 1)
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 4, generator=gen), torch.randn(8, 1, generator=gen)) for _ in range(6)]
    served = []

    def sample():
        x, y = data[len(served) % len(data)]
        served.append(1)
        return lambda: ((model(x) - y) ** 2).mean()

    opt = MeZOSVRG(model.parameters(), lr=1e-2, q=3, anchor_examples=20, engine=VirtualEngine(model))
    opt.bind_data(sample, batch_size=8)  # ⌈20/8⌉ = 3 batches per anchor
    calls = []
    x, y = data[0]
    for _ in range(4):
        opt.step(lambda: calls.append(1) or ((model(x) - y) ** 2).mean())
    assert len(served) == 2 * 3  # anchors at steps 1 and 4
    assert len(calls) == 2 * 4  # steps 2 and 3: four passes each, all on the step's batch
    # the anchor's g is one SPSA direction: two numbers, not a parameter-sized buffer
    assert set(opt.state["svrg"]) == {"anchor_step", "anchor_grad"} and opt.state["svrg"]["anchor_step"] == 4


def test_mezo_svrg_anchor_copy_is_the_weights_before_the_anchor_update():
    model = nn.Linear(4, 1)
    before = [p.detach().clone() for p in model.parameters()]
    opt = MeZOSVRG(model.parameters(), lr=1e-2, anchor_lr=1e-1, engine=VirtualEngine(model))
    opt.step(lambda: model(torch.ones(2, 4)).square().mean())
    for p, b in zip(model.parameters(), before):
        assert torch.equal(opt.state[p]["theta_bar"], b) and not torch.equal(p, b)


def test_mezo_svrg_swap_is_exact_in_pieces(monkeypatch):
    from zobench.optim.mezo_svrg import _swap

    monkeypatch.setattr(directions, "Z_CHUNK", 64)
    a, b = torch.randn(300), torch.randn(300)
    a0, b0 = a.clone(), b.clone()
    _swap(a, b)
    assert torch.equal(a, b0) and torch.equal(b, a0)
    t = torch.randn(5, 7).t()  # non-contiguous
    u = torch.randn(7, 5)
    t0, u0 = t.clone(), u.clone()
    _swap(t, u)
    assert torch.equal(t, u0) and torch.equal(u, t0)


@pytest.mark.parametrize(
    "cls,kwargs,match",
    [
        (DiZO, dict(interval=0), "interval=0"),
        (DiZO, dict(clip_range=0.5), "clip_range=0.5"),
        (DiZO, dict(projection_eps=0.0), "projection_eps"),
        (MeZOSVRG, dict(q=0), "q=0"),
        (MeZOSVRG, dict(anchor_lr=-1.0), "anchor_lr=-1.0"),
        (MeZOSVRG, dict(anchor_examples=0), "anchor_examples"),
        (LeZO, dict(n_drop=-1), "n_drop=-1"),
    ],
)
def test_hyperparameters_are_validated(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(nn.Linear(2, 2).parameters(), **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize(
    "method,overrides,steps,passes",
    [
        # 2 per step + 4 per round after every 2nd step: 5 steps = 10 + 2 rounds·4 = 18 (6 would be 24)
        ("dizo", ["optimizer.interval=2", "optimizer.projection_iters=2"], 5, 18),
        # anchor ⌈8/4⌉ = 2 batches, 4 passes, at steps 1, 3, 5; inner steps 4: 5 steps = 12 + 8 = 20
        ("mezo_svrg", ["optimizer.anchor_examples=8", "optimizer.q=2"], 5, 20),
        ("lezo", [], 10, 20),
    ],
)
def test_the_loop_counts_and_budgets_the_new_methods_passes(tmp_path, data_dir, method, overrides, steps, passes):
    """Through the loop: the extra batches come from its stream, its hook counts every forward,
    and train.forward_budget=20 stops at the last step that fits."""
    from tests.helpers import compose_run
    from zobench.run import run

    cfg = compose_run(
        "model=tiny-llama",
        "logger=none",
        "data.num_train=32",
        "data.num_dev=16",
        "data.num_eval=24",
        "train.batch_size=4",
        "train.eval_batch_size=8",
        f"optimizer={method}",
        *overrides,
        "train.forward_budget=20",
        "train.eval_every_passes=10",
        f"data.dir={data_dir}",
    )
    summary = run(cfg, tmp_path)
    assert (summary["status"], summary["steps"], summary["forward_passes"]) == ("completed", steps, passes)


@pytest.mark.slow
@pytest.mark.parametrize(
    "method,overrides",
    [
        ("dizo", ["optimizer.interval=2", "optimizer.projection_iters=2"]),
        ("mezo_svrg", ["optimizer.anchor_examples=8", "optimizer.q=3"]),
        ("lezo", []),
    ],
)
def test_an_interrupted_run_resumes_bit_identical(tmp_path, data_dir, method, overrides, caplog):
    """The state these methods add (θ0, θ̄ and the anchor's scalars, named groups) and the batches
    they draw from the loop's stream survive a checkpoint: a run stopped by a signal mid-way and
    resumed equals the uninterrupted one bit for bit. In-process (the run's own signal handler
    checkpoints and stops, as under SIGTERM; the resumed run rebuilds everything from the
    checkpoint); the SIGTERM of a real process is tests/test_resume.py's."""
    from safetensors.torch import load_file

    from tests.helpers import SMOKE, compose_run, signal_at_loss_call, stable
    from zobench.run import run

    args = (
        *SMOKE,
        f"optimizer={method}",
        "optimizer.lr=1e-2",
        *overrides,
        "train.steps=6",
        "train.eval_every=2",
        "train.log_every=1",
        "train.save_final=true",
        "train.checkpoint_every=0",  # only the signal checkpoints
        f"data.dir={data_dir}",
    )
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    run(compose_run(*args), reference)
    with pytest.MonkeyPatch.context() as patch:
        signal_at_loss_call(patch, 4)  # mid-run (a step makes 1 to 3 calls; call 1 is the memory probe)
        stopped = run(compose_run(*args), resumed)
    assert stopped["status"] == "interrupted" and 1 <= stopped["steps"] < 6, stopped
    with caplog.at_level("INFO", logger="zobench"):
        summary = run(compose_run(*args), resumed)
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert f"resumed from step {stopped['steps']}" in caplog.text  # not started afresh
    assert stable(resumed / "metrics.jsonl") == stable(reference / "metrics.jsonl")
    final = load_file(resumed / "final/trainable.safetensors")
    expected = load_file(reference / "final/trainable.safetensors")
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)
