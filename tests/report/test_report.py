"""python -m zobench.report: run dirs → best-dev cells → md/tex/csv/png, on hand-written run dirs
(exact expectations) and on real tiny-llama runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from zobench.errors import ConfigError, DataNotFoundError
from zobench.report import compute_cells, load_runs, load_table, make_report
from zobench.report.regenerate import load_spec
from zobench.report.spec import available_tables, parse_table

REPO = Path(__file__).resolve().parents[2]


def write_run(
    root: Path,
    name: str,
    *,
    task="sst2",
    model="tiny-llama",
    optimizer="mezo",
    tuning="full",
    lr=1e-5,
    seed=0,
    dev=0.5,
    test=0.5,
    steps=20,
    metric="accuracy",
    status="completed",
    curve=((20, None),),
    peak=2**30,
    summary=True,
) -> Path:
    """A run dir as `python -m zobench` writes it (only the keys the report reads)."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config = {
        "model": {"name": model},
        "task": {"name": task},
        "optimizer": {"name": optimizer, "lr": lr, "eps": 1e-3},
        "tuning": {"name": tuning},
        "seed": seed,
        "train": {"steps": steps, "batch_size": 16},
        "data": {"num_train": 1000, "protocol": "mezo"},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    events = [
        {"event": "eval", "split": "dev", "step": s, metric: (dev if v is None else v), "forward_passes": 2 * s}
        for s, v in curve
    ]
    events.append({"event": "eval", "split": "test", "step": steps, metric: test, "forward_passes": 2 * steps})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    if summary:
        (run_dir / "summary.json").write_text(
            json.dumps(
                {
                    "task": task,
                    "model": model,
                    "optimizer": optimizer,
                    "tuning": tuning,
                    "seed": seed,
                    "steps": steps,
                    f"dev_{metric}": dev,
                    f"test_{metric}": test,
                    "peak_memory_bytes": peak,
                    "inference_peak_memory_bytes": peak // 2,
                    "status": status,
                }
            )
        )
    return run_dir


def cell(cells, row, column, model="tiny-llama"):
    return next(c for c in cells if c.row == row and c.column == column and c.model == model)


@pytest.fixture
def sweep(tmp_path) -> Path:
    """MeZO on sst2: lr 1e-5 wins on dev (0.80, 0.70 → 0.75) but is worse on test than lr 1e-4."""
    root = tmp_path / "sweep"
    write_run(root, "a", lr=1e-5, seed=0, dev=0.80, test=0.60, curve=((10, 0.7), (20, 0.8)))
    write_run(root, "b", lr=1e-5, seed=1, dev=0.70, test=0.70, curve=((10, 0.6), (20, 0.7)))
    write_run(root, "c", lr=1e-4, seed=0, dev=0.72, test=0.90)
    write_run(root, "d", lr=1e-4, seed=1, dev=0.72, test=0.95)
    write_run(root, "zs", steps=0, dev=0.55, test=0.50, curve=((0, None),))
    return root


def test_best_dev_configuration_then_test_mean_and_std_over_seeds(sweep):
    cells = compute_cells(load_runs([sweep]).frame, load_table("smoke"))
    mezo = cell(cells, "MeZO", "sst2")
    assert mezo.selected == {"optimizer.lr": 1e-5, "optimizer.eps": 1e-3}  # dev 0.75 > 0.72, whatever the test says
    assert mezo.configs == 2 and mezo.seeds == 2
    assert mezo.mean == pytest.approx(65.0) and mezo.std == pytest.approx(5.0)  # population std of 60, 70
    assert mezo.dev_mean == pytest.approx(75.0)
    assert cell(cells, "zero-shot", "sst2").mean == pytest.approx(50.0)


def test_dev_tie_goes_to_the_smaller_learning_rate(tmp_path):
    for i, lr in enumerate([1e-3, 1e-5, 1e-4]):
        write_run(tmp_path, f"r{i}", lr=lr, dev=0.7, test=0.1 * (i + 1))
    mezo = cell(compute_cells(load_runs([tmp_path]).frame, load_table("smoke")), "MeZO", "sst2")
    assert mezo.selected["optimizer.lr"] == 1e-5 and mezo.mean == pytest.approx(20.0)


def test_missing_cells_show_published_numbers_and_dashes(tmp_path):
    write_run(tmp_path, "r", model="opt-13b", task="rte", dev=0.7, test=0.7)
    written = make_report([tmp_path], "mezo_table1", tmp_path / "out", "cmd")
    frame = pd.read_csv(written["csv"])
    rte = frame[(frame.method == "MeZO") & (frame.task == "RTE")].iloc[0]
    assert rte.ours == pytest.approx(70.0) and rte.published == 66.1 and rte["diff"] == pytest.approx(3.9)
    sst2 = frame[(frame.method == "MeZO") & (frame.task == "SST-2")].iloc[0]
    assert pd.isna(sst2.ours) and sst2.published == 91.4 and pd.isna(sst2["diff"])
    icl = frame[frame.method == "ICL"]
    assert len(icl) == 11 and icl.ours.isna().all()  # ICL is published only
    md = written["md"].read_text()
    assert "| MeZO | RTE | 70.0 | 1 | 66.1 | +3.9 | — |" in md
    assert "| MeZO | SST-2 | — | — | 91.4 | — | — |" in md
    assert r"70.0 & 1 & 66.1 & +3.9 \\" in written["tex"].read_text()


def test_f1_tasks_and_accuracy_tasks_share_a_table(tmp_path):
    write_run(tmp_path, "squad", model="opt-13b", task="squad", metric="f1", dev=0.8, test=0.85)
    frame = pd.read_csv(make_report([tmp_path], "mezo_table1", tmp_path / "out", "cmd")["csv"])
    assert frame[(frame.method == "MeZO") & (frame.task == "SQuAD")].ours.iloc[0] == pytest.approx(85.0)


def test_incomplete_runs_are_skipped_with_a_warning_and_counted(sweep):
    write_run(sweep, "killed", summary=False)
    write_run(sweep, "preempted", status="interrupted", test=None)
    with pytest.warns(UserWarning, match="2 of 7 run dirs skipped"):
        written = make_report([sweep], "smoke", sweep / "report", "cmd")
    assert (
        "Runs: 5 completed run dirs read, 5 in this table; 2 skipped (1: no summary.json (unfinished or "
        "killed), 1: status interrupted)."
    ) in written["md"].read_text()


def test_damaged_run_files_are_named_and_the_report_goes_on(sweep, tmp_path, recwarn):
    """A summary.json that is a list, a config.yaml that is not YAML, a metrics.jsonl ending in
    garbage: each is named in a warning, its run left out (or its curve cut at the bad line),
    and the table is made from the rest."""
    write_run(sweep, "listed")
    (sweep / "listed" / "summary.json").write_text("[1, 2, 3]")
    write_run(sweep, "garbled")
    (sweep / "garbled" / "config.yaml").write_text("model: {name: [\n")
    with (sweep / "a" / "metrics.jsonl").open("a") as f:
        f.write('{"event": "eval", "spl\x00\x00')
    written = make_report([sweep], "smoke", tmp_path / "out", "cmd")
    text = " ".join(str(w.message) for w in recwarn)
    assert "2 of 7 run dirs skipped" in text
    assert f"{sweep / 'listed' / 'summary.json'}: expected a JSON object, found a JSON list" in text
    assert f"{sweep / 'garbled' / 'config.yaml'}: not valid YAML" in text
    assert f"{sweep / 'a' / 'metrics.jsonl'}:4: not a JSON object" in text
    cells = compute_cells(load_runs([sweep]).frame, load_table("smoke"))
    assert cell(cells, "MeZO", "sst2").mean == pytest.approx(65.0)  # the same best-dev cell as without them
    assert "2 skipped" in written["md"].read_text()


def test_regeneration_is_byte_identical(sweep, tmp_path):
    first = make_report([sweep], "smoke", tmp_path / "one", "cmd")
    second = make_report([sweep], "smoke", tmp_path / "two", "cmd")
    assert set(first) == {"csv", "md", "tex", "curves", "memory"}
    for kind in first:
        assert first[kind].read_bytes() == second[kind].read_bytes(), kind


def test_averages_need_every_task(tmp_path):
    spec = parse_table(
        {
            "name": "avg",
            "title": "t",
            "column_key": "model",
            "columns": ["m1", "m2"],
            "average_over": ["sst2", "rte"],
            "rows": [{"label": "MeZO", "where": "optimizer == 'mezo'"}],
            "published": {"MeZO": {"m1": 50.0}},
        }
    )
    write_run(tmp_path, "a", model="m1", task="sst2", test=0.6)
    write_run(tmp_path, "b", model="m1", task="rte", test=0.8)
    write_run(tmp_path, "c", model="m2", task="sst2", test=0.9)  # m2 lacks rte
    cells = {c.column: c for c in compute_cells(load_runs([tmp_path]).frame, spec)}
    assert cells["m1"].mean == pytest.approx(70.0) and cells["m2"].mean is None


@pytest.mark.parametrize(
    "raw, message",
    [
        (
            {"name": "x", "title": "t", "rows": [{"label": "a", "where": None}], "columns": ["sst2"], "colour": 1},
            "unknown key(s) colour",
        ),
        (
            {
                "name": "x",
                "title": "t",
                "rows": [{"label": "a", "where": None}],
                "columns": ["sst2"],
                "published": {"b": {"sst2": 1.0}},
            },
            "published['b'] names no row",
        ),
        ({"name": "x", "title": "t", "rows": [{"label": "a"}], "columns": ["sst2"]}, "rows[0] must have exactly"),
        (
            {"name": "x", "title": "t", "rows": [{"label": "a", "where": None}], "columns": ["sst2"], "value": "loss"},
            "value='loss'; allowed: test, peak_memory_gib",
        ),
    ],
)
def test_bad_table_definitions_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_table(raw)


def test_every_shipped_table_parses():
    assert {
        "mezo_table1",
        "mezo_table18_k16",
        "mezo_table18_k512",
        "fzoo_averages",
        "sparse_mezo",
        "memory",
        "smoke",
    } <= set(available_tables())
    for name in available_tables():
        assert load_table(name).name == name


def test_bad_input_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match="no run dirs found"):
        load_runs([tmp_path])
    with pytest.raises(DataNotFoundError, match="no such directory"):
        load_runs([tmp_path / "nope"])
    with pytest.raises(
        ConfigError, match="--table table9: no such table; allowed: fzoo_averages, hizoo_roberta_k16, memory"
    ):
        load_table("table9")


@pytest.mark.slow  # a CLI subprocess
def test_cli_writes_files_and_reports_bad_input_on_one_line(sweep, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    ok = subprocess.run(
        [sys.executable, "-m", "zobench.report", str(sweep), "--table", "smoke", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == (tmp_path / "o" / "smoke.md").read_text()
    bad = subprocess.run(
        [sys.executable, "-m", "zobench.report", str(tmp_path / "empty_or_missing"), "--table", "smoke"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"zobench: error: {tmp_path / 'empty_or_missing'}: no such directory "
        "(expected a run dir or a sweep dir of run dirs)"
    ]


@pytest.mark.slow  # CLI subprocess runs of a tiny model, then the report
def test_report_over_real_tiny_runs(tmp_path, data_dir):
    """Two real MeZO runs (a Hydra sweep over lr): the report picks the lr whose summary.json has the
    better dev score and reports that run's test score."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "ZOBENCH_DATA_DIR": str(data_dir)}
    smoke = [
        "model=tiny-llama",
        "task=sst2",
        "data.num_train=32",
        "data.num_dev=16",
        "data.num_eval=32",
        "logger=none",
        "train.steps=6",
        "train.eval_every=3",
        "train.log_every=3",
    ]
    sweep = tmp_path / "sweep"
    done = subprocess.run(
        [sys.executable, "-m", "zobench", "-m", *smoke, "optimizer.lr=1e-2,1e-5", f"hydra.sweep.dir={sweep}/mezo"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summaries = [json.loads(p.read_text()) for p in sorted((sweep / "mezo").glob("*/summary.json"))]
    configs = [yaml.safe_load(p.read_text()) for p in sorted((sweep / "mezo").glob("*/config.yaml"))]
    best = max(range(2), key=lambda i: (summaries[i]["dev_accuracy"], -configs[i]["optimizer"]["lr"]))
    written = make_report([sweep], "smoke", tmp_path / "report", "cmd")
    frame = pd.read_csv(written["csv"])
    mezo = frame[(frame.method == "MeZO") & (frame.task == "SST-2")].iloc[0]
    assert mezo.ours == pytest.approx(100 * summaries[best]["test_accuracy"], abs=1e-4)
    assert mezo.selected == f"optimizer.lr={configs[best]['optimizer']['lr']:g} optimizer.eps=0.001"
    assert mezo.configs == 2
    assert "curves" in written and "memory" in written


def test_committed_results_table_is_reproduced_byte_for_byte(tmp_path):
    """results/mezo_smollm2_sst2/report/ is what the report makes of the committed run dirs (the
    PNGs are not drawn: their bytes depend on the matplotlib version; test_results draws them)."""
    results = REPO / "results" / "mezo_smollm2_sst2"
    command = (
        "python -m zobench.report results/mezo_smollm2_sst2/runs --table smoke --out results/mezo_smollm2_sst2/report"
    )
    # the entry of report.yaml that `python -m zobench.report regenerate` (run.sh's last line) runs
    assert {
        "kind": "table",
        "table": "smoke",
        "runs": ["results/mezo_smollm2_sst2/runs"],
        "out": "results/mezo_smollm2_sst2/report",
    } in (load_spec(results / "report.yaml"))
    written = make_report([results / "runs"], "smoke", tmp_path, command, plots=False)
    assert set(written) == {"md", "csv", "tex"} and not list(tmp_path.glob("*.png"))  # plots=False draws nothing
    for kind in ("md", "csv", "tex"):
        assert written[kind].read_bytes() == (results / "report" / written[kind].name).read_bytes(), kind


SMOKE_TABLES = {  # table -> experiments whose runs feed it (results/tables_smoke/report.yaml)
    "mezo_table1": ["mezo_table1", "mezo_table1_baselines", "mezo_table1_lp", "mezo_table1_ft"],
    "mezo_table18_k16": ["mezo_table18", "mezo_table18_lp"],
    "mezo_table18_k512": ["mezo_table18_k512"],
    "fzoo_averages": ["fzoo_averages"],
    "sparse_mezo": ["sparse_mezo"],
    "memory": ["memory"],
    "hizoo_roberta_k16": ["mezo_table18", "hizoo_roberta_k16"],
    "tezo_opt13b": ["mezo_table1", "tezo_opt13b"],
}


@pytest.mark.parametrize("table", sorted(SMOKE_TABLES))
def test_committed_smoke_tables_are_reproduced_byte_for_byte(tmp_path, monkeypatch, table):
    """results/tables_smoke/<table>/ is what the report makes of the committed smoke run dirs."""
    monkeypatch.chdir(REPO)  # the run dirs are named relative to the repository root, as run.sh does
    here = "results/tables_smoke"
    dirs = [f"{here}/runs/{experiment}" for experiment in SMOKE_TABLES[table]]
    command = f"python -m zobench.report {' '.join(dirs)} --table {table} --smoke --out {here}/{table}"
    entry = {"kind": "table", "table": table, "smoke": True, "runs": dirs, "out": f"{here}/{table}"}
    assert entry in load_spec(REPO / here / "report.yaml")  # what run.sh's `regenerate $here` makes
    written = make_report([Path(d) for d in dirs], table, tmp_path, command, smoke=True, plots=False)
    for kind in ("md", "csv", "tex"):
        assert written[kind].read_bytes() == (REPO / here / table / written[kind].name).read_bytes(), kind


def test_config_yaml_is_read_as_omegaconf_reads_it(tmp_path):
    """load_config (libyaml with OmegaConf's rules) gives the dict OmegaConf.load does: 1e-5 a float,
    a date a string, and so on; on a committed run's config too."""
    from omegaconf import OmegaConf

    from zobench.report.runs import load_config

    path = tmp_path / "config.yaml"
    path.write_text(
        "optimizer:\n  lr: 1e-5\n  eps: 1.0e-03\nday: 2026-01-01\nsteps: 20\nname: mezo\nflag: true\nx: null\n"
    )
    committed = next((REPO / "results" / "mezo_smollm2_sst2" / "runs").glob("*/config.yaml"))
    for config in (path, committed):
        assert load_config(config) == OmegaConf.to_container(OmegaConf.load(config))
    assert load_config(path)["optimizer"]["lr"] == 1e-5 and load_config(path)["day"] == "2026-01-01"
