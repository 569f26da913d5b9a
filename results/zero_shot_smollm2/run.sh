#!/usr/bin/env bash
# Regenerates results/zero_shot_smollm2/: zero-shot test metric of SmolLM2-135M (offline GGUF) on
# every task whose test split the local mirror holds, with the causal prompts of tasks/*.yaml.
# MeZO's protocol for the test set: 1000 examples sampled from the eval split with eval_seed 0
# (all of it when smaller). No training examples are loaded (train.steps=0, num_train=num_dev=0).
# Run from the repository root with the venv active:
#   ZOBENCH_DATA_DIR=../shared/data bash results/zero_shot_smollm2/run.sh
set -euo pipefail
out=results/zero_shot_smollm2/runs
rm -rf "$out"  # a completed run dir is never rerun: start from nothing
for task in sst2 sst5 snli mnli rte trec cb boolq wsc wic multirc copa squad; do
  python -m zobench model=smollm2-135m task=$task logger=none seed=0 train.steps=0 \
    data.num_train=0 data.num_dev=0 data.num_eval=1000 hydra.run.dir=$out/$task
done
python -m zobench.report regenerate results/zero_shot_smollm2  # README.md (report.yaml)
