"""``python -m zobench.bench.sharded [out]``: ``dist.mode=sharded`` against ``dist.mode=data`` on 2
ranks (torchrun), the root sharded and replicated (``dist.root``): SmolLM2-135M, SST-2, global batch
16, MeZO on the in-place torch engine (the one engine sharded runs on; data parallel on the same
engine, so the two runs take the same steps), ``BENCH_STEPS`` (5) steps. Per setup: median step time
(steps 3..), the bytes per step (``comm_bytes_per_step``; sharded: FSDP's all-gathers
``comm_allgather_bytes_per_step`` plus the loss all-reduce), the largest rank's peak memory during
training (``peak_memory_bytes``: on CPU the peak RSS, VmHWM reset after loading; on CUDA
``torch.cuda.max_memory_allocated``), the test accuracy; what the process held before loading its
model (``pre_load_memory_bytes``) and the train peak above it (the model's share); the largest
rank's peak while loading the model (``load_peak_memory_bytes``, from the start of the load; sharded
loads by shards, ``build/by_shards.py``) and the parameter bytes it allocated
(``loaded_param_bytes_per_rank``). Writes ``<out>/<name>.json`` and ``<out>/<name>_table.md``
(default out: results/bench/distributed, whose sharded.sh is the command; default name:
``sharded``).

``--device cuda`` (results/bench/gpu.sh's 2-GPU line): the same two runs on 2 GPUs, NCCL
(``dist.backend=auto``), one rank per GPU, ``--model`` (e.g. ``opt-1.3b-random``). With fewer than 2
visible CUDA devices it prints one ``skipped`` line and exits with ``SKIP`` (77), which gpu.sh
records as ``skipped``; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..report.files import read_json_object
from .distributed import ARGS as BASE
from .distributed import REPO, STEPS, measure

ENGINE = ["engine.backend=torch", "engine.mode=inplace"]
SETUPS = {
    "data, 2 ranks": ["dist.mode=data"],
    "sharded, 2 ranks": ["dist.mode=sharded"],
    "sharded, root replicated, 2 ranks": ["dist.mode=sharded", "dist.root=replicated"],
}
RANKS = 2
#: the exit status of a run that did not apply here (automake's convention; gpu.sh: ``skipped``)
SKIP = 77


def gpus_visible() -> int:
    """The CUDA devices this process sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_args(model: str, device: str) -> list[str]:
    """The overrides of both setups: ``distributed.ARGS`` with ``model`` on ``device``."""
    args = [a for a in BASE if not a.startswith("model=")]
    return [f"model={model}", *args, *ENGINE, f"device={device}"]


def table(figures: dict) -> str:
    rows = [
        f"| {n} | {f['step_s']:.3f} | {f['comm_bytes_per_step']:.3e} | {f['allgather_bytes_per_step']:.3e} | "
        f"{f['peak_memory_bytes'] / 2**20:.0f} | {f['pre_load_memory_bytes'] / 2**20:.0f} | "
        f"{f['model_peak_bytes'] / 2**20:.0f} | {f['load_peak_memory_bytes'] / 2**20:.0f} | {f['test_accuracy']:.4f} |"
        for n, f in figures.items()
    ]
    header = (
        "| setup | step (s, median) | bytes / step | of which all-gathers | train peak per rank (MiB) | "
        "before the model (MiB) | train peak above it (MiB) | load peak per rank (MiB) | test acc |"
    )
    return "\n".join([header, "|---|---|---|---|---|---|---|---|---|", *rows]) + "\n"


def ratios(figures: dict) -> dict:
    """Each sharded setup's peaks over data's: the whole train peak, and the peak above what the
    process held before its model (``pre_load_memory_bytes``: on CPU the interpreter, torch,
    transformers, the tokenizer and the data, which no placement of the weights shrinks)."""
    data, out = figures["data, 2 ranks"], {}
    for name, f in figures.items():
        if name != "data, 2 ranks":
            key = name.replace(", 2 ranks", "").replace(", ", "_").replace(" ", "_")
            out[f"peak_ratio_{key}_over_data"] = f["peak_memory_bytes"] / data["peak_memory_bytes"]
            out[f"model_peak_ratio_{key}_over_data"] = f["model_peak_bytes"] / data["model_peak_bytes"]
            out[f"load_peak_ratio_{key}_over_data"] = f["load_peak_memory_bytes"] / data["load_peak_memory_bytes"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zobench.bench.sharded", description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=REPO / "results" / "bench" / "distributed")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: one rank per GPU, NCCL")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--name", default="sharded", help="the files' stem: <out>/<name>.json, <name>_table.md")
    args = parser.parse_args(argv)
    if args.device == "cuda" and gpus_visible() < RANKS:
        print(
            f"zobench.bench.sharded: skipped: sharded vs data on {RANKS} GPUs needs {RANKS} visible CUDA devices, "
            f"this machine has {gpus_visible()}",
            file=sys.stderr,
        )
        return SKIP
    args.out.mkdir(parents=True, exist_ok=True)
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in SETUPS.items():
            run_dir = Path(tmp) / name.replace(" ", "_").replace(",", "")
            try:
                figures[name] = measure(RANKS, 1, run_dir, [*run_args(args.model, args.device), *extra])
            except subprocess.CalledProcessError as err:  # the ranks' own output says why (a first GPU run)
                print(str(err.stderr or "")[-6000:], file=sys.stderr)
                print(
                    f"zobench: error: zobench.bench.sharded: the {name} run failed (exit {err.returncode})",
                    file=sys.stderr,
                )
                return 1
            summary = read_json_object(run_dir / "summary.json")
            figures[name]["peak_memory_bytes"] = summary["peak_memory_bytes"]
            figures[name]["load_peak_memory_bytes"] = summary["load_peak_memory_bytes"]
            figures[name]["pre_load_memory_bytes"] = summary["pre_load_memory_bytes"]
            figures[name]["model_peak_bytes"] = summary["peak_memory_bytes"] - summary["pre_load_memory_bytes"]
            figures[name]["loaded_param_bytes_per_rank"] = summary.get("loaded_param_bytes_per_rank")
            figures[name]["allgather_bytes_per_step"] = summary.get("comm_allgather_bytes_per_step", 0)
            print(name, figures[name], flush=True)
    report = {
        "bench": "sharded",
        "command": "python -m zobench.bench.sharded " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.model,
        "device": args.device,
        "steps": STEPS,
        "load_average_1min_at_end": os.getloadavg()[0],
        **ratios(figures),
        **figures,
    }
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / f"{args.name}_table.md").write_text(table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
