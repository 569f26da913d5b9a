"""Every ZO optimizer checks its hyperparameters when constructed, through ZOOptimizer's one check
(``hyperparameters`` declares each key's kind): a bad value raises ValueError("key=value: ...")
naming the key, in the constructor's arguments and in any param group."""

import inspect
import math

import pytest
import torch
from torch import nn

import zobench.optim as optim
from zobench.engine import VirtualEngine
from zobench.optim import HiZOO, ZOOptimizer

CLASSES = sorted(
    (
        cls
        for cls in vars(optim).values()
        if isinstance(cls, type) and issubclass(cls, ZOOptimizer) and cls is not ZOOptimizer
    ),
    key=lambda cls: cls.__name__,
)

# kind -> values that must be refused
BAD = {
    "nonnegative": [-1, -1e-9, math.nan, math.inf, "1e-3", True],
    "positive": [0, -1, math.nan, math.inf, "1e-3"],
    "count": [0, -2, 2.5, True],
    "natural": [-1, 1.5],
    "fraction": [-0.1, 1.0, math.nan],
    "unit": [-0.1, 1.5],
    "betas": [(0.9, 1.0), (-0.1, 0.999), (0.9,)],
}


def _build(cls, **kwargs):
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).requires_grad_(False)
    return cls(kwargs.pop("params", model.parameters()), engine=VirtualEngine(model), **kwargs)


def _cases():
    for cls in CLASSES:
        for key, kind in cls.hyperparameter_kinds().items():
            if key in inspect.signature(cls.__init__).parameters:
                for value in BAD[kind]:
                    yield pytest.param(cls, key, value, id=f"{cls.__name__}-{key}={value!r}")


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_defaults_pass_and_every_declared_key_is_an_argument(cls):
    _build(cls)
    arguments = inspect.signature(cls.__init__).parameters
    declared = set(cls.hyperparameters) if "hyperparameters" in vars(cls) else set()
    assert declared <= set(arguments), f"{cls.__name__} declares keys it does not take: {declared - set(arguments)}"
    for key in ("lr", "weight_decay"):
        assert key in arguments


@pytest.mark.parametrize("cls,key,value", list(_cases()))
def test_a_bad_value_is_refused_naming_its_key(cls, key, value):
    with pytest.raises(ValueError, match=rf"^{key}="):
        _build(cls, **{key: value})


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_a_param_group_value_is_checked_too(cls):
    model = nn.Linear(3, 2).requires_grad_(False)
    groups = [{"params": [model.weight]}, {"params": [model.bias], "lr": -1.0}]
    with pytest.raises(ValueError, match=r"^lr=-1\.0: must be a finite number >= 0"):
        cls(groups, engine=VirtualEngine(model))


def test_the_issue_example():
    params = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match=r"^lr=-1: must be a finite number >= 0"):
        HiZOO(params, lr=-1, eps=-1)
    with pytest.raises(ValueError, match=r"^eps=-1: must be a finite number > 0"):
        HiZOO(params, lr=1e-6, eps=-1)
