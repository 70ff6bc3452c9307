#!/usr/bin/env bash
# The digits demo (shortrun, the embedded default) trained in float32 with
# two seeds and in bfloat16, each evaluated with digits-FID at its own
# precision: bfloat16's FID against the float32 seed-to-seed noise.
#   bash benchmarks/digits_bfloat16.sh [runs/precision]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/precision}
PY=${PY:-.venv/bin/python}
[ -d runs/classifier/digits ] || $PY train.py --regime=classifier --dataset=digits
for spec in float32:0 float32:1 bfloat16:0; do
  precision=${spec%:*} seed=${spec#*:}
  dir=$out/${precision}_seed$seed
  /usr/bin/time -f "$dir train %e s" $PY train.py --workdir=$dir \
    --config.train.precision=$precision --config.seed=$seed
  /usr/bin/time -f "$dir evaluate %e s" $PY evaluate.py --workdir=$dir \
    --config.eval.milestones='(0, 40, 100)'
done
