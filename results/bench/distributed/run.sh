#!/usr/bin/env bash
# Regenerates figures.json / figures_table.md (about 3 minutes with BENCH_STEPS=5 on 2 cores): SmolLM2-135M (cached in
# ~/.cache/zobench), SST-2 from the local mirror, global batch 16, MeZO, BENCH_STEPS (8) steps per setup.
set -euo pipefail
cd "$(dirname "$0")/../../.."
ZOBENCH_DATA_DIR=${ZOBENCH_DATA_DIR:-/work/shared/data} python -m zobench.bench.distributed results/bench/distributed
