#!/usr/bin/env bash
# The GPU benchmarks of results/bench/ (one H100 80GB; config-built random weights, fp16, batch 16).
# From the repository root, with the SST-2 mirror and SmolLM2's tokenizer available:
#   ZOBENCH_DATA_DIR=../shared/data bash results/bench/gpu.sh
set -uo pipefail
B="python -m zobench.bench device=cuda bench.warmup=2 bench.repeats=10 bench.out=results/bench"
$B bench.name=opt-1.3b-random_sst2_bs16_fp16_h100_inplace model=opt-1.3b-random engine.mode=inplace
$B bench.name=opt-1.3b-random_sst2_bs16_fp16_h100_torch_virtual model=opt-1.3b-random engine.backend=torch engine.mode=virtual
$B bench.name=opt-30b-random_sst2_bs16_fp16_h100_virtual model=opt-30b-random engine.mode=virtual
$B bench.name=opt-30b-random_sst2_bs16_fp16_h100_inplace model=opt-30b-random engine.mode=inplace
# since session 4 the virtual engine evaluates the ± pair in one forward (engine.paired=true, the
# default above) and streams large weights; the one-perturbation-per-forward figure, for comparison
$B bench.name=opt-30b-random_sst2_bs16_fp16_h100_virtual_unpaired model=opt-30b-random engine.mode=virtual engine.paired=false
# did not finish within 150 s in three tries (see README.md): the Triton virtual engine on OPT-1.3B
$B bench.name=opt-1.3b-random_sst2_bs16_fp16_h100_virtual model=opt-1.3b-random engine.mode=virtual bench.numerics_steps=1000 bench.virtual_lr0_steps=1000
$B bench.name=opt-1.3b-random_sst2_bs16_bf16_h100_virtual model=opt-1.3b-random model.dtype=bfloat16 engine.mode=virtual bench.numerics_steps=1000 bench.virtual_lr0_steps=1000 bench.numerics_dtypes=[bfloat16]
# session 6: engine.fused_linear=true perturbs the weight tiles inside the matmul (no θ + εz written)
$B bench.name=opt-30b-random_sst2_bs16_fp16_h100_virtual_fused model=opt-30b-random engine.mode=virtual engine.fused_linear=true
$B bench.name=opt-1.3b-random_sst2_bs16_fp16_h100_virtual_fused model=opt-1.3b-random engine.mode=virtual engine.fused_linear=true
