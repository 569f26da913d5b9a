#!/usr/bin/env bash
# Trajectory vs weight checkpoints (issue 18): SmolLM2-135M, MeZO, 200 steps, CPU; writes measure.json.
# Run from the repository root with the SST-2 mirror: ZOBENCH_DATA_DIR=/path/to/mirror bash results/bench/trajectory/run.sh
set -euo pipefail
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
PYTHONPATH=src python results/bench/trajectory/measure.py "$work"
