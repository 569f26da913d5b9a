"""Stop signals under a job manager: the run stops on submitit's SIGUSR2 too, and ``__main__``
hands the signal to the handler installed before the run's (submitit's requeue) once the
checkpoint is written. The full path on a real Slurm cluster is tests/test_slurm.py."""

from __future__ import annotations

import signal

import pytest

from zobench import __main__ as entry
from zobench.signals import STOP_SIGNALS, StopRequest


def test_sigusr2_stops_the_run_and_the_previous_handler_comes_back():
    assert signal.SIGUSR2 in STOP_SIGNALS
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        with StopRequest() as stop:
            signal.raise_signal(signal.SIGUSR2)
            assert stop.signum == signal.SIGUSR2 and calls == []  # the run's handler, not the manager's
        entry._hand_over(signal.SIGUSR2)  # as _app does after the checkpoint
        assert calls == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_nothing_is_handed_over_without_a_manager(signum):
    # Python's own SIGINT handler would raise KeyboardInterrupt; SIG_DFL would kill the process
    entry._hand_over(signum)


def test_interrupted_run_exits_with_128_plus_signal_after_handing_over(monkeypatch):
    handed = []
    monkeypatch.setattr(entry, "_hand_over", handed.append)
    monkeypatch.setattr("zobench.run.run", lambda cfg, run_dir: {"status": "interrupted", "signal": "SIGUSR2"})
    monkeypatch.setattr("zobench.models.loading.check_sources", lambda cfg: None)  # no config to check here
    monkeypatch.setattr(
        entry,
        "HydraConfig",
        type(
            "H", (), {"get": staticmethod(lambda: type("C", (), {"runtime": type("R", (), {"output_dir": "."})()})())}
        ),
    )
    with pytest.raises(SystemExit) as exit_info:
        entry._app({})
    assert handed == [signal.SIGUSR2] and exit_info.value.code == 128 + signal.SIGUSR2


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_while_stopping_is_noted_not_acted_on(signum):
    """Two quick Ctrl-C: the second must not raise KeyboardInterrupt in the middle of the
    checkpoint (a traceback, status failed, steps 0); the run still stops cleanly after it."""
    with StopRequest() as stop:
        signal.raise_signal(signum)
        signal.raise_signal(signum)  # Python's handler would raise KeyboardInterrupt here
        assert stop.signum == signum
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored on exit


def _requeue_killed_by(returncode, cmd=("scontrol", "requeue", "7")):
    import subprocess

    def handler(signum, frame):  # submitit's: checkpoint, then check_call(["scontrol", "requeue", job])
        raise subprocess.CalledProcessError(returncode, list(cmd))

    return handler


def test_requeue_ended_by_its_own_sigterm_counts_as_requeued(monkeypatch, caplog):
    """Slurm signals every process of a requeued job's step, ``scontrol`` too when it has not
    exited yet: the job is requeued, so it must exit without an error result (which the sweep
    would report as a failed run)."""
    previous = signal.signal(signal.SIGUSR2, _requeue_killed_by(-signal.SIGTERM))
    try:
        entry._hand_over(signal.SIGUSR2)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert "requeued" in caplog.text


@pytest.mark.parametrize(
    "returncode, cmd",
    [(1, ("scontrol", "requeue", "7")), (-signal.SIGKILL, ("scontrol", "requeue", "7")), (-15, ("sbatch", "x"))],
)
def test_other_requeue_failures_still_raise(returncode, cmd):
    import subprocess

    previous = signal.signal(signal.SIGUSR2, _requeue_killed_by(returncode, cmd))
    try:
        with pytest.raises(subprocess.CalledProcessError):
            entry._hand_over(signal.SIGUSR2)
    finally:
        signal.signal(signal.SIGUSR2, previous)
