"""Midrun adversarial defense (paper Section 3, Algorithm 3): an
`EnergyModel` with a persistent bank rejuvenated rarely from a frozen
generator or from data, no lifetime cap and an annealed learning rate,
trained with the shared loop; exported with a defended classifier
(`keras_ebm.defense`). (The BPDA+EOT evaluation comes with the rest of the
midrun issue.)"""

import json
import os

import keras
import ml_collections

from keras_ebm import classify, defense, evaluation, training
from keras_ebm.regimes import common
from keras_ebm.regimes.shortrun import build

require = training.require


def check(config):
    training.check_config(config)
    require(config.init.persistent, "init.persistent", "midrun keeps a bank")
    require(
        config.bank.max_updates == 0,
        "bank.max_updates",
        "midrun has no lifetime cap (states live K_def steps on average)",
    )
    require(
        not config.generator.trainable,
        "generator.trainable",
        "the midrun generator is frozen",
    )
    require(config.defense.num_steps >= 1, "defense.num_steps", "must be >= 1")
    training.check_frozen_generator(config, config.data.name)


train, evaluate, _ = common.entry_points(check, build)


def load_classifier(path):
    """The classifier to defend: a classifier-regime run directory or a
    `.keras` file."""
    if path.endswith(".keras"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no classifier file {path!r}")
        return keras.models.load_model(path, compile=False)
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"no classifier run in {path!r}; train one with `python train.py "
            "--regime=classifier --dataset=<dataset>` or set "
            "--config.defense.classifier_workdir"
        )
    with open(config_path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    return classify.load(config, path)


def export(config, workdir):
    """`<workdir>/export` (the EBM's endpoints, `purify` with K_def steps)
    and `<workdir>/export_defended` (`classify`, `purify`, `predict`)."""
    model, step = training.load_trained(config, workdir, build)
    classifier = load_classifier(config.defense.classifier_workdir)
    evaluation.export(
        config, workdir, model, step, purify_steps=config.defense.num_steps
    )
    defended = defense.DefendedClassifier(model, classifier, config.defense.num_steps)
    path = os.path.join(workdir, "export_defended")
    defense.export_defended(defended, path)
    print(f"Defended classifier of step {step} written to {path}")
    return path
