"""conf/experiment/: every paper table's grid composes and validates at every point, and a smoke
sweep runs end to end and feeds its table."""

import json
import subprocess
import sys

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.helpers import compose_experiment as _compose
from tests.helpers import experiment_grid as _grid
from tests.helpers import experiment_sweep as _sweep
from zobench.config import validate
from zobench.resources import conf_dir

EXPERIMENTS = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))
PAPER = [e for e in EXPERIMENTS if not e.endswith("_smoke")]


def _covering(experiment):
    """Points that use every value of every swept key at least once: the first point of the grid,
    then each other value of each key in turn (composing the full grids takes minutes)."""
    sweep = _sweep(experiment)
    first = {key: values[0] for key, values in sweep.items()}
    return [first] + [{**first, key: value} for key, values in sweep.items() for value in values[1:]]


def test_every_paper_table_has_a_smoke_variant():
    assert PAPER and all(f"{e}_smoke" in EXPERIMENTS for e in PAPER)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.slow
def test_every_swept_value_composes_and_validates(experiment):
    points = _covering(experiment)
    assert points
    for point in points:
        cfg = _compose(experiment, point)
        validate(cfg)
        for key, value in point.items():  # the swept value is the one the run sees
            seen = (
                OmegaConf.select(cfg, f"{key}.name")
                if key in ("task", "model", "optimizer", "tuning")
                else OmegaConf.select(cfg, key)
            )
            assert str(seen) == value or seen == float(value), (key, value, seen)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_sweeps_into_multirun_experiment_named_by_overrides(experiment):
    """The sweep layout is conf/config.yaml's alone (an experiment file that sets its own would
    drift from the README), and it resolves without HydraConfig (the launcher makes the sweep dir
    before any job: a `${hydra:...}` there crashed every documented paper-table command)."""
    import zobench.sweeps  # noqa: F401  (registers the resolvers, as python -m zobench does)

    assert "sweep" not in (
        yaml.safe_load((conf_dir() / "experiment" / f"{experiment}.yaml").read_text()).get("hydra") or {}
    )
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = compose(config_name="config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    assert cfg.hydra.sweep.dir == f"multirun/{experiment}"
    OmegaConf.update(cfg, "hydra.job.override_dirname", "lr_step=high,task=rte", force_add=True)
    OmegaConf.update(cfg, "hydra.job.num", 0, force_add=True)  # what the launcher sets per job
    assert cfg.hydra.sweep.subdir == "lr_step=high,task=rte"


@pytest.mark.slow
def test_mezo_table1_grid_is_the_papers():
    points = _grid("mezo_table1")
    assert len(points) == 11 * 3 * 2
    rte = [_compose("mezo_table1", p) for p in points if p["task"] == "rte"]
    chosen = {(cfg.tuning.name, cfg.optimizer.lr, cfg.optimizer.eps) for cfg in rte}
    assert chosen == {
        ("full", 1e-6, 1e-3),
        ("full", 1e-7, 1e-3),
        ("lora", 1e-4, 1e-2),
        ("lora", 5e-5, 1e-2),
        ("prefix", 1e-2, 1e-1),
        ("prefix", 1e-3, 1e-1),
    }
    cfg = _compose("mezo_table1", points[0])
    assert (cfg.model.name, cfg.train.steps, cfg.train.batch_size, cfg.train.eval_every) == ("opt-13b", 20000, 16, 4000)
    assert _compose("mezo_table1", {"task": "cb"}).data.num_dev == 100  # MeZO: CB and COPA use 100 dev examples


def test_table18_uses_the_lmbff_protocol_and_data_seeds():
    points = _grid("mezo_table18")
    assert {p["seed"] for p in points} == {"13", "21", "42", "87", "100"} and len(points) == 6 * 3 * 3 * 5
    cfg = _compose("mezo_table18", points[0])
    assert (cfg.model.family, cfg.data.protocol, cfg.data.k, cfg.data.seed) == (
        "masked",
        "kshot",
        16,
        int(points[0]["seed"]),
    )
    assert _compose("mezo_table18_k512", points[0]).data.k == 512


@pytest.mark.slow
def test_a_smoke_table_runs_end_to_end_and_reports(tmp_path, data_dir):
    """`python -m zobench -m experiment=sparse_mezo_smoke`, shortened, then its table."""
    sweep = tmp_path / "sweep"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "zobench",
            "-m",
            "experiment=sparse_mezo_smoke",
            "task=rte,sst2",
            "train.steps=4",
            "train.eval_every=2",
            f"data.dir={data_dir}",
            f"hydra.sweep.dir={sweep}",
        ],
        check=True,
        timeout=600,
        capture_output=True,
    )
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    # each run's folder is named by its overrides (the grid's and the command line's, not data.dir)
    assert sorted(p.parent.name for p in sweep.glob("*/summary.json")) == sorted(
        f"lr_step=high,optimizer={o},task={t},train.eval_every=2,train.steps=4"
        for t in ("rte", "sst2")
        for o in ("mezo", "sparse_mezo")
    )
    assert sorted((s["task"], s["optimizer"], s["status"]) for s in summaries) == [
        ("rte", "mezo", "completed"),
        ("rte", "sparse_mezo", "completed"),
        ("sst2", "mezo", "completed"),
        ("sst2", "sparse_mezo", "completed"),
    ]
    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "zobench.report",
            str(sweep),
            "--table",
            "sparse_mezo",
            "--smoke",
            "--out",
            str(tmp_path / "report"),
        ],
        check=True,
        timeout=300,
        capture_output=True,
        text=True,
    )
    table = (tmp_path / "report" / "sparse_mezo_smoke.md").read_text()
    assert "Sparse-MeZO" in table and report.stdout == table
