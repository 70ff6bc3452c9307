"""What the EBM regimes' modules share: train, evaluate and export built
from a regime's own `check` and `build`."""

from keras_ebm import distribute, training
from keras_ebm.evaluation import chains


def entry_points(check, build):
    """`(train, evaluate, export)` of an EBM regime.

    train: the shared fit loop (`training.train`). evaluate: the newest
    checkpoint, FID along the chains (toy2d: the exact steady state).
    export: its SavedModel.
    """

    def train(config, workdir):
        return training.train(config, workdir, build=build, check=check)

    def evaluate(config, workdir):
        training.check_config(config)
        strategy = None
        if config.train.strategy == "mirrored":  # chains over local devices
            strategy = distribute.get_strategy("mirrored")
        training.require(
            config.train.strategy in ("default", "mirrored"),
            "train.strategy",
            "FID along the chains runs on one host: default or mirrored (its "
            "chains spread over the local devices)",
        )
        model, step = training.load_trained(config, workdir, build, strategy)
        return chains.evaluate_model(config, workdir, model, step)

    def export(config, workdir):
        model, step = training.load_trained(config, workdir, build)
        return chains.export(config, workdir, model, step)

    return train, evaluate, export
