"""A task is one file: the Hydra ``task`` group is generated from ``tasks/*.yaml``, so a spec
dropped into the tasks folder composes and runs with no other file touched."""

import json

import pytest
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

import zobench.tasks
from tests.helpers import compose_run
from zobench.errors import ConfigError
from zobench.tasks.configs import register_task_configs, registered_tasks

# a task a user might add: SST-2's data under another prompt, with its own run settings
POLARITY = """\
name: polarity
version: 1
description: SST-2 sentences under another prompt (a task added as one file).
dataset: {path: glue, name: sst2}
splits: {train: train, eval: validation}
label_field: label
objective: classification
metric: accuracy
max_length: 64
num_dev: 8
causal:
  prompt: "Review: {{ sentence }}\\nSentiment:"
  candidates: [" negative", " positive"]
"""


@pytest.fixture
def new_task(tmp_path, monkeypatch):
    """A tasks folder holding only ``polarity.yaml``, registered as the shipped ones are and seen
    by ``load_task``; Hydra's ConfigStore is restored afterwards."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "polarity.yaml").write_text(POLARITY)
    from zobench.resources import conf_dir

    conf_dir()  # the shipped tasks registered (the group exists) also when this module runs alone
    store = ConfigStore.instance().repo["task"]
    saved = dict(store)
    monkeypatch.setattr(zobench.tasks, "tasks_dir", lambda: folder)
    assert register_task_configs(folder) == ["polarity"]
    yield folder
    store.clear()
    store.update(saved)


def test_a_task_in_the_tasks_folder_composes_with_its_run_settings(new_task):
    assert "polarity" in registered_tasks() and "sst2" in registered_tasks()
    cfg = compose_run("task=polarity", "data.dir=/m")
    assert dict(cfg.task) == {"name": "polarity", "max_length": 64, "num_dev": 8}
    assert cfg.data.num_dev == 8  # ${oc.select:task.num_dev,500}
    assert compose_run("task=polarity", "task.max_length=32").task.max_length == 32


def test_a_spec_that_does_not_parse_is_refused_naming_its_file(tmp_path):
    (tmp_path / "broken.yaml").write_text(POLARITY.replace("name: polarity", "name: broken").replace("64", "0"))
    with pytest.raises(ConfigError, match=r"broken\.yaml: max_length=0; a positive integer is needed"):
        register_task_configs(tmp_path)
    assert "broken" not in registered_tasks()


def test_a_bad_shipped_spec_stops_the_cli_with_one_line(monkeypatch, capsys):
    import zobench.__main__ as cli
    import zobench.tasks.configs as configs

    def refuse():
        raise ConfigError("tasks/rte.yaml: missing keys ['max_length']")

    monkeypatch.setattr(configs, "ensure_registered", refuse)
    monkeypatch.setattr("sys.argv", ["zobench", "task=rte"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    assert capsys.readouterr().err == "zobench: error: tasks/rte.yaml: missing keys ['max_length']\n"


@pytest.mark.slow
def test_a_task_in_the_tasks_folder_trains_a_tiny_model(new_task, tmp_path, data_dir):
    """Adding a task = adding its YAML (and its data): a 2-step MeZO run on tiny-llama."""
    from zobench.run import run

    mirror = tmp_path / "mirror" / "polarity"
    mirror.mkdir(parents=True)
    for split, rows in (("train", 40), ("validation", 16)):
        lines = (data_dir / "sst2" / f"{split}.jsonl").read_text().splitlines()[:rows]
        (mirror / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    cfg = compose_run(
        "task=polarity",
        "model=tiny-llama",
        "logger=none",
        f"data.dir={mirror.parent}",
        "data.num_train=16",
        "data.num_eval=16",
        "train.steps=2",
        "train.eval_every=2",
        "train.batch_size=4",
        "train.eval_batch_size=8",
    )
    summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["task"] == "polarity"
    assert 0 <= summary["dev_accuracy"] <= 1 and 0 <= summary["test_accuracy"] <= 1
    config = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert config.task.max_length == 64 and config.data.num_dev == 8
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["task"] == "polarity"
