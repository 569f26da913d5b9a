"""Sizes and replay time of trajectory checkpoints vs weight checkpoints (README, "Trajectory").

Measured: SmolLM2-135M (fp32, full tuning, MeZO, torch/virtual engine, CPU), ``steps`` training
steps (argv; the JSON records how many were run): bytes of trajectory.bin, of a trajectory
checkpoint and of a weight checkpoint (the same ``save_checkpoint`` a run uses), time per
training step and per replayed step. Extrapolated by
arithmetic: 20,000 steps, and OPT-13B (fp16, 12.85e9 parameters). Writes the numbers as JSON
to ``out`` and prints them. Command (results/bench/trajectory/run.sh):

    ZOBENCH_DATA_DIR=<mirror> python -m zobench.bench.trajectory <work dir> <out.json> [steps [replayed]]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from ..build import Components
from ..checkpoint import save_checkpoint
from ..report.files import read_jsonl
from ..resources import conf_dir
from ..run import run
from ..trajectory import read
from ..trajectory.replay import load_run_config, replay_into

STEPS, REPLAYED = 200, 20  # defaults; argv: <work dir> [steps [replayed steps]]
OPT13B_PARAMS, OPT13B_BYTES = 12.85e9, 2  # fp16


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(work: Path, out: Path, steps: int = STEPS, replayed: int = REPLAYED) -> dict:
    from hydra import compose, initialize_config_dir

    overrides = [
        "model=smollm2-135m", "task=sst2", "optimizer=mezo", "logger=none", f"train.steps={steps}",
        "train.batch_size=2", "data.num_train=400", "data.num_dev=0", "data.num_eval=8", "train.log_every=1",
        "train.checkpoint_every=0", "device=cpu", "engine=torch",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = compose(config_name="config", overrides=overrides)
    run_dir = work / "run"
    summary = run(cfg, run_dir)
    events = read_jsonl(run_dir / "metrics.jsonl")
    train = [e for e in events if e["event"] == "train"]
    step_s = (train[-1]["wall_s"] - train[0]["wall_s"]) / (train[-1]["step"] - train[0]["step"])
    log = read(run_dir / "trajectory.bin")
    per_step = (log.end - log.start) / len(log.steps)

    cfg = load_run_config(run_dir)
    parts = Components.build(cfg, torch.device("cpu"), data=False)  # the run's model and optimizer at step 0
    named, learner = parts.named, parts.learner
    started = time.perf_counter()
    replay_into(learner.optimizer, log, replayed, int(cfg.train.batch_size))
    replay_s = (time.perf_counter() - started) / replayed

    loop = {"step": steps}
    weights = save_checkpoint(work / "weights", steps, dict(named), learner.optimizer.state_dict(), loop)
    trajectory = save_checkpoint(work / "trajectory", steps, {}, {}, loop)
    params = sum(p.numel() for _, p in named)
    result = {
        "model": cfg.model.name, "params": params, "steps": steps, "batch_size": int(cfg.train.batch_size),
        "trajectory_bin_bytes": log.end, "trajectory_header_bytes": log.start, "bytes_per_step": per_step,
        "weight_checkpoint_bytes": _folder_bytes(weights),
        "trajectory_checkpoint_bytes": _folder_bytes(trajectory) + log.end,
        "train_s_per_step": step_s, "replay_s_per_step": replay_s, "replayed_steps": replayed,
        "torch_threads": torch.get_num_threads(), "wall_s": summary["wall_s"],
        "at_20000_steps_trajectory_bytes": log.start + 20000 * per_step + _folder_bytes(trajectory),
        "opt13b_weight_checkpoint_bytes": OPT13B_PARAMS * OPT13B_BYTES,
        "opt13b_trajectory_bytes_20000_steps": log.start + 20000 * per_step + _folder_bytes(trajectory),
    }  # fmt: skip
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), *(int(a) for a in sys.argv[3:5]))
