"""What the EBM regimes' modules share: train, evaluate and export built
from a regime's own `check` and `build`."""

import os
import shutil
import tempfile

from keras_ebm import distribute
from keras_ebm.evaluation import chains, fid
from keras_ebm.runs import training


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
        if config.data.name != "toy2d":  # before loading anything
            fid.check_backbone(config)
        training.require(
            config.train.strategy != "tpu",
            "train.strategy",
            "evaluate on GPUs or CPUs (default, mirrored or multi_worker)",
        )
        # Before any TensorFlow op (multi_worker): the FID chains spread
        # over every replica of the strategy.
        strategy = distribute.get_strategy(config.train.strategy)
        model, step = training.load_trained(config, workdir, build, strategy)
        if distribute.is_chief(strategy):
            return chains.evaluate_model(config, workdir, model, step)
        # The other workers run the same chains in lockstep (the chains'
        # collectives need them) from the chief's saved state, and write
        # into a scratch copy that is thrown away.
        with tempfile.TemporaryDirectory() as scratch:
            for name in ("eval", "fid_cache"):
                if os.path.isdir(os.path.join(workdir, name)):
                    shutil.copytree(
                        os.path.join(workdir, name), os.path.join(scratch, name)
                    )
            return chains.evaluate_model(config, scratch, model, step)

    def export(config, workdir):
        model, step = training.load_trained(config, workdir, build)
        return chains.export(config, workdir, model, step)

    return train, evaluate, export
