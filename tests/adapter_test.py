"""The classifier's input adapter: size and value range inside the defense,
differentiable, exported, and part of the defense's digest."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_ebm
from keras_ebm import classify
from keras_ebm.defense import adapter, purify


def range_classifier():
    """8x8x1 inputs in [0, 255] -> 2 logits: the mean pixel and its
    distance to 255, so the logits show the size and range it saw."""
    x = keras.Input((8, 8, 1))
    mean = keras.ops.mean(x, axis=(1, 2))
    return keras.Model(x, keras.ops.concatenate([mean, 255.0 - mean], -1))


def ebm(shape=(4, 4, 1)):
    net = keras.Sequential(
        [keras.Input(shape), keras.layers.Flatten(), keras.layers.Dense(1)]
    )
    model = keras_ebm.EnergyModel(net, num_steps=2, step_size=0.01)
    model.compile(ebm_optimizer=keras.optimizers.Adam(1e-3))
    return model


def test_maps_size_and_range_and_passes_gradients():
    clf = range_classifier()
    wrapped = adapter.InputAdapter(clf, size=8, value_range=(0, 255))
    x = tf.constant(np.random.default_rng(0).uniform(-1, 1, (3, 4, 4, 1)), tf.float32)
    seen = 127.5 * (tf.image.resize(x, (8, 8), method="bilinear") + 1.0)
    np.testing.assert_allclose(wrapped.adapt(x), seen, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(wrapped(x), clf(seen), rtol=1e-5, atol=1e-3)
    # -1 -> 0 and 1 -> 255 (a constant image keeps its value when resized).
    np.testing.assert_allclose(wrapped(-tf.ones((1, 4, 4, 1)))[0], [0, 255], atol=1e-4)
    np.testing.assert_allclose(wrapped(tf.ones((1, 4, 4, 1)))[0], [255, 0], atol=1e-4)
    # The attack differentiates through it: d mean / d x = 127.5 / 16 per
    # pixel (bilinear resize preserves the mean here: 4 -> 8 doubles).
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = wrapped(x)[:, 0]
    grad = tape.gradient(out, x)
    np.testing.assert_allclose(tf.reduce_sum(grad, axis=(1, 2, 3)), 127.5, rtol=1e-4)


def test_no_adapter_where_none_is_needed():
    clf = range_classifier()
    assert adapter.adapted(clf) is clf
    assert isinstance(adapter.adapted(clf, 8, (0, 255)), adapter.InputAdapter)
    with pytest.raises(ValueError, match="lo < hi"):
        adapter.InputAdapter(clf, 8, (1, 0))


def test_defense_and_export_carry_the_adapter(tmp_path):
    model = ebm()
    wrapped = adapter.adapted(range_classifier(), 8, (0, 255))
    defended = purify.DefendedClassifier(model, wrapped, num_steps=2)
    x = tf.zeros((2, 4, 4, 1))
    path = purify.export_defended(defended, str(tmp_path / "defended"))
    loaded = tf.saved_model.load(path)
    np.testing.assert_allclose(loaded.classify(x), wrapped(x), rtol=1e-5)
    np.testing.assert_allclose(loaded.classify(x)[0], [127.5, 127.5], atol=1e-3)
    # Another range is another defense: results cached under the digest
    # are not reused.
    other = adapter.adapted(wrapped.classifier, 8, (0, 1))
    other_digest = purify.DefendedClassifier(model, other, 2).digest()
    assert other_digest != defended.digest()


def test_midrun_wires_the_configured_adapter(monkeypatch):
    from keras_ebm.configs import midrun as midrun_configs
    from keras_ebm.regimes import midrun

    clf = range_classifier()
    monkeypatch.setattr(classify, "load_to_defend", lambda path: clf)
    config = midrun_configs.get_config("smoke")
    assert midrun.classifier_of(config) is clf  # [-1, 1] at the EBM's size
    config.defense.update(classifier_input_size=8, classifier_input_range=(0, 255))
    wrapped = midrun.classifier_of(config)
    assert wrapped.adapter_settings == {"size": 8, "value_range": [0.0, 255.0]}
    # The reference's ImageNet defense: EfficientNet-B7 at 600 in [0, 255].
    d = midrun_configs.get_config("imagenet2012").defense
    assert (d.classifier_input_size, tuple(d.classifier_input_range)) == (600, (0, 255))
    config.defense.classifier_input_range = (1.0, 0.0)
    with pytest.raises(keras_ebm.ConfigError, match="classifier_input_size"):
        midrun.check(config)


@pytest.mark.slow  # an EfficientNet (B0 stands in for B7: the same code path)
def test_a_keras_application_from_a_local_weights_file(tmp_path):

    net = keras.applications.EfficientNetB0(weights=None, classifier_activation=None)
    path = str(tmp_path / "b0.weights.h5")
    net.save_weights(path)
    loaded = classify.load_to_defend(f"keras.applications.EfficientNetB0:{path}")
    x = tf.random.stateless_uniform((2, 224, 224, 3), [0, 3], 0, 255)
    np.testing.assert_allclose(loaded(x), net(x), rtol=1e-4, atol=1e-4)
    assert float(tf.reduce_min(loaded(x))) < 0  # logits, not probabilities
    with pytest.raises(FileNotFoundError, match="no weights file"):
        classify.load_to_defend("keras.applications.EfficientNetB0:/nowhere.h5")
    with pytest.raises(keras_ebm.ConfigError, match="needs weights"):
        classify.load_to_defend("keras.applications.EfficientNetB0")
    with pytest.raises(keras_ebm.ConfigError, match="no keras.applications.Nope"):
        classify.load_to_defend("keras.applications.Nope:x.h5")
