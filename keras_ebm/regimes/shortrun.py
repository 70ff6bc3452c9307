"""Shortrun image synthesis (paper Section 2, Algorithm 1): an
`EnergyModel` with the hybrid persistent/cooperative initialization, the
shared fit loop, FID along the chains (toy2d: the exact steady state), and
the SavedModel export."""

from keras_ebm.regimes import common
from keras_ebm.runs import training


def check(config):
    """Shortrun uses exactly the shared fields."""
    training.check_config(config)


def build(config):
    return training.build_model(config)


train, evaluate, export = common.entry_points(check, build)
