#!/usr/bin/env bash
# Regenerates results/mezo_smollm2_sst2/: zero-shot vs MeZO (200 steps) on SmolLM2-135M / SST-2,
# 1000 train / 500 dev / 1000 test (MeZO's protocol; SST-2 validation has 872 rows, all used).
# lr is picked on dev accuracy alone among the grid below (eps 1e-3 as in MeZO); every run also
# reports test accuracy, shown for transparency. Run from the repository root with the venv active:
#   ZOBENCH_DATA_DIR=../shared/data bash results/mezo_smollm2_sst2/run.sh
set -euo pipefail
out=results/mezo_smollm2_sst2/runs
rm -rf "$out"  # a completed run dir is never rerun: start from nothing
common="model=smollm2-135m task=sst2 logger=none seed=0"
python -m zobench $common train.steps=0 hydra.run.dir=$out/zero_shot
for lr in 1e-5 3e-5 1e-4; do
  python -m zobench $common optimizer=mezo optimizer.lr=$lr optimizer.eps=1e-3 train.steps=200 \
    train.eval_every=100 hydra.run.dir=$out/mezo_lr$lr
done
# README.md, and report/ = python -m zobench.report results/mezo_smollm2_sst2/runs --table smoke --out results/mezo_smollm2_sst2/report
python -m zobench.report regenerate results/mezo_smollm2_sst2  # what report.yaml lists
