"""The regimes `train.py --regime` knows.

Each regime is a config file `configs/<regime>.py` whose
`get_config(dataset)` returns the run's config; all of them train
`keras_ebm.models.EnergyModel` or a thin subclass of it.
"""

NAMES = ("shortrun", "classifier")
# Planned regimes, named so that asking for one gives a clear answer.
PLANNED = {
    "midrun": "the midrun (defense) issue",
    "longrun": "the longrun (density) issue",
}
