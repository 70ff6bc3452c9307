#!/usr/bin/env bash
# Longrun on digits beside the shortrun demo model: digits-FID along one
# 100K-step trajectory for both, with the same classifier and N, and the
# real-data floor; then precision/recall/density/coverage and class counts
# along both trajectories (benchmarks/digits_realism.py).
#
#   bash benchmarks/digits_longrun.sh [PYTHON]
set -euo pipefail
py=${1:-.venv/bin/python}
eval_flags=(
  --config.eval.num_samples=256 --config.eval.batch_size=256
  --config.eval.num_steps=100000 --config.eval.milestones='(0,1000,10000,100000)'
)
time $py train.py --regime=classifier --dataset=digits
time $py train.py                                    # shortrun demo: the generator
time $py train.py --regime=longrun --dataset=digits  # frozen generator from the demo (~41 min)
time $py evaluate.py --workdir=runs/shortrun/digits "${eval_flags[@]}"
time $py evaluate.py --regime=longrun --dataset=digits "${eval_flags[@]}"
cat runs/shortrun/digits/eval/results.json runs/longrun/digits/eval/results.json
$py benchmarks/digits_realism.py --workdir=runs/shortrun/digits
$py benchmarks/digits_realism.py --workdir=runs/longrun/digits
