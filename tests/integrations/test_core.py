"""build_zo and ZOSession: a method from its config without the recipe, stepped on any closure;
one RNG state per step (dropout), the host's RNG untouched; the host's view of the optimizer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zobench.errors import ConfigError
from zobench.integrations import ZOSession, build_zo
from zobench.integrations.core import HostView, engine_config


class _Noisy(nn.Module):
    """A loss with dropout: ``closure()`` returns it; ``draws`` records each call's random mask."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(16))
        self.draws: list = []

    def forward(self):
        mask = (torch.rand(16) > 0.5).float()
        self.draws.append(mask)
        return ((self.w * mask) ** 2).sum()


def test_every_evaluation_of_a_step_sees_one_dropout_draw_and_the_host_rng_is_untouched():
    model = _Noisy()
    session = ZOSession(model, build_zo(model, "mezo", engine={"backend": "torch", "mode": "inplace"}, lr=1e-3))
    torch.manual_seed(123)
    host_state = torch.get_rng_state()
    session.step(model)
    session.step(model)
    assert torch.equal(torch.get_rng_state(), host_state)  # the host's stream did not move
    first, second = model.draws[:2], model.draws[2:]
    assert torch.equal(first[0], first[1]) and torch.equal(second[0], second[1])  # one mask a step
    assert not torch.equal(first[0], second[0])  # a new one each step
    assert session.counts() == {"forward_passes": 4, "forward_passes_eval": 0}
    model()  # outside a step: the host's evaluation
    assert session.counts()["forward_passes_eval"] == 1 and len(session.tape.calls) == 2


def test_the_state_dict_holds_the_counts_and_the_peak():
    model = _Noisy()
    session = ZOSession(model, build_zo(model, "zo_sgd_sign", lr=1e-3))
    session.step(model)
    restored = ZOSession(model, build_zo(model, "zo_sgd_sign", lr=1e-3))
    restored.load_state_dict(session.state_dict())
    assert restored.metrics() == session.metrics() and restored.counts()["forward_passes"] == 2


def test_the_host_view_shares_groups_and_state_and_never_steps_the_method():
    model = _Noisy()
    learner = build_zo(model, {"name": "zo_sgd_momentum", "lr": 0.1}, engine={"mode": "inplace"})
    view, before, calls = HostView(learner.optimizer), model.w.detach().clone(), []
    assert view.step() is None and view.step(lambda: calls.append(1)) is None
    assert calls == [1] and torch.equal(model.w, before)  # the host's closure ran once, no update
    view.param_groups[0]["lr"] = 0.5  # what an LR scheduler does
    assert learner.optimizer.param_groups[0]["lr"] == 0.5
    assert view.state_dict() == learner.optimizer.state_dict()
    scheduler = torch.optim.lr_scheduler.StepLR(view, step_size=1, gamma=0.5)
    scheduler.step()
    assert learner.optimizer.param_groups[0]["lr"] == 0.25


def test_lr_and_weight_decay_fill_only_what_the_config_leaves_out():
    model = _Noisy()
    assert build_zo(model, "mezo", lr=0.2, weight_decay=0.1).optimizer.param_groups[0]["lr"] == 0.2
    given = build_zo(model, {"name": "mezo", "lr": 0.3}, lr=0.2).optimizer
    assert given.param_groups[0]["lr"] == 0.3
    assert build_zo(model, "mezo", seed=5).optimizer.param_groups[0]["seed"] == 5


@pytest.mark.parametrize(
    "engine, message",
    [("cuda", "engine='cuda': allowed auto, torch, triton"), ({"moda": "inplace"}, "engine.moda: unknown key")],
)
def test_a_bad_engine_is_refused_in_one_line(engine, message):
    with pytest.raises(ConfigError, match=message):
        engine_config(engine)


def test_a_model_without_trainable_parameters_is_refused():
    model = _Noisy().requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        build_zo(model, "mezo")
    with pytest.raises(ConfigError, match="zo=SGD: not a zeroth-order method"):
        build_zo(model, torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1))
