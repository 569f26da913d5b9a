"""results/bench/gpu.sh's CPU parts: arguments, per-run timeouts (a hang is killed, process group
and all), the time budget, the dry run, and the table generator on fixture files."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zobench.bench import report

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "results" / "bench" / "gpu.sh"


def _run(*args, timeout=60, **env_vars):
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT / "src"), **env_vars}
    return subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT
    )


def _runs(folder):
    return [json.loads(line) for line in (folder / "runs.jsonl").read_text().splitlines()]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a reaper that does not reap is dead)."""
    time.sleep(0.3)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_dry_run_lists_the_whole_plan_within_nine_minutes(tmp_path):
    done = _run("--dry-run", "--out", tmp_path)
    assert done.returncode == 0, done.stderr
    runs = _runs(tmp_path)
    assert {r["status"] for r in runs} == {"dry-run"} and not list(tmp_path.glob("*.log"))  # nothing ran
    commands = {r["name"]: r["command"] for r in runs}
    assert "tests/engine/test_triton_cuda.py" in commands["cuda_tests"]
    benches = {name: c for name, c in commands.items() if "zobench.bench " in c}
    for name, command in benches.items():  # each writes <run>.json into the check's folder, on the GPU
        assert f"bench.out={tmp_path}" in command and f"bench.name={name}" in command and "device=cuda" in command
    text = " ".join(benches.values())
    for model in ("opt-1.3b-random", "opt-30b-random"):  # the default path vs the authors' step on both
        assert any(model in c and "baseline=false" not in c and "engine." not in c for c in benches.values())
        assert any(model in c and "engine.fused_linear=true" in c for c in benches.values())
    assert "engine.paired=false" in text
    # issue 29: OPT-13B in GPU memory and offloaded (the ratio), OPT-30B offloaded, fp16, on the GPU
    offload = {name: c for name, c in commands.items() if "zobench.bench.offload" in c}
    assert set(offload) == {"offload_opt-13b_fp16", "offload_opt-30b_fp16_cpu"}
    for name, command in offload.items():
        assert (
            "--device cuda" in command and "--dtype float16" in command and f"--out {tmp_path}/{name}.json" in command
        )
    assert "--model opt-13b-random --modes none cpu" in offload["offload_opt-13b_fp16"]
    assert "--model opt-30b-random --modes cpu" in offload["offload_opt-30b_fp16_cpu"]
    # issue 30: sharded vs data on 2 GPUs, its files in the check's folder
    two = commands["sharded_vs_data_2gpu"]
    assert f"zobench.bench.sharded {tmp_path} --device cuda" in two and "--name sharded_vs_data_2gpu" in two
    # the budget: the plan in order of importance, its first runs sure to start even if every run
    # before them times out (10 s kept for the table); the rest run only with time left
    sure, used = [], 10
    for run in runs:
        used += run["timeout_s"]
        if used > 540:
            break
        sure.append(run["name"])
    assert sure == ["selfcheck", "cuda_tests", "sharded_vs_data_2gpu", "offload_opt-13b_fp16"]
    assert runs[len(sure)]["name"] == "offload_opt-30b_fp16_cpu"  # the first to get the time they leave
    said = {
        line.split()[1]: "starts even if every run before it times out" in line for line in done.stdout.splitlines()
    }
    assert [name for name, yes in said.items() if yes] == sure and len(said) == len(runs)


@pytest.mark.slow
def test_a_hanging_run_is_killed_with_its_children_and_the_next_run_goes_on(tmp_path):
    pid_file = tmp_path / "child.pid"
    plan = tmp_path / "plan.tsv"
    plan.write_text(
        f"hang\t2\tbash -c 'sleep 60 & echo $! > {pid_file}; wait'\nok\t10\techo measured\nbroken\t10\tfalse\n"
    )
    start = time.monotonic()
    done = _run("--plan", plan, "--out", tmp_path / "out", "--no-env")
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - start < 30  # not the 60 s of the hang
    runs = {r["name"]: r for r in _runs(tmp_path / "out")}
    assert runs["hang"]["status"] == "timeout" and runs["hang"]["rc"] in (124, 137)
    assert runs["ok"]["status"] == "ok" and (tmp_path / "out" / "ok.log").read_text() == "measured\n"
    assert runs["broken"]["status"] == "failed" and runs["broken"]["rc"] == 1
    assert not _alive(int(pid_file.read_text()))  # the hang's own child is gone too
    assert "| hang | timeout |" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.slow
def test_a_run_that_does_not_apply_here_exits_77_and_is_recorded_skipped(tmp_path):
    plan = tmp_path / "plan.tsv"
    plan.write_text("two_gpus\t10\tbash -c 'echo skipped: 2 GPUs needed >&2; exit 77'\nnext\t10\ttrue\n")
    done = _run("--plan", plan, "--out", tmp_path / "out", "--no-env")
    assert done.returncode == 0, done.stderr
    runs = {r["name"]: r for r in _runs(tmp_path / "out")}
    assert runs["two_gpus"]["status"] == "skipped" and runs["two_gpus"]["rc"] == 77
    assert (tmp_path / "out" / "two_gpus.log").read_text() == "skipped: 2 GPUs needed\n"  # the why, in its log
    assert runs["next"]["status"] == "ok"
    assert "| two_gpus | skipped |" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.slow
def test_runs_are_skipped_once_the_budget_is_spent(tmp_path):
    plan = tmp_path / "plan.tsv"
    plan.write_text("first\t30\tsleep 2\nsecond\t30\tsleep 1\n")
    # 14 s budget, 10 kept for the table: the first run gets the 4 s left (3 when bash's whole-second
    # SECONDS ticked over between the start and the first run: a suite run once saw it), then at
    # most 2 are left (< 3: skipped)
    done = _run("--plan", plan, "--out", tmp_path / "out", "--no-env", "--budget", "14", GPU_CHECK_MIN_RUN="3")
    assert done.returncode == 0, done.stderr
    runs = {r["name"]: r for r in _runs(tmp_path / "out")}
    assert runs["first"]["status"] == "ok" and runs["first"]["timeout_s"] in (3, 4)  # cut to what is left
    assert runs["second"]["status"] == "skipped"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bogus"], "unknown argument '--bogus'"),
        (["--budget", "soon"], "--budget needs whole seconds"),
        (["--plan", "/nonexistent/plan"], "--plan: no such file"),
    ],
)
def test_bad_arguments_are_one_line_errors(args, message):
    done = _run(*args)
    assert done.returncode == 2 and done.stderr.startswith("zobench: error: gpu.sh: ") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# --- the table generator -------------------------------------------------------------------------


def _result(model, engine, step, baseline_step=None):
    z = {
        "step_s": step,
        "forward_s": step / 2,
        "engine_s": step / 4,
        "other_s": step / 4,
        "engine_fraction": 0.25,
        "peak_memory_bytes": 3 << 30,
        "peak_over_inference": 1.01,
        "engine": engine,
        "optimizer": "mezo",
    }
    out = {
        "model": model,
        "task": "sst2",
        "batch_size": 16,
        "dtype": "float16",
        "zobench": z,
        "command": f"python -m zobench.bench model={model}",
    }
    if baseline_step:
        out["baseline"] = {**z, "step_s": baseline_step, "peak_over_inference": 1.13}
        out["step_time_ratio"] = step / baseline_step
    return out


def _fixture(folder):
    folder.mkdir()
    (folder / "environment.json").write_text(
        json.dumps(
            {
                "device": "NVIDIA H200",
                "memory_gib": 139.8,
                "driver": "580.1",
                "cuda": "13.0",
                "torch": "2.11",
                "triton": "3.6.0",
                "transformers": "5.17",
                "python": "3.12",
                "commit": "abc1234",
                "date": "2026-12-02",
            }
        )
    )
    runs = [
        {"name": "cuda_tests", "status": "ok", "rc": 0, "seconds": 50, "timeout_s": 90},
        {"name": "opt-1.3b_fp16_default", "status": "ok", "rc": 0, "seconds": 40, "timeout_s": 60},
        {"name": "opt-30b_fp16_default", "status": "timeout", "rc": 124, "seconds": 140, "timeout_s": 140},
    ]
    (folder / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    (folder / "opt-1.3b_fp16_default.json").write_text(
        json.dumps(_result("opt-1.3b-random", "auto/virtual+paired", 0.05, 0.1))
    )
    (folder / "opt-1.3b_fp16_fused.json").write_text(
        json.dumps(_result("opt-1.3b-random", "auto/virtual+paired+fused", 0.04))
    )
    (folder / "opt-30b_fp16_default.log").write_text("zobench: watchdog: no progress for 20 s\n")


def test_the_table_is_regenerated_from_the_files(tmp_path):
    _fixture(tmp_path / "gpu")
    assert report.main(["table", str(tmp_path / "gpu")]) == 0
    text = (tmp_path / "gpu" / "README.md").read_text()
    assert "NVIDIA H200 (139.8 GiB), driver 580.1, CUDA 13.0, torch 2.11, Triton 3.6.0" in text
    row = next(line for line in text.splitlines() if line.startswith("| [opt-1.3b_fp16_default]"))
    assert "| 0.050 |" in row and "| 0.100 |" in row and "0.50×" in row and "25.0%" in row
    assert any(
        line.startswith("| [opt-1.3b_fp16_fused]") for line in text.splitlines()
    )  # not in the plan: still listed
    assert "| opt-30b_fp16_default | timeout | 140 | 140 | [log](opt-30b_fp16_default.log) |" in text
    assert "Timed out: opt-30b_fp16_default" in text
    assert report.render(tmp_path / "gpu") == text  # deterministic: the same files, the same table


def test_the_offload_and_2_gpu_tables_are_made_from_their_files(tmp_path):
    _fixture(tmp_path / "gpu")
    mode = {"model": "opt-13b-random", "dtype": "float16", "batch": [16, 256], "load_s": 30.2, "peak_anon_rss_mib": 900}
    results = [
        {**mode, "mode": "none", "step_s": 1.0, "peak_gpu_mib": 30000.0, "resident_gpu_mib": 24800.0},
        {
            **mode,
            "mode": "cpu",
            "step_s": 1.2,
            "peak_gpu_mib": 4100.0,
            "resident_gpu_mib": 700.0,
            "step_over_none": 1.2,
        },
    ]
    offload = {"command": "python -m zobench.bench.offload --device cuda", "results": results}
    (tmp_path / "gpu" / "offload_opt-13b_fp16.json").write_text(json.dumps(offload))
    setup = {"step_s": 0.5, "comm_bytes_per_step": 48.0, "test_accuracy": 0.5, "forward_passes": 10}
    sharded = {
        "bench": "sharded",
        "model": "opt-1.3b-random",
        "data, 2 ranks": {**setup, "peak_memory_bytes": 4 << 30, "allgather_bytes_per_step": 0},
        "sharded, 2 ranks": {**setup, "peak_memory_bytes": 2 << 30, "allgather_bytes_per_step": 5.2e9},
    }
    (tmp_path / "gpu" / "sharded_vs_data_2gpu.json").write_text(json.dumps(sharded))
    assert report.main(["table", str(tmp_path / "gpu")]) == 0
    lines = (tmp_path / "gpu" / "README.md").read_text().splitlines()
    cpu = next(line for line in lines if line.startswith("| offload_opt-13b_fp16 | opt-13b-random | float16 | cpu"))
    assert "| 16×256 | 30.2 | 1.200 | 1.20× | 4100 | 700 | 900 |" in cpu
    none = next(line for line in lines if line.startswith("| offload_opt-13b_fp16 | opt-13b-random | float16 | none"))
    assert "| 1.000 |  | 30000 |" in none
    two = next(line for line in lines if line.startswith("| sharded_vs_data_2gpu | opt-1.3b-random | sharded, 2 ranks"))
    assert "| 0.500 | 4.800e+01 | 5.200e+09 | 2048 | 0.5000 |" in two
    assert any(line.startswith("| sharded_vs_data_2gpu | opt-1.3b-random | data, 2 ranks") for line in lines)
    assert any(line.startswith("| [opt-1.3b_fp16_default]") for line in lines)  # the benchmarks' table as before


def test_table_errors_are_one_line(tmp_path, capsys):
    assert report.main(["table", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("zobench: error: ")
    _fixture(tmp_path / "gpu")
    with (tmp_path / "gpu" / "runs.jsonl").open("a") as f:
        f.write("{not json\n")
    assert report.main(["table", str(tmp_path / "gpu")]) == 2
    assert "runs.jsonl:4: not a JSON line" in capsys.readouterr().err


def test_a_damaged_result_file_is_named_and_the_table_goes_on(tmp_path, capsys):
    """A benchmark JSON cut short (killed while writing) or a list: a warning naming it, the table
    made from the rest; an environment.json that is not an object: one line, exit 2."""
    _fixture(tmp_path / "gpu")
    (tmp_path / "gpu" / "opt-1.3b_fp16_fused.json").write_text('{"model": "opt')
    (tmp_path / "gpu" / "listed.json").write_text("[1, 2]")
    assert report.main(["table", str(tmp_path / "gpu")]) == 0
    err = capsys.readouterr().err
    assert f"{tmp_path / 'gpu' / 'opt-1.3b_fp16_fused.json'}: not valid JSON" in err
    assert f"{tmp_path / 'gpu' / 'listed.json'}: expected a JSON object, found a JSON list" in err
    assert "[opt-1.3b_fp16_default]" in (tmp_path / "gpu" / "README.md").read_text()
    (tmp_path / "gpu" / "environment.json").write_text("[]")
    assert report.main(["table", str(tmp_path / "gpu")]) == 2
    assert "environment.json: expected a JSON object" in capsys.readouterr().err


def test_environment_names_device_versions_and_commit():
    env = report.environment()
    assert {"device", "driver", "torch", "cuda", "triton", "transformers", "python", "commit", "date"} <= env.keys()
    assert env["torch"]
