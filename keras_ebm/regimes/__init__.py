"""The regimes `train.py --regime` knows: a plain dict from name to module.

Each module holds only what differs between regimes, with the same five
functions: `check(config)`, `build(config)` (EBM regimes),
`train(config, workdir)`, `evaluate(config, workdir)` and
`export(config, workdir)`. What they share (checks, model building, the
workdir, checkpoints, resume, the fit loop) is in `keras_ebm.runs.training`;
evaluation they share in `keras_ebm.evaluation` and `keras_ebm.defense`.
Each regime has a config file `configs/<regime>.py`.
"""

from keras_ebm.regimes import classifier, longrun, midrun, prior, shortrun

REGIMES = {
    "shortrun": shortrun,
    "prior": prior,
    "longrun": longrun,
    "midrun": midrun,
    "classifier": classifier,
}
NAMES = tuple(REGIMES)
# Planned regimes, named so that asking for one gives a clear answer.
PLANNED = {}
