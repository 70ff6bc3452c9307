"""The classifiers that give digits-FID features and that midrun defends:
plain Keras `fit` on labeled data (`keras_ebm.classify`)."""

from keras_ebm import classify, data, training


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
    """Test accuracy of the trained classifier (`results.json`)."""
    model = classify.load(config, workdir)
    images, labels = data.labeled(config, "test")
    accuracy = classify.accuracy(model, images, labels)
    print(f"test accuracy {accuracy:.4f} on {len(labels)} images")
    return {"test_accuracy": accuracy, "test_size": len(labels)}


def export(config, workdir):
    raise training.ConfigError(
        "config.regime: a classifier has no sampler to export; its weights are "
        f"in {workdir}/{classify.WEIGHTS}"
    )
