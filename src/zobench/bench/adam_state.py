"""ZO-Adam with float32 vs bfloat16 state: what the state's precision does to v and to the step
(README, "ZO-Adam's state precision"; results/zo_adam_state_dtype/run.sh trains the two runs).

Reads two finished ZO-Adam runs (the same config but ``optimizer.state_dtype``), replays each from
its trajectory log (zobench.trajectory.replay: bit-identical to the training) and, at a few steps,
reports over all trainable elements:

* the median of v̂ = v / (1 - β2^t) (Adam's second-moment estimate),
* the median per-element learning rate η / (√v̂ + δ) (what Adam multiplies m̂ by),
* the fraction of elements whose v did not change over the last replayed chunk (bf16: v·β2 rounds
  back to v, so v only moves when (1-β2) ĝ² is at least half an ulp of v),
* ‖θ_t - θ_0‖ / ‖θ_0‖, and the runs' train loss, dev and test accuracy (metrics.jsonl).

Then, past the runs' length, a simulation of v alone to ZO-Bench's 20k steps: ELEMENTS elements,
ĝ = g_t z with z ~ N(0, 1) and g_t drawn (with replacement, seeded) from the fp32 run's logged
projected gradients, v updated as ZO-Adam does in float32 and in bfloat16 side by side.

    python -m zobench.bench.adam_state RUN_FP32 RUN_BF16 --out results/zo_adam_state_dtype/measure.json
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
from pathlib import Path

import torch

from ..build import Components
from ..errors import ConfigError
from ..report.files import read_json_object, read_jsonl
from ..trajectory.log import FILENAME, read
from ..trajectory.replay import check_base, check_config, load_run_config
from ..trajectory.tape import ReplayTape, replay_steps

CHECKPOINTS = (1, 10, 50, 100, 200, 300, 500, 1000)
SIMULATED = (100, 300, 1000, 3000, 10000, 20000)
ELEMENTS = 4096
RATIOS = ("median_v_hat", "median_effective_lr", "relative_distance")
SAMPLE = 1 << 20  # elements per tensor kept for the medians (torch.quantile's input limit is 2^24)


def _median(tensors) -> float:
    flat = torch.cat([t.reshape(-1)[:SAMPLE].double() for t in tensors])
    return float(flat.median())


def _moments(optimizer, step: int) -> dict:
    """Medians of v̂ and of η/(√v̂ + δ) over the state's elements (the first SAMPLE of each tensor)."""
    group = optimizer.param_groups[0]
    (_, beta2), delta, lr = group["betas"], group["adam_eps"], group["lr"]
    v_hat = [optimizer.state[p]["exp_avg_sq"].float() / (1 - beta2**step) for _, p in optimizer._all_params]
    return {
        "median_v_hat": _median(v_hat),
        "median_effective_lr": _median([lr / (v.sqrt() + delta) for v in v_hat]),
    }


def _metrics(run_dir: Path) -> dict:
    events = read_jsonl(run_dir / "metrics.jsonl")
    train = {e["step"]: e["loss"] for e in events if e["event"] == "train"}
    evals = {(e["split"], e["step"]): e["accuracy"] for e in events if e["event"] == "eval"}
    return {"train_loss": train, "dev_curve": {s: a for (k, s), a in evals.items() if k == "dev"}, **_test(run_dir)}


def _test(run_dir: Path) -> dict:
    summary = read_json_object(run_dir / "summary.json")
    return {key: summary.get(key) for key in ("dev_accuracy", "test_accuracy", "best_step", "status")}


def measure(run_dir: Path) -> dict:
    cfg = load_run_config(run_dir)
    log = read(run_dir / FILENAME)
    check_config(log.header, cfg, run_dir / "config.yaml")
    parts = Components.build(cfg, torch.device("cpu"), data=False)  # the run's model and optimizer at step 0
    named = parts.named
    check_base(log.header, named, run_dir / FILENAME)
    base = [p.detach().clone() for _, p in named]
    optimizer = parts.learner.optimizer
    tape, done, rows = ReplayTape(log.header.replicas), 0, {}
    previous = None
    for target in [c for c in CHECKPOINTS if c <= log.last_step]:
        replay_steps(optimizer, tape, log.steps[done:target], int(cfg.train.batch_size))
        v = [optimizer.state[p]["exp_avg_sq"].reshape(-1)[:SAMPLE].clone() for _, p in optimizer._all_params]
        moved = sum(float(torch.linalg.vector_norm((p.detach() - b).double())) ** 2 for (_, p), b in zip(named, base))
        size = sum(float(torch.linalg.vector_norm(b.double())) ** 2 for b in base)
        row = {**_moments(optimizer, target), "relative_distance": math.sqrt(moved / size)}
        if previous is not None:
            frozen = sum(int((a == b).sum()) for a, b in zip(v, previous))
            row[f"v_unchanged_since_step_{done}"] = frozen / sum(t.numel() for t in v)
        rows[target], previous, done = row, v, target
    return {"state_dtype": cfg.optimizer.state_dtype, "steps": rows, **_metrics(run_dir)}


def simulate(projected_grads: list[float], beta2: float = 0.999, seed: int = 0, at=SIMULATED) -> dict:
    """Median v̂ in bfloat16 over median v̂ in float32 at the SIMULATED steps, and the effective
    learning-rate ratio it implies, √(v̂_fp32 / v̂_bf16) (what η/√v̂ is in bf16 over fp32)."""
    gen = torch.Generator().manual_seed(seed)
    pool = torch.tensor(projected_grads, dtype=torch.float32)
    v32, v16, rows = torch.zeros(ELEMENTS), torch.zeros(ELEMENTS, dtype=torch.bfloat16), {}
    for t in range(1, max(at) + 1):
        grad = pool[torch.randint(len(pool), (1,), generator=gen)] * torch.randn(ELEMENTS, generator=gen)
        v32.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        low = grad.to(torch.bfloat16)
        v16.mul_(beta2).addcmul_(low, low, value=1 - beta2)
        if t in at:
            ratio = float(v16.float().median() / v32.median())  # the bias correction cancels
            rows[t] = {"median_v_hat_bf16_over_fp32": ratio, "effective_lr_bf16_over_fp32": ratio**-0.5}
    return rows


def _projected_grads(run_dir: Path) -> list[float]:
    events = read_jsonl(run_dir / "metrics.jsonl")
    return [e["projected_grad"] for e in events if e["event"] == "train" and math.isfinite(e["projected_grad"])]


def _measure_side_by_side(runs: list[Path]) -> dict:
    """``measure`` of each run dir, in a process each (side by side), checked before any replays."""
    for run_dir in runs:  # a bad run dir fails in seconds, not after the others' replays
        check_config(read(run_dir / FILENAME).header, load_run_config(run_dir), run_dir / "config.yaml")
        _metrics(run_dir)
    with multiprocessing.get_context("spawn").Pool(len(runs)) as pool:
        return dict(zip(map(str, runs), pool.map(measure, runs)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    try:
        result = _measure_side_by_side(args.runs)
    except ConfigError as err:  # a run dir that is not one, a damaged or changed file: one line, exit 2
        print(f"zobench: error: {err}", file=sys.stderr)
        sys.exit(2)
    fp32, bf16 = (next(r for r in result.values() if r["state_dtype"] == d) for d in ("float32", "bfloat16"))
    result["bf16_over_fp32"] = {
        step: {key: bf16["steps"][step][key] / fp32["steps"][step][key] for key in RATIOS}
        for step in fp32["steps"]
        if step in bf16["steps"]
    }
    fp32_dir = next(run for run in args.runs if result[str(run)]["state_dtype"] == "float32")
    result["simulated_v"] = simulate(_projected_grads(fp32_dir))
    args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(json.dumps({k: result[k] for k in ("bf16_over_fp32", "simulated_v")}, indent=1))


if __name__ == "__main__":
    main()
