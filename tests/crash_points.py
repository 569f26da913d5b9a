"""Kill a run at every file-system write of its checkpoints and of its finishing sequence, restart
it, and check the dir ends as an uninterrupted run does (tests/test_resume.py runs this).

``python -m tests.crash_points <out.json> <data dir> <work dir> [trajectory|weights|offload[:method] [points]]``
(``train.checkpoint``, default weights; ``offload``: a trajectory run with ``offload=disk``, whose
final weights are the store's block files, every write of a step's write-back a crash point). The
process imports zobench once and forks one child per crash point (a fork is cheap; a fresh
interpreter per point would take minutes), on a small copy of the SST-2 mirror. The parent never
runs a torch operation, so the children's thread pools start clean. Writes counted (each is a crash
point, the kill lands just before it): ``os.replace``, ``os.rename``, ``os.unlink``,
``shutil.rmtree``, safetensors ``save_file`` and ``torch.save`` (an fsync is not one: without a
power loss, a kill before it leaves what a kill after the write before it leaves). A kill is
``os._exit`` (no handler, no finally: what SIGKILL does). The points are independent: JOBS worker
processes (one per core, at most 4) visit them in parallel, each its share in turn.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
from pathlib import Path

from tests import helpers

VOLATILE = helpers.VOLATILE | {"git_sha"}  # a restart may run another commit
JOBS = max(1, min(4, len(os.sched_getaffinity(0))))  # crash points visited in parallel


def _instrument(crash_at: int, counter: list) -> None:
    import safetensors.torch
    import torch

    def wrap(module, name):
        original = getattr(module, name)

        def op(*args, **kwargs):
            counter[0] += 1
            if counter[0] == crash_at:
                os._exit(137)
            return original(*args, **kwargs)

        setattr(module, name, op)

    for module, name in (
        (os, "replace"),
        (os, "rename"),
        (os, "unlink"),
        (shutil, "rmtree"),
        (safetensors.torch, "save_file"),
        (torch, "save"),
    ):
        wrap(module, name)


def _child(cfg, run_dir: Path, crash_at: int, count_file: Path | None = None) -> int:
    """Fork; the child runs (crashing at write ``crash_at``, 0: never); returns its exit code."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            import logging

            logging.disable(logging.CRITICAL)
            counter = [0]
            _instrument(crash_at, counter)
            import zobench.run
            from zobench.run import run

            zobench.run.git_sha = lambda: None  # a git subprocess per child: time, and not what is tested

            run(cfg, run_dir)
            if count_file is not None:
                count_file.write_text(str(counter[0]))
            code = 0
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _stable(run_dir: Path) -> dict:
    summary = {k: v for k, v in json.loads((run_dir / "summary.json").read_text()).items() if k not in VOLATILE}
    metrics = [
        {k: v for k, v in json.loads(line).items() if k not in VOLATILE}
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    final_file = run_dir / "final/trainable.safetensors"
    if final_file.is_file():
        final = final_file.read_bytes().hex()
    else:  # offload=disk: the store's block files (weights and step stamps) are the final weights
        final = "".join(p.read_bytes().hex() for p in sorted((run_dir / "offload").glob("block-*.safetensors")))
    return {
        "summary": summary,
        "metrics": metrics,
        "final": final,
        "leftovers": sorted(p.name for p in run_dir.iterdir() if p.name in ("checkpoint", "best")),
        "trajectory": (run_dir / "trajectory.bin").read_bytes().hex(),
    }


def main(out: Path, data_dir: str, work: Path, mode: str = "weights") -> None:
    import transformers  # noqa: F401 - imported once here, not in every child (imports only: no torch op)

    import zobench.models  # noqa: F401
    import zobench.run  # noqa: F401
    from tests.helpers import SMOKE, compose_run
    from zobench.models.loading import load_tokenizer, model_config

    # What every child would otherwise import and read again (transformers' lazily imported Llama
    # classes, the tokenizer files): done once here, 4/5 of a child's CPU time. No torch op runs.
    importlib.import_module("transformers.models.llama.modeling_llama")
    load_tokenizer(model_config("tiny-llama"))

    mode, _, method = mode.partition(":")  # offload:<optimizer>: another method than SMOKE's
    mirror = work / "data" / "sst2"  # SMOKE samples 32 + 16 train rows and 24 test rows
    mirror.mkdir(parents=True)
    for name, rows in (("train.jsonl", 64), ("validation.jsonl", 32)):
        with open(Path(data_dir) / "sst2" / name) as f:
            (mirror / name).write_text("".join(next(f) for _ in range(rows)))
    cfg = compose_run(
        *SMOKE,
        "train.steps=4",
        # offload: dev evaluations at step 3 only, so a checkpoint pins blocks one update behind its
        # step (deferred) and step 3's evaluation writes blocks ahead of the checkpoint of step 2
        f"train.eval_every={3 if mode == 'offload' else 1}",
        "train.checkpoint_every=2",
        "train.log_every=1",
        *(
            ("train.save_final=true", f"train.checkpoint={mode}")
            if mode != "offload"
            else ("offload=disk", "train.save_final=false", "train.keep_best=false", "train.checkpoint=trajectory")
        ),
        *((f"optimizer={method}",) if method else ()),
        f"data.dir={mirror.parent}",
    )
    reference, count_file = work / "reference", work / "count"
    assert _child(cfg, reference, 0, count_file) == 0
    expected, writes = _stable(reference), int(count_file.read_text())
    only = [int(p) for p in sys.argv[5].split(",")] if len(sys.argv) > 5 else None
    points = only or list(range(1, writes + 1))
    workers = []
    for k in range(JOBS):  # the points are independent: one worker process per core
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _visit(cfg, work, points[k::JOBS], expected, work / f"results{k}.jsonl")
                code = 0
            finally:
                os._exit(code)
        workers.append(pid)
    exits = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in workers]
    results = [json.loads(line) for k in range(JOBS) for line in _lines(work / f"results{k}.jsonl")]
    failures = sorted((r for r in results if r is not None), key=lambda r: r["point"])
    report = {"writes": writes, "failures": failures, "done": len(results), "worker_exits": exits}
    out.write_text(json.dumps(report))


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


def _visit(cfg, work: Path, points: list[int], expected: dict, results: Path) -> None:
    """Crash at each of ``points``, restart, compare; one JSON line per point (null: it passed)."""
    for point in points:
        run_dir = work / f"crash{point}"
        crashed = _child(cfg, run_dir, point)
        restarted = _child(cfg, run_dir, 0)
        got = _stable(run_dir) if restarted == 0 else None
        failure = None
        if crashed != 137 or got != expected:
            failure = {
                "point": point,
                "crash_exit": crashed,
                "restart_exit": restarted,
                "differs": None if got is None else sorted(k for k in expected if got[k] != expected[k]),
            }
        shutil.rmtree(run_dir, ignore_errors=True)
        with open(results, "a") as f:
            f.write(json.dumps(failure) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), *sys.argv[4:5])
