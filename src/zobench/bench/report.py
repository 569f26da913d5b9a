"""The GPU check's record and table: ``results/bench/gpu.sh`` writes one folder, this renders it.

The folder holds ``environment.json`` (device, driver, torch / CUDA / Triton versions, commit:
``python -m zobench.bench.report env DIR``), ``runs.jsonl`` (one line per planned run: its
command, exit status, seconds, timeout, and whether it finished, failed, timed out or was
skipped for lack of time or because it does not apply there) and one ``<run>.json`` / ``.md``
pair per finished benchmark (``python -m zobench.bench``), one ``<run>.json`` per offload
benchmark (``python -m zobench.bench.offload --device cuda``: ``{"command", "results": [one per
mode]}``) and per 2-GPU benchmark (``python -m zobench.bench.sharded --device cuda``: ``"bench":
"sharded"``). ``python -m zobench.bench.report table DIR`` writes ``DIR/README.md`` from them:
the tables are regenerated from the files, never typed in.

Standard library only at import (the GPU check calls it between runs, and the tests call it
without torch); ``environment`` imports torch when it runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

MB = 2**20


def _command_output(*command: str) -> str | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    """Device, driver and versions of this machine, and the commit measured."""
    import importlib.metadata

    import torch

    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    cuda = torch.cuda.is_available()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "device_count": torch.cuda.device_count() if cuda else 0,
        "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
        "driver": _command_output("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": version("triton"),
        "transformers": version("transformers"),
        "commit": _command_output("git", "rev-parse", "--short", "HEAD"),
    }


def load(folder: Path) -> tuple[dict, list[dict], dict[str, dict]]:
    """(environment, runs in plan order, benchmark results by run name) of a check's folder."""
    env_file, runs_file = folder / "environment.json", folder / "runs.jsonl"
    env = _json_object(env_file) if env_file.exists() else {}
    runs = []
    if runs_file.exists():
        for number, line in enumerate(runs_file.read_text().splitlines(), 1):
            if line.strip():
                try:
                    runs.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{runs_file}:{number}: not a JSON line ({err.msg})") from None
    results = {}
    for path in sorted(folder.glob("*.json")):
        if path.name != "environment.json":
            try:
                data = _json_object(path)
            except ValueError as err:  # a benchmark cut short (killed while writing): named, the rest go on
                print(f"zobench: warning: {err}; left out of the table", file=sys.stderr)
                continue
            if "zobench" in data:
                results[path.stem] = data
    return env, runs, results


def load_other(folder: Path) -> tuple[dict[str, dict], dict[str, dict]]:
    """(offload results, 2-GPU sharded results) by run name: the folder's JSON files of
    ``zobench.bench.offload`` (a ``results`` list of modes) and ``zobench.bench.sharded``."""
    offload, sharded = {}, {}
    for path in sorted(folder.glob("*.json")):
        if path.name == "environment.json":
            continue
        try:
            data = _json_object(path)
        except ValueError:  # named by ``load`` already
            continue
        if isinstance(data.get("results"), list) and all(isinstance(r, dict) and "mode" in r for r in data["results"]):
            offload[path.stem] = data
        elif data.get("bench") == "sharded":
            sharded[path.stem] = data
    return offload, sharded


def _mib(value) -> str:
    return "" if value is None else f"{value:.0f}"


def offload_rows(name: str, data: dict) -> list[str]:
    """One row per mode of an offload benchmark."""
    rows = []
    for r in data["results"]:
        ratio = r.get("step_over_none")
        cells = [
            f"| {name}",
            r["model"],
            r["dtype"],
            r["mode"],
            "×".join(str(n) for n in r.get("batch", [])),
            f"{r['load_s']:.1f}",
            _seconds(r["step_s"]),
            f"{ratio:.2f}×" if ratio is not None else "",
            _mib(r.get("peak_gpu_mib")),
            _mib(r.get("resident_gpu_mib")),
            _mib(r.get("peak_anon_rss_mib")),
        ]
        rows.append(" | ".join(cells) + " |")
    return rows


def sharded_rows(name: str, data: dict) -> list[str]:
    """One row per setup (data, sharded) of a 2-GPU benchmark."""
    rows = []
    for setup, f in data.items():
        if isinstance(f, dict) and "step_s" in f:
            cells = [
                f"| {name}",
                data.get("model", ""),
                setup,
                _seconds(f["step_s"]),
                f"{f['comm_bytes_per_step']:.3e}",
                f"{f.get('allgather_bytes_per_step', 0):.3e}",
                _mib(f["peak_memory_bytes"] / MB),
                f"{f['test_accuracy']:.4f}",
            ]
            rows.append(" | ".join(cells) + " |")
    return rows


def other_tables(folder: Path) -> list[str]:
    """The README's lines for the folder's offload and 2-GPU results (none without them)."""
    offload, sharded = load_other(folder)
    lines: list[str] = []
    if offload:
        lines += [
            "",
            "Offload (`python -m zobench.bench.offload --device cuda`; goal for `cpu`: step ≤ 1.3× `none`'s):",
            "",
            "| run | model | dtype | offload | batch | load (s) | step (s) | step vs none | peak GPU, steps (MiB) | "
            "resident GPU (MiB) | peak anon RSS (MiB) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, data in offload.items():
            lines += offload_rows(name, data)
    if sharded:
        lines += [
            "",
            "2 GPUs, `dist.mode=sharded` vs `data` (`python -m zobench.bench.sharded --device cuda`; goal: "
            "sharded's per-rank peak ≤ 0.6× data's):",
            "",
            "| run | model | setup | step (s, median) | bytes / step | of which all-gathers | peak per rank (MiB) | "
            "test acc |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, data in sharded.items():
            lines += sharded_rows(name, data)
    return lines


def _json_object(path: Path) -> dict:
    """``path``'s JSON object, or ValueError naming the file (not JSON, or not an object)."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found a JSON {type(data).__name__}")
    return data


def _seconds(value) -> str:
    return "" if value is None else f"{value:.3f}"


def benchmark_row(name: str, r: dict) -> str:
    z, b = r["zobench"], r.get("baseline")
    return (
        " | ".join(
            [
                f"| [{name}]({name}.md)",
                r["model"],
                r["dtype"],
                z.get("engine", ""),
                _seconds(z["step_s"]),
                _seconds(z["forward_s"]),
                _seconds(z["engine_s"]),
                f"{z['engine_fraction']:.1%}",
                f"{z['peak_over_inference']:.3f}",
                _seconds(b["step_s"]) if b else "",
                f"{r['step_time_ratio']:.2f}×" if "step_time_ratio" in r else "",
                f"{b['peak_over_inference']:.3f}" if b else "",
            ]
        )
        + " |"
    )


def render(folder: Path) -> str:
    """The folder's README: environment, one row per benchmark, the status of every run."""
    env, runs, results = load(folder)
    lines = ["# GPU check: the default engine vs the authors' MeZO step", ""]
    if env:
        lines += [
            f"{env.get('device')} ({env.get('memory_gib')} GiB), driver {env.get('driver')}, "
            f"CUDA {env.get('cuda')}, torch {env.get('torch')}, Triton {env.get('triton')}, "
            f"transformers {env.get('transformers')}, Python {env.get('python')}; commit "
            f"{env.get('commit')}, {env.get('date')}.",
            "",
        ]
    lines += [
        "Regenerated from this folder's files by `python -m zobench.bench.report table <folder>`; "
        "the commands are in `runs.jsonl` and each run's `.md`.",
        "",
        "| run | model | dtype | zobench engine | step (s) | forward (s) | engine (s) | engine share | "
        "peak / inference | authors' step (s) | step vs authors | authors' peak / inference |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = [run["name"] for run in runs if run.get("name") in results]
    order += [name for name in results if name not in order]
    lines += [benchmark_row(name, results[name]) for name in order]
    lines += other_tables(folder)
    if runs:
        lines += ["", "| run | status | seconds | timeout (s) | log |", "|---|---|---|---|---|"]
        for run in runs:
            log = f"[log]({run['name']}.log)" if (folder / f"{run['name']}.log").exists() else ""
            lines.append(
                f"| {run['name']} | {run['status']} | {run.get('seconds', '')} | {run.get('timeout_s', '')} | {log} |"
            )
        stalled = [run["name"] for run in runs if run["status"] == "timeout"]
        if stalled:
            lines += [
                "",
                f"Timed out: {', '.join(stalled)}. With `ZOBENCH_WATCHDOG` set (gpu.sh sets it), "
                "each log ends with the phase and module that stopped progressing and every "
                "thread's stack.",
            ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zobench.bench.report", description=__doc__.split("\n")[0])
    parser.add_argument(
        "action",
        choices=("env", "table"),
        help="env: write environment.json; table: write README.md from the folder's files",
    )
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    if args.action == "env":
        args.folder.mkdir(parents=True, exist_ok=True)
        (args.folder / "environment.json").write_text(json.dumps(environment(), indent=2) + "\n")
        return 0
    if not args.folder.is_dir():
        print(
            f"zobench: error: {args.folder}: no such folder (the output folder of results/bench/gpu.sh)",
            file=sys.stderr,
        )
        return 2
    try:
        text = render(args.folder)
    except (ValueError, KeyError) as err:
        print(f"zobench: error: {args.folder}: {err}", file=sys.stderr)
        return 2
    (args.folder / "README.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
