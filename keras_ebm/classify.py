"""Classifiers: training and loading those of the `classifier` regime
(`train`, `load`), and loading any classifier to defend (`load_to_defend`:
a run, a `.keras` file, a SavedModel or a `keras.applications` network)."""

import json
import os

import keras
import ml_collections
import numpy as np
import tensorflow as tf

from keras_ebm import data, distribute, networks
from keras_ebm.errors import ConfigError
from keras_ebm.runs import checkpoints, files

WEIGHTS = "classifier.weights.h5"


def build(config):
    shape = (config.data.image_size,) * 2 + (config.data.channels,)
    kwargs = {}
    if config.classifier.weight_decay:
        kwargs["weight_decay"] = config.classifier.weight_decay
    return networks.build(config.classifier.network, image_shape=shape, **kwargs)


def train(config, workdir):
    """Trains the classifier, reports test accuracy in `results.json`.

    Returns:
        `(model, test_accuracy)`.
    """
    # First: a multi-worker strategy must exist before any TensorFlow op.
    strategy = distribute.get_strategy(config.train.strategy)
    cc = config.classifier
    x_train, y_train = data.labeled(config, "train")
    x_test, y_test = data.labeled(config, "test")
    chief = distribute.is_chief(strategy)
    # Seeded initial weights: one config trains one classifier in any
    # process (FID features are comparable only under one classifier). TF's
    # global seed is cleared as in keras_ebm.runs.training.
    keras.utils.set_random_seed(config.seed)
    tf.random.set_seed(None)
    with strategy.scope():
        model = build(config)
    weights = os.path.join(workdir, WEIGHTS)
    if os.path.exists(weights):  # trained already: report, never overwrite
        model.load_weights(weights)
        acc = accuracy(model, x_test, y_test)
        print(f"classifier in {workdir} already trained: test accuracy {acc:.4f}")
        return model, acc
    if chief:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    steps_per_epoch = len(x_train) // cc.batch_size

    def lr(epoch):  # piecewise constant in epochs, as the reference
        rates = [r for s, r in zip(cc.lr.steps, cc.lr.rates, strict=True) if s <= epoch]
        return rates[-1]

    with strategy.scope():  # the optimizer's slots are mirrored too
        if cc.optimizer == "sgd":
            optimizer = keras.optimizers.SGD(lr(0), momentum=cc.momentum)
        else:
            optimizer = keras.optimizers.Adam(lr(0))
        model.compile(
            optimizer,
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    distribute.shape_keras_steps(model, (x_train[:1], y_train[:1]))
    ds = tf.data.Dataset.from_tensor_slices((x_train, y_train))
    ds = ds.shuffle(len(x_train), seed=config.seed).repeat()
    if cc.augment:
        ds = ds.map(lambda x, y: (data.augment(x), y))
    ds = ds.batch(cc.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    model.fit(
        ds,
        epochs=cc.epochs,
        steps_per_epoch=steps_per_epoch,
        callbacks=[keras.callbacks.LearningRateScheduler(lr)]
        + (
            [keras.callbacks.TensorBoard(os.path.join(workdir, "tensorboard"))]
            if chief
            else []
        ),
        verbose=2 if chief else 0,
        shuffle=False,  # the stream is shuffled already
    )
    if strategy.num_replicas_in_sync > 1:
        state = list(model.weights) + list(model.optimizer.variables)
        n = distribute.check_replicas_agree(state, strategy)
        if chief:
            print(f"All {n} replicas hold identical weights and optimizer state.")
    _, test_accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    if chief:
        # Atomic: a file that exists is a trained classifier (never redone).
        checkpoints.save_weights(model, weights)
        files.write_json(
            os.path.join(workdir, "results.json"),
            {"test_accuracy": test_accuracy, "test_size": len(x_test)},
        )
    print(f"test accuracy {test_accuracy:.4f} on {len(x_test)} images")
    return model, float(test_accuracy)


def _trained_data(workdir):
    """The `data` section the classifier in `workdir` trained with (its
    saved config), or None where the run directory has no config."""
    saved = os.path.join(workdir, "config.json")
    if not os.path.exists(saved):
        return None
    with open(saved) as f:
        return json.load(f)["data"]


def trained_image_size(workdir):
    """The image size the classifier in `workdir` trained at, or None."""
    trained = _trained_data(workdir)
    return None if trained is None else trained["image_size"]


def load(config, workdir):
    """The trained classifier of a `classifier` run directory."""
    path = os.path.join(workdir, WEIGHTS)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no trained classifier at {path}; train one with "
            f"`python train.py --regime=classifier --dataset={config.data.name}`"
        )
    trained = _trained_data(workdir)
    if trained is not None:
        size = (trained["image_size"], trained["channels"])
        wanted = (config.data.image_size, config.data.channels)
        if size != wanted:
            raise ConfigError(
                f"the classifier in {workdir} takes {size[0]}x{size[0]}x{size[1]} "
                f"images, not {wanted[0]}x{wanted[0]}x{wanted[1]}; train one for "
                f"this size with `python train.py --regime=classifier "
                f"--dataset={config.data.name} --config.data.image_size={wanted[0]} "
                "--workdir=<dir>` and pass its workdir"
            )
    model = build(config)
    model.load_weights(path)
    return model


def accuracy(model, images, labels, batch_size=256):
    logits = model.predict(images, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, 1) == labels))


class SavedModelClassifier(keras.layers.Layer):
    """A classifier given as a SavedModel: its `logits` endpoint (or
    `serving_default`), images -> logits; a dict output with one entry is
    unpacked."""

    def __init__(self, path, **kwargs):
        super().__init__(**kwargs)
        loaded = tf.saved_model.load(path)
        endpoint = "logits" if hasattr(loaded, "logits") else "serving_default"
        if endpoint == "serving_default" and endpoint not in loaded.signatures:
            raise ValueError(
                f"the SavedModel at {path!r} has neither a `logits` function nor a "
                "serving_default signature"
            )
        self.endpoint = endpoint
        self.layer = keras.layers.TFSMLayer(path, call_endpoint=endpoint)
        # Nothing to build: the SavedModel holds the weights. Built, the
        # wrapper can be tracked by an export (`export_defended`).
        self.built = True

    def call(self, x, training=False):
        out = self.layer(x)
        if isinstance(out, dict):
            if len(out) != 1:
                raise ValueError(
                    f"the classifier's {self.endpoint} returns {sorted(out)}; "
                    "expected one output, the logits"
                )
            out = next(iter(out.values()))
        return out


APPLICATIONS = "keras.applications."


def application_classifier(spec):
    """`keras.applications.<Name>:<weights>`, e.g.
    `keras.applications.EfficientNetB7:/weights/efficientnetb7.h5`: the
    Keras application with its top, returning logits (no softmax), its
    weights from a local file, or `imagenet` to download them (machines
    with network). Its input is its own (EfficientNet-B7: 600x600 in
    [0, 255]); `defense.classifier_input_size` / `classifier_input_range`
    adapt the EBM's states to it."""
    name, _, weights = spec[len(APPLICATIONS) :].partition(":")
    cls = getattr(keras.applications, name, None)
    if cls is None or not callable(cls):
        raise ConfigError(f"defense.classifier_workdir: no keras.applications.{name}")
    if not weights:
        raise ConfigError(
            f"defense.classifier_workdir: {spec} needs weights after ':', a "
            "local file (e.g. efficientnetb7.h5) or imagenet (downloads them)"
        )
    if weights != "imagenet" and not os.path.isfile(weights):
        raise FileNotFoundError(f"no weights file {weights!r} for {name}")
    return cls(weights=weights, classifier_activation=None)


def load_to_defend(path):
    """The classifier to defend (the one place that loads one): a
    classifier-regime run directory (`load`), a
    `.keras` file, a SavedModel with a `logits` endpoint (or a
    serving_default signature returning logits), or a Keras application
    with its weights (`application_classifier`)."""
    if path.startswith(APPLICATIONS):
        return application_classifier(path)
    if path.endswith(".keras"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no classifier file {path!r}")
        return keras.models.load_model(path, compile=False)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return SavedModelClassifier(path)
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"no classifier run in {path!r}; train one with `python train.py "
            "--regime=classifier --dataset=<dataset>` or set "
            "--config.defense.classifier_workdir"
        )
    with open(config_path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    return load(config, path)
