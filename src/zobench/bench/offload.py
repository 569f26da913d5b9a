"""Offloaded MeZO steps: step time and peak memory for ``offload`` none / cpu / disk, one mode
per process (so each peak is its own), on one fixed batch of random token ids.

    python -m zobench.bench.offload --model smollm2-135m --modes none cpu disk --out results/bench/offload/smollm2.json
    python -m zobench.bench.offload --device cuda --model opt-13b-random --modes none cpu --batch 16 --length 256

Per mode: the mean wall time of ``--steps`` MeZO steps after one warm-up step (the mirrored ±
pair in one forward of the doubled batch, ``engine=torch`` virtual), the peak RSS (``VmHWM``: it
includes page-cache pages of mapped files) and the largest anonymous RSS sampled at every loss
evaluation (``RssAnon``: the memory the offload bound is about), the bytes one step reads and
writes (one read + one write of every block), the compute bound (the step minus its waits on
storage) and, for ``disk``, the storage bound (those bytes at the disk bandwidth measured in the
store's folder after the steps) and the step's ratio to the larger bound.

``--device cuda``: the model computes on the GPU; with ``offload=cpu`` its blocks live in pinned
host memory and are copied to the GPU on a side CUDA stream while the block before computes
(``offload/executor.py``), the resident layers (embeddings, head, norms) on the GPU. Per mode
also the peak GPU memory (``torch.cuda.max_memory_allocated``) of the load and of the steps, and
the GPU memory resident between steps; every step ends with ``torch.cuda.synchronize``. With
``none`` among the modes, each other mode's ``step_over_none``: its step over the in-GPU step of
the same model (the goal for ``cpu``: at most 1.3, results/bench/offload/README.md). A machine without CUDA refuses
``--device cuda`` in one line (exit 2).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ..build import build_model
from ..engine import Engine, VirtualEngine
from ..models.loading import default_cache_dir, model_config
from ..offload import OffloadEngine
from ..optim import MeZO


def _status(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def measure(
    model_name: str,
    mode: str,
    steps: int,
    batch: int,
    length: int,
    dtype: str | None,
    folder: Path,
    device: str = "cpu",
) -> dict:
    """One mode in this process, computing on ``device`` (see the module docstring)."""
    model_cfg = model_config(model_name)
    if dtype:
        model_cfg["dtype"] = dtype
    cfg = OmegaConf.create(
        {"model": model_cfg, "cache_dir": default_cache_dir(), "offload": {"mode": mode, "dir": str(folder)}}
    )
    started = time.perf_counter()
    model, _ = build_model(cfg, device, tune=False, run_dir=folder)  # the run's loading path, store in folder
    load_s = time.perf_counter() - started
    out: dict = {"model": model_name, "mode": mode, "dtype": str(model_cfg["dtype"]), "batch": [batch, length]}
    out.update(device=device, load_s=round(load_s, 2))
    _progress(f"offload={mode}: {model_name} built in {load_s:.1f} s")
    if device == "cuda":
        out["load_peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["resident_gpu_mib"] = round(torch.cuda.memory_allocated() / 2**20, 1)
        torch.cuda.reset_peak_memory_stats()  # the steps' own peak from here
    return {**out, **_steps(model, steps, batch, length, device)}


def _progress(message: str) -> None:
    """One line on stderr as the measurement goes (stdout carries the result's JSON only)."""
    print(f"zobench.bench.offload: {message}", file=sys.stderr, flush=True)


def check_device(device: str) -> None:
    """``--device``: ``cpu``, or ``cuda`` where torch sees a CUDA device; else one line, exit 2."""
    if device == "cuda" and not torch.cuda.is_available():
        print(
            "zobench: error: --device cuda: this machine has no CUDA device (torch.cuda.is_available() is "
            "False); use --device cpu",
            file=sys.stderr,
        )
        raise SystemExit(2)


def _sync(device: str) -> None:
    """Wait for the GPU's queued work (the side stream's copies included) before reading a clock."""
    if device == "cuda":
        torch.cuda.synchronize()


def _steps(model, steps: int, batch: int, length: int, device: str = "cpu") -> dict:
    """MeZO steps of ``model`` (offloaded or not) on one fixed batch on ``device``: times and memory."""
    engine: Engine = VirtualEngine(model)
    offloader = getattr(model, "zobench_offloader", None)
    if offloader is not None:
        engine = OffloadEngine(engine, offloader)
    opt = MeZO(model.parameters(), lr=1e-6, eps=1e-3, engine=engine)
    if isinstance(engine, OffloadEngine):
        engine.bind(opt)
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(0)).to(device)
    anon = [0]

    def closure(replicas: int = 1):
        x = ids.repeat(replicas, 1)
        logits = model(input_ids=x).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
        anon[0] = max(anon[0], _status("RssAnon"))
        losses = nll.reshape(replicas, -1).mean(-1)
        return losses if replicas > 1 else losses[0]

    times, stalls = _timed_steps(opt, closure, steps, offloader, device)
    out: dict = {
        "steps": steps,
        "step_s": round(sum(times) / len(times), 3),
        "step_s_each": [round(t, 3) for t in times],
        "peak_rss_mib": round(_status("VmHWM") / 2**20, 1),
        "peak_anon_rss_mib": round(anon[0] / 2**20, 1),
    }
    if device == "cuda":
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if offloader is not None:
        store = offloader.store
        block_bytes = sum(store.nbytes(i) for i in range(len(store)))
        out["blocks"] = len(store)
        out["block_bytes"] = block_bytes
        out["io_per_step_bytes"] = 2 * block_bytes  # one read and one write of every block
        out.update(_bounds(out["step_s"], sum(stalls) / len(stalls), block_bytes, store))
        offloader.close()
    return out


def _timed_steps(opt, closure, steps: int, offloader, device: str) -> tuple[list[float], list[float]]:
    """(wall seconds, seconds waiting on storage) of each of ``steps`` steps after one warm-up;
    each step's time includes its writes landing (``Offloader.wait``) and the GPU's queue."""
    opt.step(closure)  # warm-up
    _sync(device)
    _progress("warm-up step done")
    times, stalls = [], []
    for _ in range(steps):
        started, stalled = time.perf_counter(), offloader.stalled_s if offloader is not None else 0.0
        opt.step(closure)
        if offloader is not None:
            offloader.wait()
            stalls.append(offloader.stalled_s - stalled)
        _sync(device)
        times.append(time.perf_counter() - started)
        _progress(f"step {len(times)}: {times[-1]:.3f} s")
    return times, stalls


#: bytes written and read back to measure the store's disk (larger than its write cache)
BANDWIDTH_BYTES = 2 << 30


def disk_bandwidth(folder: Path, nbytes: int | None = None) -> tuple[float, float]:
    """(write, read) bytes/s of ``folder``'s disk: ``nbytes`` written and fsynced, dropped from
    the page cache (``POSIX_FADV_DONTNEED``), read back; the file is removed."""
    nbytes = nbytes or BANDWIDTH_BYTES
    path, chunk = Path(folder) / ".bandwidth", os.urandom(min(64 << 20, nbytes))
    started = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(nbytes // len(chunk)):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    write = nbytes / (time.perf_counter() - started)
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        started = time.perf_counter()
        while f.read(len(chunk)):
            pass
    read = nbytes / (time.perf_counter() - started)
    path.unlink()
    return write, read


def _bounds(step_s: float, stall_s: float, block_bytes: int, store) -> dict:
    """The two bounds of the offload goal (results/bench/offload: step ≤ 1.25 × max(storage,
    compute)): storage = one read and one write of every block at the disk's measured bandwidth
    (disk stores); compute = the step's time on the computing thread minus its waits on storage
    (``Offloader.stalled_s``)."""
    out: dict = {"stall_s": round(stall_s, 3), "compute_s": round(step_s - stall_s, 3)}
    root = getattr(store, "root", None)
    if root is not None:
        write, read = disk_bandwidth(Path(root))
        storage = block_bytes / read + block_bytes / write
        out.update(disk_write_mb_s=round(write / 1e6), disk_read_mb_s=round(read / 1e6), storage_s=round(storage, 6))
        out["step_over_bound"] = round(step_s / max(storage, out["compute_s"]), 3)
    return out


def add_ratios(results: list[dict]) -> None:
    """``step_over_none`` in each offloaded mode's result: its step time over ``none``'s (the
    in-memory step of the same model on the same device), when ``none`` was measured."""
    base = next((r["step_s"] for r in results if r["mode"] == "none"), None)
    for result in results:
        if base and result["mode"] != "none":
            result["step_over_none"] = round(result["step_s"] / base, 3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--modes", nargs="+", default=["none", "cpu", "disk"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--dtype", default=None, help="override model.dtype")
    parser.add_argument("--dir", default=None, help="where offload=disk puts its blocks (default: a temp folder)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the model computes")
    parser.add_argument("--out", default=None, help="write the JSON results here")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one mode, print JSON
    args = parser.parse_args(argv)
    check_device(args.device)
    if args.one:
        folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="zobench-offload-"))
        result = measure(args.model, args.one, args.steps, args.batch, args.length, args.dtype, folder, args.device)
        print(json.dumps(result))
        return
    results = []
    for mode in args.modes:  # one process per mode: its peak is its own
        argv_one = [sys.executable, "-m", "zobench.bench.offload", "--one", mode, "--model", args.model]
        argv_one += ["--steps", str(args.steps), "--batch", str(args.batch), "--length", str(args.length)]
        argv_one += ["--device", args.device]
        argv_one += (["--dtype", args.dtype] if args.dtype else []) + (["--dir", args.dir] if args.dir else [])
        # its stderr (progress, and a failure's own account) goes straight to ours: a log cut by a
        # timeout (results/bench/gpu.sh) still says how far the run got
        done = subprocess.run(argv_one, stdout=subprocess.PIPE, text=True, check=False)
        if done.returncode:
            print(
                f"zobench: error: offload={mode} failed (exit {done.returncode}; its messages above)", file=sys.stderr
            )
            raise SystemExit(1)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    add_ratios(results)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        command = "python -m zobench.bench.offload " + " ".join(sys.argv[1:])
        Path(args.out).write_text(json.dumps({"command": command, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
