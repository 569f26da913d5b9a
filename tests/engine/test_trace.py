"""Stalls name their place: engine phases and module forwards are traced on request, and the
watchdog reports phase, module and every thread's stack when nothing progresses (issue 21)."""

import io
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


def test_watchdog_reports_to_a_stream_without_a_file_descriptor(clean_trace):
    """pytest's captured stderr, a notebook's or a StringIO has no fileno(): faulthandler cannot
    write there, the watchdog's own line still is, and its thread does not die raising."""
    out = io.StringIO()
    dog = trace.Watchdog(0.2, stream=out)
    try:
        time.sleep(0.7)
        alive = dog._thread.is_alive()
    finally:
        dog.stop()
    assert alive and dog.fired >= 2 and "zobench: watchdog: no progress for" in out.getvalue()


# --- the run's watchdog: a stall inside a step ends the run (issue 32) ---------------------------


def test_a_stall_inside_a_step_calls_on_stall_with_step_phase_and_module(clean_trace, tmp_path):
    out, reasons = (tmp_path / "watchdog.txt").open("w+"), []
    dog = trace.Watchdog(0.2, stream=out, on_stall=reasons.append)
    try:
        time.sleep(0.5)  # a stall between steps (a checkpoint write, an evaluation): reported only
        between = list(reasons)
        with trace.step("step 7"):
            trace._progress(phase="perturb", module="model.layers.0.mlp")
            time.sleep(0.5)
    finally:
        dog.stop()
    out.seek(0)
    assert dog.fired >= 2 and between == [] and "no progress" in out.read()
    assert reasons and reasons[0].startswith("step 7 made no progress for")
    assert "phase=perturb module=model.layers.0.mlp" in reasons[0] and "\n" not in reasons[0]


def test_exit_on_stall_writes_one_line_and_exits_without_unwinding(clean_trace, monkeypatch, capsys):
    codes = []
    monkeypatch.setattr(trace.os, "_exit", codes.append)
    monkeypatch.setattr(trace, "resume_hint", ["the checkpoint of step 4 is intact: run the same command"])
    trace.exit_on_stall("step 5 made no progress for 300 s (phase=update module=lm_head)")
    err = capsys.readouterr().err
    assert codes == [trace.EXIT_STALL] and trace.EXIT_STALL != 0
    assert err == (
        "zobench: error: watchdog: step 5 made no progress for 300 s (phase=update module=lm_head); "
        "the checkpoint of step 4 is intact: run the same command\n"
    )


def test_the_environment_overrides_the_configured_period(monkeypatch):
    monkeypatch.delenv("ZOBENCH_WATCHDOG", raising=False)
    assert trace.watchdog_seconds(300) == 300 and trace.watchdog_seconds(None) == 0
    monkeypatch.setenv("ZOBENCH_WATCHDOG", "20")
    assert trace.watchdog_seconds(300) == 20
    monkeypatch.setenv("ZOBENCH_WATCHDOG", "0")
    assert trace.watchdog_seconds(300) == 0  # off, whatever the config says


_SLEEPING_STEP = """
import sys, time
from zobench.train import learners
step, calls = learners.ZOLearner.step, []
def sleepy(self, batch):  # the third step hangs (a kernel that never returns)
    calls.append(1)
    if len(calls) == 3:
        time.sleep(120)
    return step(self, batch)
learners.ZOLearner.step = sleepy
from zobench.__main__ import main
sys.argv = ["zobench", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_a_hung_step_ends_the_run_and_the_same_command_resumes(tmp_path, data_dir):
    import json
    import subprocess
    import sys

    from tests.helpers import REPO, SMOKE

    run_dir = tmp_path / "run"
    args = [*SMOKE, "train.steps=4", "train.checkpoint_every=2", "train.checkpoint=weights", "engine=torch",
            f"data.dir={data_dir}", f"hydra.run.dir={run_dir}"]  # fmt: skip
    env = {k: v for k, v in __import__("os").environ.items() if k != "ZOBENCH_WATCHDOG"}
    env["PYTHONPATH"] = str(REPO / "src") + ":" + str(REPO)
    started = time.monotonic()
    hung = subprocess.run(
        [sys.executable, "-c", _SLEEPING_STEP, *args, "engine.watchdog_s=1"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert hung.returncode == trace.EXIT_STALL and time.monotonic() - started < 60, hung.stderr[-2000:]
    reason = hung.stderr.strip().splitlines()[-1]
    assert reason.startswith("zobench: error: watchdog: step 3 made no progress for"), hung.stderr[-2000:]
    assert "the checkpoint of step 2 is intact: run the same command with engine=torch to resume" in reason
    assert not (run_dir / "summary.json").exists() and (run_dir / "checkpoint").is_dir()
    resumed = subprocess.run(
        [sys.executable, "-m", "zobench", *args], capture_output=True, text=True, timeout=240, env=env
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 4
    assert summary["engine_used"]["backend"] == "torch" and "engine torch/virtual+paired [cpu]" in resumed.stdout
    assert "resumed from step 2" in "".join(p.read_text() for p in run_dir.rglob("*.log"))
