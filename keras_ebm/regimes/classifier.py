"""The classifiers that give digits-FID features and that midrun defends:
plain Keras `fit` on labeled data (`keras_ebm.classify`)."""

import os

from keras_ebm import classify, data
from keras_ebm.runs import files, training


def check(config):
    training.require(
        config.data.name in ("digits", "cifar10", "celeb_a", "imagenet2012"),
        "data.name",
        f"no labels for dataset {config.data.name!r}",
    )


def train(config, workdir):
    check(config)
    training.check_workdir(config, workdir)
    return classify.train(config, workdir)[0]


def evaluate(config, workdir):
    """Test accuracy of the trained classifier (`eval/results.json`)."""
    model = classify.load(config, workdir)
    images, labels = data.labeled(config, "test")
    accuracy = classify.accuracy(model, images, labels)
    print(f"test accuracy {accuracy:.4f} on {len(labels)} images")
    results = {"test_accuracy": float(accuracy), "test_size": len(labels)}
    files.write_json(os.path.join(workdir, "eval", "results.json"), results)
    return results


def export(config, workdir):
    raise training.ConfigError(
        "config.regime: a classifier has no sampler to export; its weights are "
        f"in {workdir}/{classify.WEIGHTS}"
    )
