"""Purification and the defended classifier; its SavedModel loaded without
keras_ebm."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ebm.defense import purify
from keras_ebm.models import EnergyModel
from tests.linear_nets import LinearEnergy
from tests.standalone import run_without_keras_ebm

D, C = 3, 4


def defended(num_steps, w=None, step_size=0.2):
    model = EnergyModel(LinearEnergy(D, w=w), num_steps=1, step_size=step_size)
    model.compile(keras.optimizers.SGD(0.1))
    m = np.random.default_rng(0).normal(size=(D, C)).astype("float32")
    classifier = keras.Sequential(
        [keras.Input((D,)), keras.layers.Dense(C, use_bias=False)]
    )
    classifier.layers[0].kernel.assign(m)
    return purify.DefendedClassifier(model, classifier, num_steps), m


def test_replicates_are_averaged_per_image():
    # A linear classifier: the averaged logits are f of the mean purified
    # replicate of the same image. Images far apart make a layout mix-up
    # (averaging replicates of different images) visible.
    d, m = defended(num_steps=3)
    x = tf.constant([[10.0, 0, 0], [0, -10.0, 0]])
    seed = tf.constant([1, 2])
    logits = d.logits(x, 5, seed)
    purified = d.purify(tf.repeat(x, 5, axis=0), seed).numpy()
    want = purified.reshape(2, 5, D).mean(1) @ m
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
    # Zero steps: no purification, the classifier's own logits.
    d0, m0 = defended(num_steps=0)
    np.testing.assert_allclose(d0.logits(x, 3, seed), x.numpy() @ m0, rtol=1e-6)


def test_purification_runs_k_def_steps_at_its_step_size():
    d, _ = defended(num_steps=9, w=np.zeros(D), step_size=0.15)
    x = tf.zeros((4000, D))
    moved = d.purify(x, tf.constant([3, 4])).numpy()
    np.testing.assert_allclose(moved.var(0), [9 * 0.15**2] * D, rtol=0.08)


@pytest.mark.slow
def test_defended_savedmodel_without_keras_ebm(tmp_path):
    d, m = defended(num_steps=2)
    path = purify.export_defended(d, str(tmp_path / "export_defended"))
    x = np.random.default_rng(1).normal(size=(3, D)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    out = run_without_keras_ebm(
        f"""
        r = tf.saved_model.load({path!r})
        x = tf.constant(np.load("x.npy"))
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = r.classify(x)
            loss = tf.reduce_sum(logits[:, 0])
        grad = tape.gradient(loss, x)
        out = dict(
            classify=logits.numpy().tolist(),
            grad=grad.numpy().tolist(),
            purify=list(r.purify(x).shape),
            predict=list(r.predict(x, tf.constant(4)).shape),
        )
        try:
            r.classify(tf.zeros((2, {D + 1})))
            out["bad"] = "accepted"
        except tf.errors.InvalidArgumentError as e:
            out["bad"] = str(e)
        print(json.dumps(out))
    """,
        tmp_path,
    )
    np.testing.assert_allclose(out["classify"], x @ m, rtol=1e-5)
    # d logits[:, 0] / dx = m[:, 0] for every image: differentiable in x.
    np.testing.assert_allclose(out["grad"], np.tile(m[:, 0], (3, 1)), rtol=1e-5)
    assert out["purify"] == [3, D] and out["predict"] == [3, C]
    assert f"classify expects [B, {D}]" in out["bad"]
