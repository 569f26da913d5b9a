#!/usr/bin/env bash
# Regenerates results/methods_smollm2_sst2/: every method of zobench on SmolLM2-135M / SST-2 at one
# forward-pass budget (issue 4's evidence). MeZO's protocol: 1000 train / 500 dev / 1000 test
# (SST-2 validation has 872 rows, all used), batch 16, eps 1e-3, full fine-tuning in fp32, dev
# evaluated every BUDGET/10 forward passes, the best-dev state tested. Every ZO method gets
# BUDGET forward passes (train.forward_budget: steps = BUDGET // its passes per step); the
# first-order baselines get FO_STEPS backprop steps; zero-shot, ICL (32 demonstrations, MeZO's) and
# linear probing take no steps. Learning rates: a two-point grid per method, picked on dev alone
# (the README, python -m zobench.report regenerate); the grid is scaled from MeZO's (the per-element
# step of each update rule made comparable), see NOTES.md. Runs go JOBS at a time (each is one process; on a GPU they share it).
#   ZOBENCH_DATA_DIR=../shared/data JOBS=12 bash results/methods_smollm2_sst2/run.sh    # a GPU machine
# Environment: BUDGET, FO_STEPS, JOBS, OUT_DIR, ONLY (a regex of run names), EXTRA (overrides for
# every run), FZOO_BATCHED, NO_TABLE, PYTHON.
# On this repository's 2-core CPU a MeZO step of SmolLM2 takes ~4 s: BUDGET=4000 is ~2 h per run.
set -euo pipefail
here=results/methods_smollm2_sst2
out=${OUT_DIR:-$here/runs}
budget=${BUDGET:-4000}
fo_steps=${FO_STEPS:-500}
jobs=${JOBS:-1}
python=${PYTHON:-python}
fzoo_batched=${FZOO_BATCHED:-true}  # false: FZOO's N directions one call each (same steps; cheaper on CPU)
common="model=smollm2-135m task=sst2 logger=none seed=0 train.checkpoint_every=0 train.log_every=10 ${EXTRA:-}"
zo="train.forward_budget=$budget train.eval_every_passes=$((budget / 10))"
mkdir -p "$out"
# Issue 17 gave FZOO, LOZO and TeZO their authors' step scale; runs made before it are RECORDS below:
# listed in plan.txt (so the README reports the committed run dirs) but never launched, since their
# overrides now mean a different step. The new lines give the same steps as the old ones:
#   FZOO: the step no longer divides by eps (DKmiyan/FZOO trainer.py:760), so the old lr eta at
#     eps 1e-3 is lr eta/eps = 1000*eta now (old 3e-6 -> 3e-3, 1e-6 -> 1e-3); sigma is now the
#     population std (the old default: sample std), a step sqrt(8/7) = 1.07x larger at N=8.
#   LOZO (rank 2) and TeZO (rank 8): Z lost its 1/sqrt(r) (optsuite/LOZO LOZOtrainer.py:711-716; the
#     TeZO paper's formula), so g and the update direction both grow sqrt(r)x: the old lr eta is
#     eta/r now (LOZO 1e-4 -> 5e-5, 3e-5 -> 1.5e-5; TeZO 1e-4 -> 1.25e-5, 3e-5 -> 3.75e-6, TeZO-m
#     1e-5 -> 1.25e-6); TeZO-Adam normalises g, so only the direction's sqrt(r) counts: eta/sqrt(8)
#     (1e-4 -> 3.5e-5, 1e-3 -> 3.5e-4). The perturbation at eps 1e-3 is sqrt(r)x larger than before.
#   HiZOO now updates with the new Sigma (trainer.py:512): at alpha 1e-8 each element's step changes
#     by (1 - alpha + alpha c z^2)^(-1/2) - 1 ~ -0.5e-8 c z^2, with c <= 1.1e4 logged in these runs:
#     ~5e-5 z^2 (about 1e-4 typical, 2e-3 at |z| = 6), so its runs stand (not reproducible bit for bit).
records='fzoo_lr3e-6|fzoo_lr1e-6|fzoo_r_lr3e-6|fzoo_r_lr1e-6|tezo_lr1e-4|tezo_lr3e-5|tezo_m_lr1e-5|tezo_adam_lr1e-4|tezo_adam_lr1e-3|lozo_lr1e-4|lozo_lr3e-5'
# name | overrides (the order is the order of launch: the comparisons the issue asks about first)
cat > "$out/plan.txt" <<PLAN
mezo_lr1e-4|optimizer=mezo optimizer.lr=1e-4 $zo
mezo_lr3e-5|optimizer=mezo optimizer.lr=3e-5 $zo
hizoo_lr1e-4|optimizer=hizoo optimizer.lr=1e-4 $zo
hizoo_lr3e-5|optimizer=hizoo optimizer.lr=3e-5 $zo
fzoo_lr3e-3|optimizer=fzoo optimizer.lr=3e-3 optimizer.batched=$fzoo_batched $zo
fzoo_lr1e-3|optimizer=fzoo optimizer.lr=1e-3 optimizer.batched=$fzoo_batched $zo
fzoo_r_lr3e-3|optimizer=fzoo optimizer.reuse=true optimizer.lr=3e-3 optimizer.batched=$fzoo_batched $zo
fzoo_r_lr1e-3|optimizer=fzoo optimizer.reuse=true optimizer.lr=1e-3 optimizer.batched=$fzoo_batched $zo
zero_shot|train.steps=0
icl_32|train.steps=0 icl.demos=32
linear_probe|optimizer=linear_probe train.steps=0
adam_ft_lr1e-5|optimizer=adam optimizer.lr=1e-5 train.steps=$fo_steps train.eval_every=$((fo_steps / 10))
sgd_ft_lr1e-3|optimizer=sgd optimizer.lr=1e-3 train.steps=$fo_steps train.eval_every=$((fo_steps / 10))
mezo_q4_lr1e-4|optimizer=mezo optimizer.num_directions=4 optimizer.lr=1e-4 $zo
mezo_onesided_lr1e-4|optimizer=mezo optimizer.one_sided=true optimizer.lr=1e-4 $zo
zo_sgd_momentum_lr1e-5|optimizer=zo_sgd_momentum optimizer.lr=1e-5 $zo
zo_sgd_momentum_lr3e-6|optimizer=zo_sgd_momentum optimizer.lr=3e-6 $zo
zo_sgd_sign_lr1e-3|optimizer=zo_sgd_sign optimizer.lr=1e-3 $zo
zo_sgd_sign_lr3e-4|optimizer=zo_sgd_sign optimizer.lr=3e-4 $zo
zo_sgd_sign_elementwise_lr1e-4|optimizer=zo_sgd_sign optimizer.sign=elementwise optimizer.lr=1e-4 $zo
zo_sgd_sign_elementwise_lr3e-5|optimizer=zo_sgd_sign optimizer.sign=elementwise optimizer.lr=3e-5 $zo
zo_sgd_cons_lr1e-4|optimizer=zo_sgd_cons optimizer.lr=1e-4 $zo
zo_sgd_cons_lr3e-5|optimizer=zo_sgd_cons optimizer.lr=3e-5 $zo
zo_adam_lr1e-4|optimizer=zo_adam optimizer.lr=1e-4 $zo
zo_adam_lr1e-3|optimizer=zo_adam optimizer.lr=1e-3 $zo
sparse_mezo_lr3e-4|optimizer=sparse_mezo optimizer.lr=3e-4 $zo
sparse_mezo_lr1e-4|optimizer=sparse_mezo optimizer.lr=1e-4 $zo
tezo_lr1.25e-5|optimizer=tezo optimizer.lr=1.25e-5 $zo
tezo_lr3.75e-6|optimizer=tezo optimizer.lr=3.75e-6 $zo
tezo_m_lr1.25e-6|optimizer=tezo optimizer.variant=momentum optimizer.lr=1.25e-6 $zo
tezo_m_lr3.75e-6|optimizer=tezo optimizer.variant=momentum optimizer.lr=3.75e-6 $zo
tezo_adam_lr3.5e-5|optimizer=tezo optimizer.variant=adam optimizer.lr=3.5e-5 $zo
tezo_adam_lr3.5e-4|optimizer=tezo optimizer.variant=adam optimizer.lr=3.5e-4 $zo
lozo_lr5e-5|optimizer=lozo optimizer.lr=5e-5 $zo
lozo_lr1.5e-5|optimizer=lozo optimizer.lr=1.5e-5 $zo
subzero_lr1e-4|optimizer=subzero optimizer.lr=1e-4 $zo
subzero_lr3e-5|optimizer=subzero optimizer.lr=3e-5 $zo
forward_gradient_lr1e-4|optimizer=forward_gradient optimizer.lr=1e-4 $zo
forward_gradient_lr3e-5|optimizer=forward_gradient optimizer.lr=3e-5 $zo
dizo_lr1e-4|optimizer=dizo optimizer.lr=1e-4 $zo
dizo_lr3e-5|optimizer=dizo optimizer.lr=3e-5 $zo
lezo_lr1e-4|optimizer=lezo optimizer.lr=1e-4 $zo
lezo_lr3e-5|optimizer=lezo optimizer.lr=3e-5 $zo
mezo_svrg_lr1e-4|optimizer=mezo_svrg optimizer.lr=1e-4 optimizer.q=4 optimizer.anchor_examples=128 $zo
mezo_svrg_lr3e-5|optimizer=mezo_svrg optimizer.lr=3e-5 optimizer.q=4 optimizer.anchor_examples=128 $zo
PLAN
# RECORDS (never launched): the runs made before issue 17, with the overrides they were made with
cat >> "$out/plan.txt" <<PLAN
fzoo_lr3e-6|optimizer=fzoo optimizer.lr=3e-6 optimizer.batched=$fzoo_batched $zo
fzoo_lr1e-6|optimizer=fzoo optimizer.lr=1e-6 optimizer.batched=$fzoo_batched $zo
fzoo_r_lr3e-6|optimizer=fzoo optimizer.reuse=true optimizer.lr=3e-6 optimizer.batched=$fzoo_batched $zo
fzoo_r_lr1e-6|optimizer=fzoo optimizer.reuse=true optimizer.lr=1e-6 optimizer.batched=$fzoo_batched $zo
tezo_lr1e-4|optimizer=tezo optimizer.lr=1e-4 $zo
tezo_lr3e-5|optimizer=tezo optimizer.lr=3e-5 $zo
tezo_m_lr1e-5|optimizer=tezo optimizer.variant=momentum optimizer.lr=1e-5 $zo
tezo_adam_lr1e-4|optimizer=tezo optimizer.variant=adam optimizer.lr=1e-4 $zo
tezo_adam_lr1e-3|optimizer=tezo optimizer.variant=adam optimizer.lr=1e-3 $zo
lozo_lr1e-4|optimizer=lozo optimizer.lr=1e-4 $zo
lozo_lr3e-5|optimizer=lozo optimizer.lr=3e-5 $zo
PLAN
# dizo / lezo / mezo_svrg learning rates: each steps like MeZO per element (DiZO's steps are MeZO's;
# LeZO is MeZO on a block subset, drop_rate 0.5 = 15 of 30 blocks; MeZO-SVRG's inner and anchor
# updates are SPSA directions of MeZO's scale, anchor_lr = lr), so they take MeZO's pair, 1e-4 (best
# at 400 passes) and 3e-5 (the 200-step default). MeZO-SVRG's anchor is shrunk from the reference's
# 512 examples to 128 (8 batches, 16 passes) and q from 2 to 4, so that at a few hundred passes it
# still takes steps: (16 + 3·4)/4 = 7 passes per step on average instead of 34.
launch() {  # one run; a completed run dir is kept (rerunning the script fills in what is missing)
  local name=${1%%|*} overrides=${1#*|}
  if grep -qs '"status": "completed"' "$out/$name/summary.json"; then return 0; fi
  rm -rf "${out:?}/$name"
  # shellcheck disable=SC2086
  $python -m zobench $common $overrides hydra.run.dir="$out/$name" > "$out/$name.log" 2>&1 \
    || echo "run $name failed (see $out/$name.log)" >&2
}
export -f launch
export out common python
# ONLY (an extended regex of run names) runs part of the plan, e.g. ONLY='mezo_lr3e-5|fzoo_lr.*'
grep -v '^$' "$out/plan.txt" | grep -vE "^(${records})\|" | grep -E "^(${ONLY:-.*})\|" | xargs -P "$jobs" -I{} bash -c 'launch "$@"' _ {}
# README.md and curves.png of every runs folder that has a report.yaml (runs/, cpu_budget400/, ...);
# a new OUT_DIR gets its own report.yaml (copy cpu_budget400/report.yaml: subset, completed_only, command)
if [ -z "${NO_TABLE:-}" ]; then
  $python -m zobench.report regenerate $here
fi
