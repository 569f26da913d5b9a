#!/usr/bin/env bash
# One step of every zeroth-order method on SmolLM2-135M / SST-2, batch 16, fp32, on the CPU: its
# step time and its peak memory against an inference-only forward of the same batch (each method's
# state included). From the repository root:
#   ZOBENCH_DATA_DIR=../shared/data bash results/bench/methods.sh
# Writes results/bench/methods/<method>.{json,md} and the summary results/bench/methods/README.md.
set -euo pipefail
python=${PYTHON:-python}
out=results/bench/methods
B="$python -m zobench.bench model=smollm2-135m bench.batch_size=16 bench.baseline=false bench.warmup=1 bench.repeats=${REPEATS:-3} bench.out=$out"
for method in mezo hizoo fzoo zo_adam zo_sgd_momentum zo_sgd_sign zo_sgd_cons sparse_mezo tezo lozo subzero forward_gradient; do
  $B optimizer=$method bench.name=$method > /dev/null
done
# README.md from the JSON files, in the order above (results/bench/report.yaml lists it)
$python -m zobench.report regenerate results/bench/report.yaml > /dev/null
cat "$out/README.md"
