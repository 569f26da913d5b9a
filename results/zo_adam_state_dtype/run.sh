#!/usr/bin/env bash
# Regenerates results/zo_adam_state_dtype/: the same ZO-Adam run on SmolLM2-135M / SST-2 with its Adam
# state (m, v) in float32 (zobench's default) and in bfloat16 (torch Adam on a bf16 model, as in
# ZO-Bench's --load_bfloat16 sweeps). Same seed, data, batches and directions: only the state dtype
# differs. Weights stay fp32 in both. Then python -m zobench.bench.adam_state replays each run's
# trajectory to report the moments (the effective learning rate) and the distance moved at a few
# steps, simulates v alone to 20k steps, and writes measure.json.
#   ZOBENCH_DATA_DIR=../shared/data bash results/zo_adam_state_dtype/run.sh
# Environment: STEPS (300), BATCH (8), LR (1e-4, the 400-pass table's ZO-Adam grid point), OUT_DIR, PYTHON.
set -euo pipefail
here=results/zo_adam_state_dtype
out=${OUT_DIR:-$here/runs}
python=${PYTHON:-python}
steps=${STEPS:-300}
common="model=smollm2-135m task=sst2 optimizer=zo_adam optimizer.lr=${LR:-1e-4} logger=none seed=0
  train.steps=$steps train.batch_size=${BATCH:-8} train.eval_every=100 train.log_every=10 train.checkpoint_every=0
  data.num_dev=200 data.num_eval=200"
for dtype in float32 bfloat16; do
  # shellcheck disable=SC2086  # $common is a list of overrides
  $python -m zobench $common optimizer.state_dtype=$dtype hydra.run.dir="$out/$dtype" &
done
wait
$python -m zobench.bench.adam_state "$out/float32" "$out/bfloat16" --out "$here/measure.json"
