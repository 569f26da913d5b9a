#!/usr/bin/env bash
# offload=none / cpu / disk: MeZO step time and peak memory (src/zobench/bench/offload.py).
# Run from the repository root with the venv active (ZOBENCH_DATA_DIR not needed: random token ids).
set -euo pipefail
cd "$(dirname "$0")/../../.."

# SmolLM2-135M (fp32, from its GGUF package), batch 4 × 64 tokens, 3 steps after a warm-up, CPU:
python -m zobench.bench.offload --model smollm2-135m --modes none cpu disk --steps 3 --batch 4 --length 64 \
  --dir /tmp/zobench-offload-smollm2 --out results/bench/offload/smollm2-135m_cpu.json

# OPT-13B-random in bfloat16 on disk (26 GB of blocks; the whole model never in memory): not run
# yet (the lead runs it). The store goes to --dir: put it on a disk with 30 GB free.
if [[ "${RUN_OPT13B:-0}" == 1 ]]; then
  python -m zobench.bench.offload --model opt-13b-random --dtype bfloat16 --modes disk --steps 3 --batch 1 --length 32 \
    --dir "${OFFLOAD_DIR:-/tmp/zobench-offload-opt13b}" --out results/bench/offload/opt-13b-random_bf16_disk.json
fi
