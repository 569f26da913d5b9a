"""The rules between keys (zobench/config/rules.py), each written once."""

import pytest
from omegaconf import OmegaConf

from zobench.config import rules, validate
from zobench.errors import ConfigError


@pytest.mark.parametrize(
    "overrides, line",
    [
        (["data.num_train=0"], "data.num_train=0: expected an integer >= 1"),
        (["data.num_eval=0"], "data.num_eval=0: expected an integer >= 1"),
        (["data.protocol=kshot", "data.num_eval=-1"], "data.num_eval=-1: expected an integer >= 0"),
        (
            ["train.forward_budget=10", "train.steps=0", "data.num_train=0"],
            "data.num_train=0: expected an integer >= 1",
        ),
        (
            ["train.eval_every_passes=5"],
            "train.eval_every_passes needs train.forward_budget (otherwise use train.eval_every)",
        ),
        (
            ["icl.demos=1001"],
            "icl.demos=1001 > data.num_train=1000: demonstrations are drawn from the training examples",
        ),
        (
            ["engine.backend=torch", "engine.fused_linear=true"],
            "engine.fused_linear=true needs engine.backend=triton (or auto on CUDA) and engine.mode=virtual; "
            "got engine.backend=torch, engine.mode=virtual",
        ),
    ],
)
def test_each_rule_is_one_line(overrides, line, run_config, with_override):
    cfg = with_override(run_config, *overrides)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value).startswith(line)


@pytest.mark.parametrize(
    "overrides", [["train.steps=0", "data.num_train=0"], ["data.protocol=kshot", "data.num_train=0", "data.num_eval=0"]]
)
def test_what_the_rules_allow(overrides, run_config, with_override):
    validate(
        with_override(run_config, *overrides)
    )  # zero-shot evaluation needs no training set; kshot: k per class, 0 = the full test set


def test_fused_linear_is_one_rule_for_the_config_and_the_engine():
    """The config knows the backend asked for; the engine also what ``auto`` resolved to."""
    assert rules.fused_linear("auto", "virtual") is None and rules.fused_linear("triton", "virtual") is None
    assert "got engine.backend=triton, engine.mode=inplace" in rules.fused_linear("triton", "inplace")
    assert rules.fused_linear("auto", "virtual", resolved="triton") is None
    assert rules.fused_linear("auto", "virtual", resolved="torch") == (
        "engine.fused_linear=true needs the Triton backend in virtual mode; got "
        "engine.backend=auto (resolved: torch), engine.mode=virtual"
    )
    from zobench.engine import build_engine

    with pytest.raises(ConfigError, match=r"resolved: torch"):  # on CPU, auto is torch
        build_engine("auto", "virtual", _module(), fused_linear=True)


def _module():
    import torch

    return torch.nn.Linear(2, 2)


def test_the_bounds_read_only_valid_keys():
    cfg = OmegaConf.create({"train": {"steps": "abc", "forward_budget": None}, "data": {"protocol": "mezo"}})
    assert rules.num_train_minimum(cfg) == 0  # a bad train.steps is its own error, not this one's
    assert rules.num_eval_minimum(OmegaConf.create({"data": {"protocol": "lmbff"}})) == 1
