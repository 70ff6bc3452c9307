"""The prior EBM of longrun (ebm-life-cycle `configs/*_prior_sngan.py`): an
`EnergyModel` with a frozen generator as rejuvenation source and the
Gaussian term in its potential. It builds, trains, evaluates and exports as
shortrun; only its start-up check differs (the frozen generator must
exist)."""

from keras_ebm.regimes import common
from keras_ebm.regimes.shortrun import build
from keras_ebm.runs import training


def check(config):
    training.check_config(config)
    training.check_frozen_generator(config, config.data.name)


train, evaluate, export = common.entry_points(check, build)
