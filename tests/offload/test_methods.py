"""Every method ``offload`` accepts gives offloaded the results it gives in memory; the others
are refused with one line naming the method and ``offload``."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tests.helpers import compose_run, tiny_model
from zobench.config import validate
from zobench.engine import VirtualEngine
from zobench.errors import ConfigError
from zobench.offload import CpuStore, OffloadEngine, Offloader
from zobench.offload import setup as offload
from zobench.optim import decay_groups
from zobench.optim.registry import methods

#: hyperparameters that reach each method's less common paths within a few steps
OVERRIDES = {"lozo": {"lazy_steps": 2}, "zo_sgd_sign+adamw": {"base": "adamw"}, "zo_sgd_cons+adamw": {"base": "adamw"}}


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
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(seed))

    def closure(replicas: int = 1):
        losses = model(input_ids=ids.repeat(replicas, 1)).logits.logsumexp(-1).reshape(replicas, -1).mean(-1)
        return losses if replicas > 1 else losses[0]

    return closure


def _run(case: str, offloaded: bool):
    name = case.split("+")[0]
    cls, model = methods()[name], tiny_model("llama")
    engine = VirtualEngine(model)
    offloader = None
    if offloaded:
        offloader = Offloader(model, CpuStore(2, pin=False))
        offloader.evict()
        engine = OffloadEngine(engine, offloader)
    groups = decay_groups(model.named_parameters(), 0.1, names=getattr(cls, "takes_names", False))
    opt = cls(groups, engine=engine, seed=1, **_hyperparameters(case))
    if offloaded:
        offload.bind(opt, name)
    if hasattr(opt, "bind_data"):
        opt.bind_data(lambda: _closure(model, 99), 2)
    losses = [float(opt.step(_closure(model, s))) for s in range(4)]
    weights = offloader.state_dict() if offloader else {n: p.detach() for n, p in model.named_parameters()}
    return losses, weights


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", [m for m in offload.METHODS if m != "mezo"] + ["zo_sgd_sign+adamw", "zo_sgd_cons+adamw"]
)
def test_streamed_method_equals_in_memory(case):  # mezo: test_equivalence.py
    expected, reference = _run(case, False)
    losses, weights = _run(case, True)
    assert losses == expected
    assert all(torch.equal(weights[n], t) for n, t in reference.items())


def test_every_method_streams_or_is_refused_by_name():
    import zobench.optim  # noqa: F401  (registers the methods)

    assert set(offload.METHODS) | set(offload.NOT_YET) == set(methods())
    for name in offload.NOT_YET:
        cfg = compose_run(f"optimizer={name}", "offload=disk")
        with pytest.raises(ConfigError, match=rf"^optimizer={name} cannot run with offload=disk yet: .*$"):
            validate(cfg)


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
