"""`train`, `evaluate` and `export` of a config and a workdir: what
`train.py` and `evaluate.py` call, dispatched to the config's regime
(`keras_ebm.regimes`). The shared machinery is in `keras_ebm.runs.training`.
"""

from keras_ebm import data, regimes  # noqa: F401  (run.data)
from keras_ebm.runs import interrupt, training
from keras_ebm.runs.training import ConfigError, load_trained, run_config  # noqa: F401


def regime_of(config):
    """The regime module of `config`, or a `ConfigError` naming the known."""
    if config.regime not in regimes.REGIMES:
        planned = regimes.PLANNED.get(config.regime)
        hint = f" (it comes with {planned})" if planned else ""
        raise ConfigError(
            f"config.regime: unknown regime {config.regime!r}{hint}; "
            f"known: {', '.join(regimes.NAMES)}"
        )
    return regimes.REGIMES[config.regime]


def check_config(config):
    """Validates `config` before anything is built or written."""
    regime_of(config).check(config)


def build_model(config):
    """The compiled model of `config` (call inside `strategy.scope()`)."""
    return regime_of(config).build(config)


def state_shape(config):
    return training.state_shape(config)


def train(config, workdir):
    """Trains (or resumes) the model of `config` in `workdir`; returns it."""
    return regime_of(config).train(config, workdir)


def evaluate(config, workdir):
    """Evaluates the newest checkpoint of `workdir`.

    The model is rebuilt from `<workdir>/config.json`; `config` contributes
    only its evaluation sections (`eval`, `attack`, `defense`; see
    `training.run_config`).
    """
    config = run_config(config, workdir)
    # Long evaluations (FID along 100K steps, the attacks) stop at their
    # next saved state on SIGINT/SIGTERM and resume from it.
    with interrupt.handled():
        return regime_of(config).evaluate(config, workdir)


def export(config, workdir):
    """Writes the SavedModel(s) of the newest checkpoint of `workdir`."""
    config = run_config(config, workdir)
    return regime_of(config).export(config, workdir)
