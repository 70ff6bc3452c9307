#!/usr/bin/env bash
# Longrun on digits (issue 25): the demo's generator, the longrun preset,
# its 100K-step evaluation (FID, precision/recall/density/coverage and the
# class shares at 0, 1K, 10K and 100K steps, `eval/classes_along_chain.png`)
# and the diagnosis of the class balance (energies per class of real images
# and of the banks; ULA against MALA on the same chains).
#
#   bash benchmarks/digits_longrun.sh [PYTHON]
set -euo pipefail
py=${1:-.venv/bin/python}
time $py train.py --regime=classifier --dataset=digits
time $py train.py                                     # shortrun demo: the generator
time $py train.py --regime=longrun --dataset=digits   # frozen generator from the demo
time $py evaluate.py --regime=longrun --dataset=digits
time $py benchmarks/longrun_diagnosis.py --regime=longrun --dataset=digits
