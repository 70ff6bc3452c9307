#!/usr/bin/env bash
# Midrun on digits: the classifier, the defensive EBM (data-rejuvenated, on
# the classifier's training split), the preset's whole report (undefended,
# BPDA+EOT over 3 seeds, the full-gradient attack, worst case, both K_def
# curves), the export, the exported defended classifier checked without
# keras_ebm against the seeds' natural accuracy, and the attacks' cost.
#
#   bash benchmarks/digits_midrun.sh [PYTHON]
set -euo pipefail
py=${1:-.venv/bin/python}
time $py train.py --regime=classifier --dataset=digits
time $py train.py --regime=midrun --dataset=digits
time $py evaluate.py --workdir=runs/midrun/digits           # attacks: eval/attack/
time $py evaluate.py --workdir=runs/midrun/digits --export  # export/, export_defended/
time $py benchmarks/defended_savedmodel.py --workdir=runs/midrun/digits
time $py benchmarks/attack_cost.py --workdir=runs/midrun/digits
cat runs/midrun/digits/eval/attack/results.json
