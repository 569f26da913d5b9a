"""Zero-shot table (Markdown) from the run dirs of run.sh; deterministic, reads summary.json only."""

import json
import sys
from pathlib import Path

PUBLISHED = {  # MeZO Table 1, OPT-13B zero-shot (../shared/TARGETS.md), for scale only
    "sst2": 58.8, "rte": 59.6, "cb": 46.4, "boolq": 59.0, "wsc": 38.5, "wic": 55.0, "multirc": 46.9,
    "copa": 80.0, "record": 81.2, "squad": 46.2, "drop": 14.6}
MISSING = {"record": "mirror has no validation split (FewGLUE 32 only)", "drop": "not in the mirror"}

runs = Path(sys.argv[1])
print("# Zero-shot, SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to fp32), CPU\n")
print("Command: `ZOBENCH_DATA_DIR=../shared/data bash results/zero_shot_smollm2/run.sh` "
      "(test = up to 1000 examples of each task's eval split, MeZO's sampling with eval_seed 0; "
      "causal prompts of tasks/*.yaml, MeZO Table 14 where the paper has one). "
      "OPT-13B's published zero-shot (MeZO Table 1) is shown for scale, not as a target: "
      "a 135M model is expected far below it.\n")
print("| task | task version | metric | test | n test | eval forward passes | OPT-13B (MeZO T1) |")
print("|---|---|---|---|---|---|---|")
for path in sorted(runs.glob("*/summary.json")):
    s = json.loads(path.read_text())
    metric = s["metric"]
    value = s[f"test_{metric}"]
    extra = f" (EM {100 * s['test_em']:.1f})" if "test_em" in s else ""
    published = PUBLISHED.get(s["task"], "—")
    print(f"| {s['task']} | {s['task_version']} | {metric} | {100 * value:.1f}{extra} | {s['num_test']} | "
          f"{s['forward_passes_eval']} | {published} |")
for task, why in MISSING.items():
    print(f"| {task} | — | — | not run: {why} | — | — | {PUBLISHED[task]} |")
