"""Every method ``offload`` accepts gives offloaded the results it gives in memory; the others
are refused with one line naming the method and ``offload``."""

from __future__ import annotations

import functools

import pytest
import torch
from omegaconf import OmegaConf

from tests.helpers import compose_run, tiny_model
from zobench.config import rules, validate
from zobench.engine import VirtualEngine
from zobench.errors import ConfigError
from zobench.offload import CpuStore, DiskStore, OffloadEngine, Offloader
from zobench.offload import setup as offload
from zobench.optim import decay_groups
from zobench.optim.registry import methods
from zobench.trajectory.tape import ReplayTape, Tape, replay_steps

#: hyperparameters that reach each method's less common paths within a few steps: LoZO's lazy
#: steps, HiZOO's Σ moving (α = 1e-8 leaves it at ones), DiZO's projection round (step 2),
#: MeZO-SVRG's anchor of two batches and its inner steps
OVERRIDES = {
    "lozo": {"lazy_steps": 2},
    "zo_sgd_sign+adamw": {"base": "adamw"},
    "zo_sgd_cons+adamw": {"base": "adamw"},
    "hizoo": {"hessian_smooth": 0.5},
    "hizoo+2024": {"rule": "2024", "hessian_smooth": 0.5},
    "dizo": {"interval": 2, "projection_iters": 2},
    "mezo_svrg": {"anchor_examples": 4},
}
#: every method offload accepts, and the variants with another update path
CASES = [*(m for m in offload.METHODS if m != "mezo"), "zo_sgd_sign+adamw", "zo_sgd_cons+adamw", "hizoo+2024"]
STEPS = 3


def _hyperparameters(case: str) -> dict:
    name = case.split("+")[0]
    cfg = OmegaConf.to_container(compose_run(f"optimizer={name}").optimizer, resolve=True)
    for key in ("name", "_target_", "first_order", "weight_decay"):
        cfg.pop(key, None)
    cfg["lr"] = 1e-2
    if "eps" in cfg:
        cfg["eps"] = 1e-2
    return {**cfg, **OVERRIDES.get(case, {})}


def _closure(model, seed: int):
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(seed)).to(model.device)

    def closure(replicas: int = 1):
        logits = model(input_ids=ids.repeat(replicas, 1)).logits.float()
        losses = logits.logsumexp(-1).reshape(replicas, -1).mean(-1)
        return losses if replicas > 1 else losses[0]

    return closure


def _store(kind: str | None, root):
    if kind is None:
        return None
    return CpuStore(2, pin=False) if kind == "cpu" else DiskStore(root / "store", 2)


def _optimizer(case: str, model, engine):
    name = case.split("+")[0]
    cls = methods()[name]
    groups = decay_groups(model.named_parameters(), 0.1, names=getattr(cls, "takes_names", False))
    opt = cls(groups, engine=engine, seed=1, **_hyperparameters(case))
    if isinstance(engine, OffloadEngine):
        offload.bind(opt, name)
    if hasattr(opt, "bind_data"):
        opt.bind_data(lambda: _closure(model, 99), 2)
    return opt


def _run(case: str, dtype: torch.dtype, store=None, device: str = "cpu"):
    """Losses of ``STEPS`` steps and the final weights of ``case`` on a tiny Llama, in memory
    (``store`` None) or streamed from ``store``, computing on ``device``."""
    model = tiny_model("llama", dtype).to(device)
    engine = VirtualEngine(model)
    offloader = None
    if store is not None:
        offloader = Offloader(model, store, device)
        offloader.evict()
        engine = OffloadEngine(engine, offloader)
    opt = _optimizer(case, model, engine)
    losses = [float(opt.step(_closure(model, s))) for s in range(STEPS)]
    if offloader is None:
        return losses, {n: p.detach().clone() for n, p in model.named_parameters()}
    weights = offloader.state_dict()
    offloader.close()
    return losses, weights


@functools.cache
def _in_memory(case: str, dtype: torch.dtype):
    return _run(case, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["cpu", "disk"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES)
def test_streamed_method_equals_in_memory(case, dtype, kind, tmp_path):  # mezo's GPU path: test_equivalence.py
    expected, reference = _in_memory(case, dtype)
    losses, weights = _run(case, dtype, _store(kind, tmp_path))
    assert losses == expected
    assert weights.keys() == reference.keys()
    assert all(torch.equal(weights[n], t) for n, t in reference.items()), case
    assert len(set(expected)) > 1  # the steps moved the weights


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["cpu", "disk"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", ["hizoo", "mezo_svrg", "dizo", "sparse_mezo", "zo_adam"])
def test_streamed_to_the_gpu_equals_in_gpu(case, dtype, kind, tmp_path):
    """The state streams to the GPU with its block (side stream, pinned host buffers)."""
    expected, reference = _run(case, dtype, device="cuda")
    store = CpuStore(2, pin=True) if kind == "cpu" else DiskStore(tmp_path / "store", 2)
    losses, weights = _run(case, dtype, store, device="cuda")
    assert losses == expected
    assert all(torch.equal(weights[n].cuda(), t) for n, t in reference.items()), case


def _recorded(case: str, model):
    """``STEPS`` steps of ``case`` in memory, every closure value taped: ``(records, weights)``."""
    tape = Tape()
    opt = _optimizer(case, model, VirtualEngine(model))
    if hasattr(opt, "bind_data"):
        opt.bind_data(lambda: tape.wrap(_closure(model, 99), replicas=True), 2)
    records = []
    for s in range(STEPS):
        tape.start()
        opt.step(tape.wrap(_closure(model, s), replicas=True))
        records.append((s + 1, list(tape.calls)))
    return records, {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.slow
@pytest.mark.parametrize("case", ["hizoo", "mezo_svrg", "dizo", "sparse_mezo", "zo_adam"])
def test_replayed_resume_of_a_streamed_method_equals_in_memory(case, tmp_path):
    """A resume of ``offload=disk`` replays the log with no forward (recorded closure values):
    each block gets the updates, θ̄ copies, distances and rewritten evaluations of the steps
    after its own (``Offloader.floor``), queued when no forward reaches it. Block 1 holds the
    last step already (with its state), block 0 is at the base: both must end at the trained
    weights."""
    records, trained = _recorded(case, tiny_model("llama"))
    store = DiskStore(tmp_path / "store", 2)
    model = tiny_model("llama")
    offloader = Offloader(model, store)
    offloader.evict()  # the base, step 0
    base = store.read(0)
    engine = OffloadEngine(VirtualEngine(model), offloader)
    replay_steps(_optimizer(case, model, engine), ReplayTape(replicas=True), records, 2)
    offloader.flush()
    offloader.close()
    assert [store.step(i) for i in range(2)] == [STEPS, STEPS]
    store.write(0, base, 0)  # as a kill can leave it: block 0 at the base, block 1 at the end
    model = tiny_model("llama")  # the resident layers from the base again
    offloader = Offloader(model, store)
    offloader.adopt()
    assert offloader.floor == [0, STEPS]
    engine = OffloadEngine(VirtualEngine(model), offloader)
    replay_steps(_optimizer(case, model, engine), ReplayTape(replicas=True), records, 2)
    weights = offloader.state_dict()
    offloader.close()
    assert all(torch.equal(weights[n], t) for n, t in trained.items()), case


#: reads and writes of every block per step (steps 1..3, ``OVERRIDES``' hyperparameters), as
#: docs/offload.md counts them: HiZOO ℓ0 + the ± pair + a stateful update per param group
#: (decay, no decay); Sparse-MeZO the thresholds' read + the pair; MeZO-SVRG (q = 2, an anchor
#: of 2 batches) the anchor's batches + θ̄ ← θ, the inner pair at θ and at θ̄; DiZO (κ = 2, 2
#: iterations) θ0 at step 1, the round at step 2: distances + 2 per iteration + the rescale
PASSES = {
    "hizoo": [(4, 2), (4, 2), (4, 2)],
    "sparse_mezo": [(2, 0), (2, 1), (2, 1)],
    "mezo_svrg": [(3, 1), (2, 1), (3, 2)],
    "dizo": [(2, 1), (1 + 1 + 2 * 2 * 1 + 1, 1 + 1 + 2 * 2 * 1 + 1), (1, 0)],
}


@pytest.mark.parametrize("case", sorted(PASSES))
def test_passes_over_storage_per_step(case):
    model = tiny_model("llama")
    offloader = Offloader(model, CpuStore(2, pin=False))
    offloader.evict()
    opt = _optimizer(case, model, OffloadEngine(VirtualEngine(model), offloader))
    counted = []
    for s in range(STEPS):
        reads, writes = offloader.reads, offloader.writes
        opt.step(_closure(model, s))
        counted.append(((offloader.reads - reads) / 2, (offloader.writes - writes) / 2))
    offloader.close()
    assert counted == PASSES[case]


def test_every_method_streams():
    import zobench.optim  # noqa: F401  (registers the methods)

    assert set(offload.METHODS) == set(methods())


def test_a_method_not_checked_to_stream_is_refused_by_name(monkeypatch):
    """A method registered but not (yet) in ``OFFLOAD_METHODS`` is refused in one line naming it
    and ``offload``."""
    monkeypatch.setattr(rules, "OFFLOAD_METHODS", tuple(m for m in rules.OFFLOAD_METHODS if m != "hizoo"))
    cfg = compose_run("optimizer=hizoo", "offload=disk", "train.keep_best=false")
    expected = (
        r"^optimizer=hizoo cannot run with offload=disk yet: it is not among the methods checked to stream; "
        r"allowed: mezo, "
    )
    with pytest.raises(ConfigError, match=expected) as caught:
        validate(cfg)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["offload.mode=tape"], r"^offload.mode='tape': allowed none, cpu, disk"),
        (["offload=disk", "offload.dir=''"], r"^offload.dir='': expected a folder or null"),
        (["offload=cpu", "engine.mode=inplace"], r"^offload=cpu needs engine.mode=virtual"),
        (["offload=disk", "tuning=lora"], r"^offload=disk streams full-parameter tuning"),
    ],
)
def test_bad_offload_configs_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as caught:
        validate(compose_run(*overrides))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("mode", ["cpu", "disk"])
def test_keep_best_save_final_and_weights_checkpoints_are_allowed_with_offload(mode):
    """They rebuild / write block by block (tests/offload/test_run.py): the defaults validate."""
    cfg = compose_run(f"offload={mode}", "train.save_final=true", "train.checkpoint=weights")
    assert cfg.train.keep_best
    validate(cfg)


def test_offload_none_is_the_default():
    cfg = compose_run()
    assert cfg.offload.mode == "none"
    validate(cfg)
