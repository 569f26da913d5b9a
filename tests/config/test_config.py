"""``zobench.config.validate`` runs once per run, from ``run.run`` (zobench/config/__init__.py)."""

import pytest

from tests.helpers import SMOKE, compose_run, zobench_in_process
from zobench import config
from zobench.errors import ConfigError


def _count_validations(monkeypatch) -> list:
    """Every call of ``validate``, by any import of it (the package's and run.py's names)."""
    calls: list = []
    real = config.validate

    def counted(cfg):
        calls.append(cfg)
        return real(cfg)

    monkeypatch.setattr("zobench.config.validate", counted)
    monkeypatch.setattr("zobench.run.validate", counted)
    return calls


def test_the_cli_validates_a_run_once_before_anything_else(tmp_path, data_dir, monkeypatch):
    """Up to the rank's start (where a run begins to act): one validation, then the sources."""
    calls = _count_validations(monkeypatch)
    order: list = []
    import zobench.models.loading as loading

    real_sources = loading.check_sources
    monkeypatch.setattr(loading, "check_sources", lambda cfg: (order.append(len(calls)), real_sources(cfg)))

    def stop(ctx, resolved):
        raise ConfigError("stopped here by the test")

    monkeypatch.setattr("zobench.dist.rundir.check_same_config", stop)  # run.run's step after the checks
    run_dir = f"hydra.run.dir={tmp_path / 'run'}"
    result = zobench_in_process(*SMOKE, f"data.dir={data_dir}", run_dir, monkeypatch=monkeypatch)
    assert "zobench: error: stopped here by the test" in result.stderr and result.returncode == 2, result.stderr
    assert len(calls) == 1 and order == [1]  # validated once, and before the hub and data checks


@pytest.mark.slow  # a whole tiny run (seconds)
def test_a_whole_run_validates_once(tmp_path, data_dir, monkeypatch):
    calls = _count_validations(monkeypatch)
    result = zobench_in_process(
        *SMOKE, "train.steps=2", "train.eval_every=2", f"data.dir={data_dir}", f"hydra.run.dir={tmp_path / 'run'}",
        monkeypatch=monkeypatch,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(calls) == 1


def test_dist_alone_is_checked_before_a_rank_joins():
    """The Hydra callback's check (``dist.rundir.start``): dist.* only, every bad key."""
    cfg = compose_run("dist.mode=both", "dist.timeout_s=0", "train.steps=-1")
    with pytest.raises(ConfigError) as err:
        config.validate_dist(cfg)
    assert err.value.lines == [
        "dist.mode='both': allowed auto, data, directions, sharded",
        "dist.timeout_s=0: expected seconds, a number > 0",
    ]
    config.validate_dist(compose_run("~dist"))  # no dist node: one process
