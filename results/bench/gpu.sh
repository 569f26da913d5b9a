#!/usr/bin/env bash
# The prepared GPU check (issue 21): one script, at most --budget seconds (default 540 = 9 min)
# on one GPU, start to end. From the repository root, with the SST-2 mirror and SmolLM2's
# tokenizer available:
#   ZOBENCH_DATA_DIR=../shared/data bash results/bench/gpu.sh [--out DIR] [--budget S] [--plan FILE] [--dry-run] [--no-env]
#
# 1. environment.json: device, driver, CUDA / torch / Triton / transformers versions, commit;
# 2. the engine's start-up check (python -m zobench.engine.selfcheck, issue 32) on the models and
#    dtypes below, each feature on: the Triton kernels against the torch reference on every shape
#    class; its log holds one JSON line with the check's own seconds (the target: under 1 s);
# 3. the compiled-kernel tests (tests/engine/test_triton_cuda.py);
# 4. sharded vs data on 2 GPUs (issue 30; python -m zobench.bench.sharded --device cuda, torchrun,
#    NCCL) on OPT-1.3B-random: step time, bytes per step, per-rank peak GPU memory. Skipped, in one
#    line and a few seconds, where fewer than 2 GPUs are visible (exit 77: status "skipped");
# 5. the offload benchmark (issue 29; python -m zobench.bench.offload --device cuda): OPT-13B-random
#    fp16 in GPU memory and with offload=cpu (blocks in pinned host memory streamed to the GPU on a
#    side stream): step time, the ratio (goal <= 1.3x) and peak GPU memory; OPT-30B-random fp16
#    with offload=cpu (60 GB of blocks in host memory): peak GPU memory and step time;
# 6. the benchmark (python -m zobench.bench) of the default path (engine=auto: the Triton virtual
#    engine, paired) against the authors' MeZO step on OPT-1.3B-random and OPT-30B-random (the
#    largest OPT config; 60 GB of fp16 weights), fused vs unfused GEMM on both, paired vs
#    unpaired and bf16 on OPT-1.3B.
# The plan is in order of importance. Every run has its own timeout (and the whole check a budget:
# a run gets at most what is left, and is skipped when too little is), so one hang cannot eat the
# lease; the runs of 2-4 and OPT-13B's of 5 fit the budget even if every one of them times out,
# OPT-30B's gets the time they leave (offload=cpu draws a *-random model's blocks on the CPU, one
# generator: minutes for 60 GB) and the benchmarks of 6 what is left after it (--dry-run says which
# runs are sure to start and which run only if time is left); ZOBENCH_WATCHDOG makes a
# stalled run print its phase, module and stacks into its log before it is killed (a training
# run's step that stalls also ends it: engine.watchdog_s). Everything
# lands in one folder (default results/bench/gpu): runs.jsonl, <run>.json / .md / .log, and
# README.md, regenerated from those files by python -m zobench.bench.report table DIR.
set -uo pipefail

OUT=results/bench/gpu
BUDGET=540
PLAN=""
DRY=0
NO_ENV=0
PYTHON=${PYTHON:-python}
RESERVE=10     # seconds kept for the table at the end
MIN_RUN=${GPU_CHECK_MIN_RUN:-15}  # a run is skipped when cut to less than this by the budget

usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "zobench: error: gpu.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT=$2; shift 2 ;;
        --budget) [[ ${2:-} =~ ^[0-9]+$ ]] || die "--budget needs whole seconds, got '${2:-}'"; BUDGET=$2; shift 2 ;;
        --plan) [ -f "${2:-}" ] || die "--plan: no such file '${2:-}'"; PLAN=$2; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        --no-env) NO_ENV=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (allowed: --out DIR, --budget SECONDS, --plan FILE, --dry-run, --no-env)" ;;
    esac
done

# the plan: one run per line, "name<TAB>timeout seconds<TAB>command", the most important first
default_plan() {
    local B="$PYTHON -m zobench.bench device=cuda bench.warmup=1 bench.repeats=5 bench.out=$OUT"
    local C="$PYTHON -m zobench.engine.selfcheck device=cuda logger=none"
    local O="$PYTHON -m zobench.bench.offload --device cuda --dtype float16 --steps 3 --batch 16 --length 256"
    printf '%s\t%s\t%s\n' \
        selfcheck 30 "$C --models opt-1.3b-random,opt-30b-random --dtypes float16,bfloat16,float32 engine.fused_linear=true" \
        cuda_tests 90 "$PYTHON -m pytest -q -n 0 -p no:cacheprovider tests/engine/test_triton_cuda.py" \
        sharded_vs_data_2gpu 140 "$PYTHON -m zobench.bench.sharded $OUT --device cuda --model opt-1.3b-random --name sharded_vs_data_2gpu" \
        offload_opt-13b_fp16 240 "$O --model opt-13b-random --modes none cpu --out $OUT/offload_opt-13b_fp16.json" \
        offload_opt-30b_fp16_cpu 400 "$O --model opt-30b-random --modes cpu --out $OUT/offload_opt-30b_fp16_cpu.json" \
        opt-1.3b_fp16_default 60 "$B bench.name=opt-1.3b_fp16_default model=opt-1.3b-random" \
        opt-1.3b_fp16_fused 45 "$B bench.name=opt-1.3b_fp16_fused model=opt-1.3b-random engine.fused_linear=true bench.baseline=false" \
        opt-1.3b_fp16_unpaired 45 "$B bench.name=opt-1.3b_fp16_unpaired model=opt-1.3b-random engine.paired=false bench.baseline=false" \
        opt-1.3b_bf16_default 40 "$B bench.name=opt-1.3b_bf16_default model=opt-1.3b-random model.dtype=bfloat16 bench.baseline=false bench.virtual_lr0_steps=20" \
        opt-30b_fp16_default 120 "$B bench.name=opt-30b_fp16_default model=opt-30b-random" \
        opt-30b_fp16_fused 100 "$B bench.name=opt-30b_fp16_fused model=opt-30b-random engine.fused_linear=true bench.baseline=false"
}

record() {  # name status rc seconds timeout command -> one JSON line of runs.jsonl
    "$PYTHON" -c 'import json, sys
keys = ("name", "status", "rc", "seconds", "timeout_s", "command")
row = dict(zip(keys, sys.argv[1:]))
for key in ("rc", "seconds", "timeout_s"):
    row[key] = int(row[key]) if row[key].lstrip("-").isdigit() else None
print(json.dumps(row))' "$@" >> "$OUT/runs.jsonl"
}

mkdir -p "$OUT" || die "--out: cannot create '$OUT'"
: > "$OUT/runs.jsonl"
START=$SECONDS
export ZOBENCH_WATCHDOG=${ZOBENCH_WATCHDOG:-20}

if [ "$DRY" = 0 ] && [ "$NO_ENV" = 0 ]; then
    timeout 30 "$PYTHON" -m zobench.bench.report env "$OUT" || echo "gpu.sh: environment.json not written" >&2
fi

WORST=0  # the dry run: when each run would end if every run before it took its whole timeout
while IFS=$'\t' read -r name limit command; do
    [ -n "$name" ] || continue
    [[ $limit =~ ^[0-9]+$ ]] || die "plan: run '$name' has timeout '$limit', not whole seconds"
    left=$(( BUDGET - (SECONDS - START) - RESERVE ))
    t=$(( limit < left ? limit : left ))
    if [ "$DRY" = 1 ]; then
        WORST=$(( WORST + limit ))
        if [ "$WORST" -le $(( BUDGET - RESERVE )) ]; then
            when="starts even if every run before it times out: ends by ${WORST} s of ${BUDGET}"
        else
            when="runs only if time is left"
        fi
        echo "[dry-run] $name (timeout ${limit} s; $when): $command"
        record "$name" dry-run "" 0 "$limit" "$command"
        continue
    fi
    if [ "$t" -lt "$limit" ] && [ "$t" -lt "$MIN_RUN" ]; then  # cut to a stub by the budget
        echo "== $name: skipped, ${left} s left of the ${BUDGET} s budget" >&2
        record "$name" skipped "" 0 "$limit" "$command"
        continue
    fi
    echo "== $name (timeout ${t} s): $command" >&2
    begin=$SECONDS
    # its own process group, killed whole (TERM, then KILL 5 s later) when the time is up
    timeout --kill-after=5 "$t" bash -c "exec $command" > "$OUT/$name.log" 2>&1 < /dev/null
    rc=$?
    case $rc in
        0) status=ok ;;
        77) status=skipped ;;  # the run does not apply here (e.g. a 2-GPU run on one GPU): its log says why
        124|137) status=timeout ;;
        *) status=failed ;;
    esac
    echo "   $status (exit $rc) after $(( SECONDS - begin )) s; log: $OUT/$name.log" >&2
    record "$name" "$status" "$rc" $(( SECONDS - begin )) "$t" "$command"
done < <(if [ -n "$PLAN" ]; then cat "$PLAN"; else default_plan; fi)

"$PYTHON" -m zobench.bench.report table "$OUT" > /dev/null || die "the table could not be written"
echo "gpu.sh: $OUT/README.md ($(( SECONDS - START )) s)" >&2
