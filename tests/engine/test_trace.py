"""Stalls name their place: engine phases and module forwards are traced on request, and the
watchdog reports phase, module and every thread's stack when nothing progresses (issue 21)."""

import logging
import time

import pytest
import torch
from torch import nn

from zobench.engine import build_engine, trace
from zobench.optim import MeZO


@pytest.fixture
def clean_trace():
    trace.uninstall()
    yield
    trace.uninstall()


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 1)).requires_grad_(False)


@pytest.mark.parametrize("mode", ["virtual", "inplace"])
def test_trace_logs_each_phase_and_module_of_a_step(mode, clean_trace, monkeypatch, caplog):
    monkeypatch.setenv("ZOBENCH_TRACE", "1")
    model = _model()
    opt = MeZO(list(model.parameters()), lr=1e-3, eps=1e-3, engine=build_engine("torch", mode, model))
    x = torch.randn(4, 6)
    with caplog.at_level(logging.DEBUG, logger="zobench.trace"):
        opt.step(lambda: model(x).pow(2).mean())
    messages = [r.getMessage() for r in caplog.records if r.name == "zobench.trace"]
    phases = [m.split(":")[0] for m in messages if ": " in m and m.endswith(" s")]
    assert "perturb" in phases and ("restore_and_update" in phases or "update" in phases)
    # modules by their name in the model, with the phase they run in
    assert any(m.startswith("forward 2 (after perturb)") for m in messages)


def test_no_trace_no_hooks_and_no_log(clean_trace, monkeypatch, caplog):
    monkeypatch.delenv("ZOBENCH_TRACE", raising=False)
    monkeypatch.delenv("ZOBENCH_WATCHDOG", raising=False)
    model = _model()
    opt = MeZO(list(model.parameters()), lr=1e-3, eps=1e-3, engine=build_engine("torch", "virtual", model))
    with caplog.at_level(logging.DEBUG, logger="zobench.trace"):
        opt.step(lambda: model(torch.randn(4, 6)).pow(2).mean())
    assert not [r for r in caplog.records if r.name == "zobench.trace"] and not trace._hooks
    assert trace.current_phase() == "after restore_and_update"  # the phase is still known, for free


def test_watchdog_reports_phase_module_and_stacks_of_a_stall(clean_trace, tmp_path):
    out = (tmp_path / "watchdog.txt").open("w+")
    trace._progress(phase="perturb", module="model.decoder.layers.3.fc1")
    dog = trace.Watchdog(0.2, stream=out)
    try:
        time.sleep(0.7)  # a stall: nothing progresses
    finally:
        dog.stop()
    out.seek(0)
    text = out.read()
    assert dog.fired >= 1
    assert "zobench: watchdog: no progress for" in text
    assert "phase=perturb module=model.decoder.layers.3.fc1" in text
    assert "test_watchdog_reports_phase_module_and_stacks_of_a_stall" in text  # the main thread's stack


def test_watchdog_stays_quiet_while_the_step_progresses_then_reports_the_stall(clean_trace, tmp_path):
    out = (tmp_path / "watchdog.txt").open("w+")
    dog = trace.Watchdog(0.4, stream=out)
    try:
        for _ in range(12):
            with trace.phase("update"):
                time.sleep(0.05)
        quiet = dog.fired  # 0.6 s of steady progress, longer than the period
        time.sleep(0.6)  # then a stall: reported
    finally:
        dog.stop()
    out.seek(0)
    assert quiet == 0 and dog.fired >= 1 and "phase=after update" in out.read()
