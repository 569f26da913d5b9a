#!/usr/bin/env bash
# Trajectory vs weight checkpoints: SmolLM2-135M, MeZO, CPU; writes measure.json.
# Run from the repository root with the SST-2 mirror:
#   ZOBENCH_DATA_DIR=/path/to/mirror bash results/bench/trajectory/run.sh [steps (200)] [replayed steps (20)]
# The committed measure.json: `run.sh 20 10` (2 shared CPU cores: 200 steps of 135M took too long there).
set -euo pipefail
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m zobench.bench.trajectory "$work" results/bench/trajectory/measure.json "${1:-200}" "${2:-20}"
