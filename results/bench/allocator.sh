#!/usr/bin/env bash
# Where the stateful methods' peak memory above "inference + declared state" comes from: glibc's
# malloc. By default glibc raises its mmap threshold each time an mmapped block is freed (up to
# 32 MB), so once the first 4 MB pieces of z have come and gone, most later blocks (activations,
# the state buffers of the smaller matrices) are served from the heap, where freed space is kept
# and fragments. MALLOC_MMAP_THRESHOLD_ fixes the threshold (128 KiB here), which turns that rule
# off. Each method runs a short training loop (6 steps, 2 dev evaluations: the pattern of a real
# run, where the excess was seen) under both allocator settings; from the repository root:
#   ZOBENCH_DATA_DIR=../shared/data bash results/bench/allocator.sh
# Writes results/bench/allocator/<method>_<setting>.json (the run's summary) and README.md.
set -euo pipefail
python=${PYTHON:-python}
out=results/bench/allocator
mkdir -p "$out"
run() {  # method setting [env...]
  local method=$1 setting=$2 dir
  dir=$(mktemp -d)
  shift 2
  env "$@" "$python" -m zobench model=smollm2-135m task=sst2 optimizer="$method" logger=none seed=0 \
    train.steps=6 train.eval_every=3 data.num_train=100 data.num_dev=64 data.num_eval=64 \
    train.checkpoint_every=0 hydra.run.dir="$dir" > "$dir.log" 2>&1 || { cat "$dir.log" >&2; exit 1; }
  cp "$dir/summary.json" "$out/${method}_$setting.json"
  rm -rf "$dir" "$dir.log"
}
for method in mezo zo_sgd_momentum hizoo; do
  run "$method" glibc-default
  run "$method" mmap-threshold-128k MALLOC_MMAP_THRESHOLD_=131072
done
# README.md from the JSON files, in the order above (results/bench/report.yaml lists it)
$python -m zobench.report regenerate results/bench/report.yaml > /dev/null
cat "$out/README.md"
