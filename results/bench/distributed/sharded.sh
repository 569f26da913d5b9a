#!/usr/bin/env bash
# Regenerates sharded.json / sharded_table.md: dist.mode=sharded vs data on 2 ranks x 1 thread (Gloo, CPU), SmolLM2-135M
# (cached in ~/.cache/zobench), SST-2 from the local mirror, global batch 16, MeZO, in-place torch engine, BENCH_STEPS (5).
set -euo pipefail
cd "$(dirname "$0")/../../.."
BENCH_STEPS=${BENCH_STEPS:-5} ZOBENCH_DATA_DIR=${ZOBENCH_DATA_DIR:-/work/shared/data} python -m zobench.bench.sharded results/bench/distributed
