"""``python -m zobench.bench.sharded [out]``: ``dist.mode=sharded`` against ``dist.mode=data`` on 2
ranks x 1 thread (torchrun, Gloo, CPU): SmolLM2-135M, SST-2, global batch 16, MeZO on the in-place
torch engine (the one engine sharded runs on; data parallel on the same engine, so the two runs
take the same steps), ``BENCH_STEPS`` (5) steps. Per setup: median step time (steps 3..), the
bytes per step (``comm_bytes_per_step``; sharded: FSDP's all-gathers
``comm_allgather_bytes_per_step`` plus the loss all-reduce), the largest rank's peak memory
during training (``peak_memory_bytes``: CPU peak RSS, VmHWM reset after loading), the test
accuracy; the largest rank's peak while loading the model (``load_peak_memory_bytes``: peak RSS
from the start of the load; sharded loads by shards, ``build/by_shards.py``) and the parameter
bytes it allocated. Writes ``<out>/sharded.json`` and ``<out>/sharded_table.md`` (default out:
results/bench/distributed, whose sharded.sh is the command)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from .distributed import ARGS as BASE
from .distributed import REPO, STEPS, measure

ENGINE = ["engine.backend=torch", "engine.mode=inplace"]
SETUPS = {"data, 2 ranks": ["dist.mode=data"], "sharded, 2 ranks": ["dist.mode=sharded"]}


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "results" / "bench" / "distributed"
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in SETUPS.items():
            run_dir = Path(tmp) / name.replace(" ", "_").replace(",", "")
            figures[name] = measure(2, 1, run_dir, [*BASE, *ENGINE, *extra])
            summary = json.loads((run_dir / "summary.json").read_text())
            figures[name]["peak_memory_bytes"] = summary["peak_memory_bytes"]
            figures[name]["load_peak_memory_bytes"] = summary["load_peak_memory_bytes"]
            figures[name]["loaded_param_bytes_per_rank"] = summary.get("loaded_param_bytes_per_rank")
            figures[name]["allgather_bytes_per_step"] = summary.get("comm_allgather_bytes_per_step", 0)
            print(name, figures[name], flush=True)
    sharded, data = figures["sharded, 2 ranks"], figures["data, 2 ranks"]
    ratios = {
        "peak_ratio_sharded_over_data": sharded["peak_memory_bytes"] / data["peak_memory_bytes"],
        "load_peak_ratio_sharded_over_data": sharded["load_peak_memory_bytes"] / data["load_peak_memory_bytes"],
    }
    report = {"steps": STEPS, "load_average_1min_at_end": os.getloadavg()[0], **ratios, **figures}
    (out / "sharded.json").write_text(json.dumps(report, indent=1) + "\n")
    rows = [
        f"| {n} | {f['step_s']:.3f} | {f['comm_bytes_per_step']:.3e} | {f['allgather_bytes_per_step']:.3e} | "
        f"{f['peak_memory_bytes'] / 2**20:.0f} | {f['load_peak_memory_bytes'] / 2**20:.0f} | {f['test_accuracy']:.4f} |"
        for n, f in figures.items()
    ]
    header = (
        "| setup | step (s, median) | bytes / step | of which all-gathers | train peak per rank (MiB) | "
        "load peak per rank (MiB) | test acc |"
    )
    (out / "sharded_table.md").write_text("\n".join([header, "|---|---|---|---|---|---|---|", *rows]) + "\n")


if __name__ == "__main__":
    main()
