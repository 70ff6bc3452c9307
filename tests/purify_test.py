"""Purification and the defended classifier against closed forms, and its
SavedModel loaded without keras_ebm.

With `E(x) = ||x||^2 / 2` at temperature T, one Langevin step of size eps is
`x -> c x + eps n` with `c = 1 - eps^2 / (2T)`, so K steps from x0 give
`N(c^K x0, v I)`, `v = eps^2 (1 - c^(2K)) / (1 - c^2)`: the mean reveals K,
eps and T, the variance eps and K. A linear classifier `M` turns that into
logits `N(c^K x0 M, v M^T M)`, and an average over H replicates divides the
variance by H.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ebm.configs import midrun
from keras_ebm.defense import purify, report
from keras_ebm.models import EnergyModel
from tests.linear_nets import HalfSquare, assert_gaussian_rows, gaussian_law
from tests.standalone import run_without_keras_ebm

D, C = 3, 4
# The model trains at other values than it purifies with, so that a
# purification falling back on them is visible.
TRAIN_EPS, TRAIN_T = 0.05, 2.0


def linear_classifier(seed=0):
    m = np.random.default_rng(seed).normal(size=(D, C)).astype("float32")
    clf = keras.Sequential([keras.Input((D,)), keras.layers.Dense(C, use_bias=False)])
    clf.layers[0].kernel.assign(m)
    return clf, m


def model():
    m = EnergyModel(
        HalfSquare(D), num_steps=1, step_size=TRAIN_EPS, temperature=TRAIN_T
    )
    m.compile(keras.optimizers.SGD(0.1))
    return m


@pytest.mark.parametrize("k", [9, 10])
def test_purification_is_k_def_steps_at_its_step_size_and_temperature(k):
    clf, _ = linear_classifier()
    d = purify.DefendedClassifier(model(), clf, k, step_size=0.3, temperature=0.5)
    x0 = np.array([2.0, -1.0, 0.5], "float32")
    moved = d.purify(tf.tile(x0[None], (6000, 1)), tf.constant([3, 4])).numpy()
    ck, v = gaussian_law(k, 0.3, 0.5)
    assert_gaussian_rows(moved, ck * x0, v)


def test_purification_settings_come_from_the_config():
    c = midrun.get_config("smoke")
    clf, _ = linear_classifier()
    c.defense.update(step_size=0.0, temperature=0.0)
    d = report.defended_classifier(c, model(), clf, 6)
    x0 = np.array([2.0, -1.0, 0.5], "float32")
    moved = d.purify(tf.tile(x0[None], (6000, 1)), tf.constant([3, 4])).numpy()
    ck, v = gaussian_law(6, TRAIN_EPS, TRAIN_T)
    assert_gaussian_rows(moved, ck * x0, v)
    c.defense.update(step_size=0.3, temperature=0.5)
    d = report.defended_classifier(c, model(), clf, 6)
    moved = d.purify(tf.tile(x0[None], (6000, 1)), tf.constant([3, 4])).numpy()
    ck, v = gaussian_law(6, 0.3, 0.5)
    assert_gaussian_rows(moved, ck * x0, v)


def test_logits_average_the_replicates_of_each_image():
    # Two images far apart (a layout mix-up would average across them), each
    # repeated 3000 times; every row of `logits` averages H = 8 purified
    # replicates of its own image: mean c^K x0 M, variance v (M^T M)_cc / 8.
    clf, m = linear_classifier()
    k, h = 5, 8
    d = purify.DefendedClassifier(model(), clf, k, step_size=0.3, temperature=0.5)
    x0 = np.array([[10.0, 0, 0], [0, -10.0, 0]], "float32")
    x = np.repeat(x0, 3000, axis=0)
    logits = d.logits(tf.constant(x), h, tf.constant([1, 2])).numpy()
    ck, v = gaussian_law(k, 0.3, 0.5)
    for i in range(2):
        rows = logits[i * 3000 : (i + 1) * 3000]
        assert_gaussian_rows(rows, ck * x0[i] @ m, v * np.sum(m**2, 0) / h)
    # Zero steps: the classifier's own logits, exactly.
    d0 = purify.DefendedClassifier(model(), clf, 0)
    np.testing.assert_allclose(d0.logits(tf.constant(x0), 3, [1, 2]), x0 @ m, rtol=1e-6)


def test_digest_changes_with_every_weight_and_setting():
    clf, _ = linear_classifier()
    base = purify.DefendedClassifier(model(), clf, 5)
    other_clf, _ = linear_classifier(seed=1)
    digests = {
        base.digest(),
        purify.DefendedClassifier(model(), other_clf, 5).digest(),
        purify.DefendedClassifier(model(), clf, 5, step_size=0.3).digest(),
        purify.DefendedClassifier(model(), clf, 5, temperature=0.3).digest(),
    }
    assert len(digests) == 4
    assert purify.DefendedClassifier(model(), clf, 5).digest() == base.digest()


@pytest.mark.slow
def test_defended_savedmodel_without_keras_ebm(tmp_path):
    clf, m = linear_classifier()
    k, eps, t, h = 6, 0.3, 0.5, 4
    d = purify.DefendedClassifier(model(), clf, k, step_size=eps, temperature=t)
    path = purify.export_defended(d, str(tmp_path / "export_defended"))
    x = np.random.default_rng(1).normal(size=(3, D)).astype("float32")
    x0 = np.array([2.0, -1.0, 0.5], "float32")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "x0.npy", np.tile(x0[None], (4000, 1)))
    out = run_without_keras_ebm(
        f"""
        r = tf.saved_model.load({path!r})
        x = tf.constant(np.load("x.npy"))
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = r.classify(x)
            loss = tf.reduce_sum(logits[:, 0])
        grad = tape.gradient(loss, x)
        x0 = tf.constant(np.load("x0.npy"))
        out = dict(
            classify=logits.numpy().tolist(),
            grad=grad.numpy().tolist(),
            purify=r.purify(x0).numpy().tolist(),
            predict=r.predict(x0, tf.constant({h})).numpy().tolist(),
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
    ck, v = gaussian_law(k, eps, t)
    assert_gaussian_rows(np.array(out["purify"]), ck * x0, v)
    assert_gaussian_rows(np.array(out["predict"]), ck * x0 @ m, v * np.sum(m**2, 0) / h)
    assert f"classify expects [B, {D}]" in out["bad"]
