"""``python -m zobench.bench.distributed [out]``: step time and test-evaluation time of one run on
1 rank x 1 thread, 1 rank x 2 threads and 2 ranks x 1 thread (torchrun, Gloo) on SmolLM2-135M, SST-2,
global batch 16, MeZO, and the bytes the ranks' collectives move per step (``comm_bytes_per_step``).
Writes ``<out>/figures.json`` and the table ``<out>/figures_table.md`` (default out:
results/bench/distributed, whose run.sh is the command)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ..report.files import read_json_object, read_jsonl

REPO = Path(__file__).resolve().parents[3]
STEPS = int(os.environ.get("BENCH_STEPS", 8))
ARGS = [
    "model=smollm2-135m",
    "task=sst2",
    "optimizer=mezo",
    "logger=none",
    "train.batch_size=16",
    f"train.steps={STEPS}",
    "train.log_every=1",
    f"train.eval_every={STEPS}",
    "train.eval_batch_size=16",
    "data.num_train=64",
    "data.num_dev=16",
    "data.num_eval=64",
]
SETUPS = {  # name -> (ranks, threads per rank)
    "1 rank x 1 thread": (1, 1),
    "1 rank x 2 threads": (1, 2),
    "2 ranks x 1 thread": (2, 1),
}


def measure(ranks: int, threads: int, run_dir: Path, args: list | None = None) -> dict:
    """One run of ``args`` (default ``ARGS``) on ``ranks`` x ``threads``: its step and test times."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    launch = [sys.executable, "-m", "zobench"]
    if ranks > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
        launch += ["-m", "zobench"]
    args = ARGS if args is None else args
    subprocess.run([*launch, *args, f"hydra.run.dir={run_dir}"], env=env, check=True, capture_output=True)
    events = read_jsonl(run_dir / "metrics.jsonl")
    train = [e["wall_s"] for e in events if e["event"] == "train"]
    evals = {e["split"]: e["wall_s"] for e in events if e["event"] == "eval"}
    summary = read_json_object(run_dir / "summary.json")
    return {
        "step_s": statistics.median(b - a for a, b in zip(train[1:], train[2:])),  # steps 3.. (warm)
        "test_eval_s": evals["test"] - evals["dev"],  # 64 examples, right after the last dev evaluation
        "comm_bytes_per_step": summary.get("comm_bytes_per_step", 0),
        "forward_passes": summary["forward_passes"],
        "test_accuracy": summary["test_accuracy"],
    }


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "results" / "bench" / "distributed"
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (ranks, threads) in SETUPS.items():
            figures[name] = measure(ranks, threads, Path(tmp) / name.replace(" ", "_"))
            print(name, figures[name], flush=True)
    base = figures["1 rank x 1 thread"]["step_s"]
    for name, (ranks, threads) in SETUPS.items():  # speed-up per CPU core used, against 1 x 1
        figures[name]["scaling_efficiency"] = base / figures[name]["step_s"] / (ranks * threads)
    load = os.getloadavg()[0]
    (out / "figures.json").write_text(json.dumps({"load_average_1min_at_end": load, **figures}, indent=1) + "\n")
    rows = [
        f"| {n} | {f['step_s']:.3f} | {f['test_eval_s']:.2f} | {f['scaling_efficiency']:.2f} | "
        f"{f['comm_bytes_per_step']:.0f} | {f['test_accuracy']:.4f} |"
        for n, f in figures.items()
    ]
    header = "| setup | step (s, median) | test eval, 64 ex. (s) | scaling efficiency | bytes / step | test acc |"
    (out / "figures_table.md").write_text("\n".join([header, "|---|---|---|---|---|---|", *rows]) + "\n")


if __name__ == "__main__":
    main()
