#!/usr/bin/env bash
# Regenerates figures.json / figures_table.md (about 6 minutes on 2 shared CPU cores): SmolLM2-135M (cached in
# ~/.cache/zobench), SST-2 from the local mirror, global batch 16, MeZO, 8 steps per setup.
set -euo pipefail
cd "$(dirname "$0")/../../.."
ZOBENCH_DATA_DIR=${ZOBENCH_DATA_DIR:-/work/shared/data} python -m zobench.bench.distributed results/bench/distributed
