#!/usr/bin/env bash
# Regenerates results/tables_smoke/: the smoke version of every paper table, end to end — the
# smoke experiments (tiny random models, SmolLM2 for memory; CPU, minutes) and then the report.
# Run from the repository root with the venv active:
#   ZOBENCH_DATA_DIR=../shared/data bash results/tables_smoke/run.sh
# The numbers of random tiny models mean nothing; what this shows is that each table's pipeline
# (grid -> runs -> best-dev selection -> table with the published column) works.
set -euo pipefail
here=results/tables_smoke
rm -rf "$here/runs" "$here/mezo_table1" "$here/mezo_table18_k16" "$here/mezo_table18_k512" \
  "$here/fzoo_averages" "$here/sparse_mezo" "$here/memory" "$here/hizoo_roberta_k16" "$here/tezo_opt13b"
for experiment in mezo_table1 mezo_table1_baselines mezo_table1_lp mezo_table1_ft mezo_table18 mezo_table18_lp \
                  mezo_table18_k512 fzoo_averages sparse_mezo memory hizoo_roberta_k16 tezo_opt13b; do
  python -m zobench -m experiment=${experiment}_smoke hydra.sweep.dir=$here/runs/$experiment
done
# one folder of Markdown, LaTeX, CSV and plots per table: python -m zobench.report <runs of the table's
# experiments> --table <table> --smoke --out $here/<table>, as report.yaml lists them
python -m zobench.report regenerate $here
