"""Config composition of every group option, --help, and conf/ + tasks/ inside the wheel."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers import compose_run
from tests.helpers import options as _options
from zobench.resources import conf_dir

GROUPS = ("model", "task", "optimizer", "tuning", "engine", "logger")
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes(group, option):
    cfg = compose_run(f"{group}={option}", "data.dir=/tmp/mirror")
    OmegaConf.resolve(cfg)
    assert cfg[group].name == option if "name" in cfg[group] else cfg[group].backend == option
    for key in (
        "seed",
        "train.steps",
        "train.batch_size",
        "train.eval_every",
        "data.dir",
        "data.num_train",
        "data.num_dev",
        "data.num_eval",
    ):
        assert OmegaConf.select(cfg, key) is not None, key


def test_defaults_are_the_offline_config(monkeypatch):
    monkeypatch.setenv("ZOBENCH_DATA_DIR", "/some/mirror")
    cfg = compose_run()
    assert (cfg.model.name, cfg.task.name, cfg.optimizer.name, cfg.tuning.name) == (
        "smollm2-135m",
        "sst2",
        "mezo",
        "full",
    )
    assert cfg.data.dir == "/some/mirror"
    assert (cfg.data.num_train, cfg.data.num_dev, cfg.data.num_eval) == (1000, 500, 1000)


def test_every_model_config_has_the_loader_keys():
    for option in _options("model"):
        model = compose_run(f"model={option}").model
        assert model.family in ("causal", "masked") and model.dtype in ("float32", "float16", "bfloat16")
        assert model.source in ("hub", "gguf_package", "random")
        assert model.source != "hub" or model.hub_id


def test_every_task_config_has_a_spec():
    from zobench.tasks import available_tasks

    assert _options("task") == available_tasks()
    assert not (conf_dir() / "task").exists()  # generated from tasks/*.yaml, not a second file per task


def test_the_task_group_is_each_specs_run_settings():
    """task=<name> is tasks/<name>.yaml's name and run settings, in the spec's key order."""
    from zobench.tasks import available_tasks, load_task

    for name in available_tasks():
        task = compose_run(f"task={name}").task
        assert list(task.items()) == list(load_task(name).run_config().items()), name
    # the values the MeZO protocol and the memory-aware causal defaults rely on
    assert dict(compose_run("task=rte").task) == {"name": "rte", "max_length": 512, "masked_max_length": 256}
    assert dict(compose_run("task=cb").task) == {"name": "cb", "max_length": 512, "num_dev": 100}
    assert compose_run("task=copa", "task.num_dev=7", "data.dir=/m").data.num_dev == 7


@pytest.mark.slow  # a CLI subprocess
def test_help_lists_every_group_and_option():
    out = subprocess.run(
        [sys.executable, "-m", "zobench", "--help"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    for group in GROUPS:
        line = next(l for l in out.splitlines() if l.startswith(f"{group}:"))
        assert all(option in line for option in _options(group)), line


@pytest.mark.slow  # builds a wheel, then a subprocess
def test_wheel_ships_conf_and_tasks_and_finds_them(tmp_path):
    """A non-editable install must find conf/ and tasks/ as package data."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        timeout=300,
    )
    wheel = next(tmp_path.glob("zobench-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "zobench/_data/conf/config.yaml" in names
    assert "zobench/_data/tasks/sst2.yaml" in names
    assert "zobench/_data/conf/model/smollm2-135m.yaml" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = "import zobench.resources as r, zobench.tasks as t; print(r.conf_dir()); print(t.load_task('rte').name)"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        timeout=120,
    )
    conf, task = out.stdout.split()
    assert conf == str(site / "zobench" / "_data" / "conf") and task == "rte"
