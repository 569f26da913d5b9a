"""Prefix-shared candidate scoring vs one sequence per (example, candidate): evaluation time and
predictions on tasks with multi-token candidates, SmolLM2-135M, one process.

    ZOBENCH_DATA_DIR=../shared/data python -m zobench.bench.prefix_sharing > results/bench/prefix_sharing.md

(the committed prefix_sharing.md was made by this code when it was results/bench/prefix_sharing.py)
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import torch
from omegaconf import OmegaConf

from ..build import build_model, build_objective
from ..models.loading import model_config
from ..models.objective import with_demonstrations
from ..tasks import build_splits, load_task

# (task, test examples scored, in-context demonstrations before each prompt, MeZO's ICL format);
# ReCoRD, the other task with many multi-token candidates, has no test split in the local mirror
CASES = [("copa", 64, 0), ("copa", 32, 16)]
REPEATS = 3


def compare(objective, encoded: list) -> tuple[dict, dict, bool]:
    """Median evaluation seconds and the scores of both paths (shared prefix or not), and whether
    their predictions agree."""
    timings, scores = {}, {}
    for share in (False, True):
        objective.share_prefix = share
        runs = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            objective.evaluate(encoded, 8)
            runs.append(time.perf_counter() - start)
        timings[share] = statistics.median(runs)
        scores[share] = torch.cat([objective.scores(encoded[i : i + 8]).flatten() for i in range(0, len(encoded), 8)])
    predictions = {}
    for share in (False, True):
        objective.share_prefix = share
        predictions[share] = [objective.predict(encoded[i : i + 8]) for i in range(0, len(encoded), 8)]
    return timings, scores, predictions[False] == predictions[True]


def main() -> None:
    torch.set_grad_enabled(False)
    # the model as a run loads it (no tuning: nothing trains), its objective with a 2048-token budget
    cfg = OmegaConf.create({"model": model_config("smollm2-135m"), "task": {"max_length": 2048}, "objective": "loss"})
    model, tokenizer = build_model(cfg, "cpu", tune=False)
    print("# Prefix-shared candidate scoring vs one sequence per (example, candidate)\n")
    print("Command: `ZOBENCH_DATA_DIR=../shared/data python -m zobench.bench.prefix_sharing`\n")
    print(
        f"SmolLM2-135M fp32, {torch.get_num_threads()} CPU threads ({platform.processor() or 'cpu'}), torch "
        f"{torch.__version__}; `objective.evaluate` on the first N test examples, eval batch 8, median of "
        f"{REPEATS} runs each, both paths in one process.\n"
    )
    print(
        "| task | demonstrations | examples | candidates per example | mean tokens per context | per pair (s) | "
        "shared (s) | speed-up | same predictions | max score difference |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, n, demos in CASES:
        spec = load_task(name)
        splits = build_splits(spec, os.environ.get("ZOBENCH_DATA_DIR"), demos, 0, n, seed=0)
        objective = build_objective(cfg, spec, model, tokenizer, "cpu")
        shown = [spec.render(e) for e in splits.train][:demos]
        encoded = [objective.encode(with_demonstrations(spec.render(e), shown)) for e in splits.test]
        timings, scores, same = compare(objective, encoded)
        finite = torch.isfinite(scores[False])
        diff = float((scores[True][finite] - scores[False][finite]).abs().max())
        cands = statistics.mean(len(e.options) for e in encoded)
        ctx = statistics.mean(len(e.contexts[0]) for e in encoded)
        print(
            f"| {name} | {demos} | {len(encoded)} | {cands:.1f} | {ctx:.0f} | {timings[False]:.2f} | "
            f"{timings[True]:.2f} | {timings[False] / timings[True]:.1f}× | {same} | {diff:.1e} |"
        )


if __name__ == "__main__":
    main()
