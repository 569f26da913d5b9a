"""What `python -m zobench` says to a newcomer: --help, unknown keys, a hub that cannot be reached,
the closing line of a run and the summary of a sweep, and where sweeps put their runs."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zobench.__main__ import _addable, closing_line
from zobench.sweeps import MAX_NAME, dirname, report_command, sweep_name

REPO = Path(__file__).resolve().parents[1]
TINY = (
    "model=tiny-llama",
    "data.num_train=8",
    "data.num_dev=8",
    "data.num_eval=8",
    "train.batch_size=4",
    "train.eval_batch_size=8",
    "train.steps=2",
)


def _zobench(*args, cwd, env=None, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "zobench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={k: v for k, v in env.items() if v is not None},
    )


def _one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("zobench: error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return lines[0]


# -- folder names and the closing line (no subprocess) -----------------------------------------
def test_run_folders_are_named_by_overrides_and_never_nest():
    assert dirname("optimizer.lr=1e-5,seed=0", 3) == "optimizer.lr=1e-5,seed=0"
    assert dirname("model.hub_id=facebook/opt-13b", 0) == "model.hub_id=facebook_opt-13b"  # a value never nests
    assert dirname("", 7) == "7"  # `python -m zobench -m` with no override at all
    long = dirname(",".join(f"train.k{i}={i}" for i in range(60)), 0)
    assert len(long.encode()) <= MAX_NAME and long != dirname(",".join(f"train.k{i}={i}" for i in range(61)), 0)
    assert sweep_name("mezo_table1", "2026-01-01_00-00-00") == "mezo_table1"
    assert sweep_name(None, "2026-01-01_00-00-00") == "2026-01-01_00-00-00"


def test_sweep_summary_names_the_experiments_report_command():
    assert (
        report_command("sparse_mezo_smoke", "multirun/sparse_mezo_smoke")
        == "python -m zobench.report multirun/sparse_mezo_smoke --table sparse_mezo --smoke"
    )
    assert (
        report_command("sparse_mezo_smoke", "/tmp/s") == "python -m zobench.report /tmp/s --table sparse_mezo --smoke"
    )
    assert report_command(None, "multirun/x").startswith("python -m zobench.report multirun/x --table")


def test_closing_line_says_where_how_what_and_at_what_cost():
    summary = {
        "status": "completed",
        "metric": "accuracy",
        "dev_accuracy": 0.75,
        "best_step": 100,
        "test_accuracy": 0.7,
        "forward_passes": 400,
        "peak_memory_bytes": 3 * 2**30,
        "wall_s": 125.5,
    }
    assert closing_line(summary, Path("outputs/r")) == (
        "zobench: outputs/r: completed; best dev accuracy 0.7500 (step 100), test accuracy 0.7000; "
        "400 forward passes; peak memory 3.00 GiB; wall 2m05.5s"
    )
    failed = closing_line({"status": "failed", "error": "x"}, Path("r"))
    assert failed.startswith("zobench: r: failed; no dev/test metric")
    engine = {"backend": "triton", "mode": "virtual", "paired": True, "fused_linear": True, "triton": "3.1.0",
              "device": "NVIDIA H100 80GB HBM3", "check": {"passed": True, "cases": 31, "seconds": 0.4}}  # fmt: skip
    assert closing_line({**summary, "engine_used": engine}, Path("outputs/r")).endswith(
        "wall 2m05.5s; engine triton/virtual+paired+fused (checked) [Triton 3.1.0, NVIDIA H100 80GB HBM3]"
    )
    fallback = {**engine, "backend": "torch", "fused_linear": False, "triton": None, "fallback": "torch",
                "check": {"passed": False}}  # fmt: skip
    assert closing_line({**summary, "engine_used": fallback}, Path("r")).endswith(
        "engine torch/virtual+paired (fell back from triton: the start-up check failed) [NVIDIA H100 80GB HBM3]"
    )


def test_plus_adds_only_keys_the_code_reads():
    tree = {"optimizer": {"_target_": "zobench.optim.MeZO"}}
    assert _addable("optimizer.num_directions", tree) and _addable("model.device_map", tree)
    assert not _addable("optimizer.bogus", tree) and not _addable("foo", tree) and not _addable("train.stepz", tree)


# -- the command line ------------------------------------------------------------------------------
@pytest.mark.slow
def test_help_starts_with_zobench_and_names_its_other_commands(tmp_path):
    out = _zobench("--help", cwd=tmp_path, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("== zobench ==")
    assert "python -m zobench.report" in out.stdout and "python -m zobench.tasks" in out.stdout
    assert "\noptimizer: " in out.stdout and "Powered by Hydra" not in out.stdout.splitlines()[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["train.stepz=3"], "train.stepz=3: train.stepz is not a zobench config key; did you mean train.steps"),
        (
            ["+train.stepz=3"],
            "+train.stepz=3: train.stepz is not a zobench config key (a key added with + would be "
            "ignored); did you mean train.steps",
        ),
        (["+foo=1"], "+foo=1: foo is not a zobench config key (a key added with + would be ignored)"),
        (["+optimizer.bogus=1"], "+optimizer.bogus=1: optimizer.bogus is not a zobench config key"),
        (
            ["-m", "optimizer.lrr=1e-5,3e-5"],
            "optimizer.lrr=1e-5,3e-5: optimizer.lrr is not a zobench config key; did you mean optimizer.lr",
        ),
        (["-m", "task=rte,sst3"], "task=sst3: no such option"),
        (["experiment=mezo_table1", "grid.full.lr.hihg=1"], "did you mean grid.full.lr.high"),
    ],
)
def test_unknown_keys_are_one_line_with_the_closest_valid_ones(tmp_path, args, message):
    assert message in _one_error_line(_zobench(*args, "logger=none", cwd=tmp_path, timeout=120))
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


def _no_hub(tmp_path) -> dict:
    """An environment whose hub does not answer (connection refused) and whose HF cache is empty,
    whatever the machine running the test can reach."""
    return {
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": None,
        "TRANSFORMERS_OFFLINE": None,
        "HF_DATASETS_OFFLINE": None,
    }


@pytest.mark.slow
@pytest.mark.parametrize("offline_var", [False, True], ids=["unreachable", "HF_HUB_OFFLINE"])
def test_a_hub_model_that_cannot_be_fetched_is_one_line_in_seconds(tmp_path, data_dir, offline_var):
    env = {**_no_hub(tmp_path), "ZOBENCH_DATA_DIR": str(data_dir), **({"HF_HUB_OFFLINE": "1"} if offline_var else {})}
    started = time.monotonic()
    result = _zobench("optimizer=hizoo", "model=opt-13b", "task=rte", cwd=tmp_path, env=env, timeout=120)
    line = _one_error_line(result)
    assert time.monotonic() - started < 30
    assert "model=opt-13b: facebook/opt-13b" in line and "smollm2-135m" in line and "HF_HUB_OFFLINE" in line
    assert not list(tmp_path.rglob("wandb")) and not list(tmp_path.rglob("metrics.jsonl"))  # nothing half-made


@pytest.mark.slow
def test_forgetting_the_data_dir_without_a_hub_is_one_line_in_seconds(tmp_path):
    env = {**_no_hub(tmp_path), "ZOBENCH_DATA_DIR": None}
    started = time.monotonic()
    result = _zobench("model=tiny-llama", cwd=tmp_path, env=env, timeout=120)
    line = _one_error_line(result)
    assert time.monotonic() - started < 30
    assert "data.dir=null: task sst2 loads the dataset glue/sst2" in line and "ZOBENCH_DATA_DIR" in line
    assert not list(tmp_path.rglob("wandb")) and not list(tmp_path.rglob("metrics.jsonl"))


@pytest.mark.slow
def test_a_plain_sweep_lands_in_override_folders_and_ends_with_its_table(tmp_path, data_dir):
    result = _zobench(
        "-m", *TINY, "logger=none", "optimizer.lr=1e-5,3e-5", cwd=tmp_path, env={"ZOBENCH_DATA_DIR": str(data_dir)}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "multirun").iterdir()  # multirun/<time>/
    common = "data.num_dev=8,data.num_eval=8,data.num_train=8,model=tiny-llama,"
    names = sorted(p.parent.name for p in sweep.glob("*/summary.json"))
    # Hydra's sweep writes the floats as 1e-05
    assert names == [f"{common}optimizer.lr={lr},train.batch_size=4,train.steps=2" for lr in ("1e-05", "3e-05")]
    closing = [line for line in result.stdout.splitlines() if line.startswith(f"zobench: {sweep}/")]
    assert len(closing) == 2 and all(
        ": completed; best dev accuracy" in line and "test accuracy" in line and "4 forward passes" in line
        for line in closing
    ), result.stdout
    table = result.stdout[result.stdout.index(f"zobench: sweep {sweep.relative_to(tmp_path)}: 2 run dirs") :]
    assert table.count("completed  accuracy") == 2 and "tables: python -m zobench.report" in table, result.stdout


def test_the_sweep_table_names_a_damaged_summary_and_lists_the_rest(tmp_path):
    """The table a sweep ends with reads every run's summary.json: one that is a list or cut short
    is shown as unreadable, not a traceback at the end of the sweep."""
    from zobench.sweeps import summary_table

    for name, text in (("a", "[1, 2]"), ("b", '{"status": "compl'), ("c", '{"status": "completed"}')):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text("seed: 0\n")
        (tmp_path / name / "summary.json").write_text(text)
    rows = [line.split()[0] for line in summary_table(tmp_path)[1:]]
    assert rows == ["unreadable", "unreadable", "completed"]


def test_a_rank_ends_past_the_teardown_and_one_process_returns(tmp_path, monkeypatch):
    """``end_rank``: with a process group, leave it (after a barrier when the runs finished),
    flush and ``os._exit`` with the code (Gloo aborted ranks in the interpreter's teardown); with
    none, return (Python's own exit)."""
    import os

    import torch.distributed as tdist

    from zobench.__main__ import end_rank

    class Exited(Exception):
        pass

    def fake_exit(code):
        raise Exited(code)

    monkeypatch.setattr(os, "_exit", fake_exit)
    end_rank(0, finished=True)  # one process: no group, returns
    for code, finished, expected in [(0, True, 0), (2, False, 2), (None, False, 0), (143, False, 143)]:
        store = tdist.FileStore(str(tmp_path / f"store{code}"), 1)
        tdist.init_process_group("gloo", store=store, rank=0, world_size=1)
        with pytest.raises(Exited) as exited:
            end_rank(code, finished=finished)
        assert exited.value.args == (expected,) and not tdist.is_initialized()
