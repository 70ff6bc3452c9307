"""Shortrun image synthesis (paper Section 2, Algorithm 1): an
`EnergyModel` with the hybrid persistent/cooperative initialization, the
shared fit loop, FID along the chains (toy2d: the exact steady state), and
the SavedModel export."""

from keras_ebm import evaluation, training


def check(config):
    """Shortrun uses exactly the shared fields."""
    training.check_config(config)


def build(config):
    return training.build_model(config)


def train(config, workdir):
    return training.train(config, workdir, build=build, check=check)


def evaluate(config, workdir):
    check(config)
    model, step = training.load_trained(config, workdir, build)
    return evaluation.evaluate_model(config, workdir, model, step)


def export(config, workdir):
    model, step = training.load_trained(config, workdir, build)
    return evaluation.export(config, workdir, model, step)
