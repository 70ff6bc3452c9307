"""BPDA+EOT attack: cleverhans' PGD when purification is off, the BPDA and
exact gradients in closed form, the monotone record, resume."""

import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from cleverhans.tf2.attacks.projected_gradient_descent import (
    projected_gradient_descent,
)

from keras_ebm.defense import attack, purify
from keras_ebm.models import EnergyModel
from tests.linear_nets import HalfSquare, LinearEnergy

D, C = 6, 3


def classifier(hidden=8, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((D,)),
            keras.layers.Dense(hidden, activation="tanh"),
            keras.layers.Dense(C),
        ]
    )


def defended(clf, num_steps, energy=None, step_size=0.2, temperature=1.0):
    model = EnergyModel(
        energy or LinearEnergy(D),
        num_steps=1,
        step_size=step_size,
        temperature=temperature,
    )
    return purify.DefendedClassifier(model, clf, num_steps)


def inputs(n=16, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-0.8, 0.8, size=(n, D)).astype("float32")
    return tf.constant(x), tf.constant(rng.integers(0, C, n), tf.int32)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_without_purification_equals_cleverhans_pgd(norm):
    clf = classifier()
    x, y = inputs()
    s = attack.AttackSettings(
        eps=0.3, step_size=0.05, num_steps=7, norm=norm, random_start=True
    )
    tf.random.set_seed(11)
    want = projected_gradient_descent(
        clf,
        x,
        s.eps,
        s.step_size,
        s.num_steps,
        attack.NORMS[norm],
        clip_min=-1.0,
        clip_max=1.0,
        y=y,
        rand_init=True,
    )
    tf.random.set_seed(11)
    eta0 = attack.random_start(x, s)
    run = attack.batch_attack(defended(clf, num_steps=0), s)
    record, correct, _, got = run(x, y, eta0, tf.constant([0, 0]))
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.abs(got - x).max() > 0.1  # the attack moved the inputs
    # Deterministic classifier: verification agrees with the attack
    # replicate, so row i + 1 = natural and every iterate up to i correct.
    natural = np.argmax(clf(x), -1) == y.numpy()
    want_record = np.logical_and.accumulate(
        np.concatenate([natural[None], correct.numpy()]), axis=0
    )
    np.testing.assert_array_equal(record, want_record)
    assert np.mean(record[-1]) < np.mean(record[0])


def margin_setup(num_steps, temperature=0.5, step_size=0.3):
    # A linear 2-class classifier and E = ||x||^2 / 2: one Langevin step is
    # x -> c x + noise with c = 1 - eps^2 / (2T), so the exact gradient
    # through m steps is c^m times the BPDA one, and the margin's gradient
    # with respect to the purified states is m_other - m_y whatever the
    # noise.
    clf = keras.Sequential([keras.Input((D,)), keras.layers.Dense(2, use_bias=False)])
    w = np.random.default_rng(2).normal(size=(D, 2)).astype("float32")
    clf.layers[0].kernel.assign(w)
    d = defended(
        clf, num_steps, HalfSquare(D), step_size=step_size, temperature=temperature
    )
    return d, w, 1 - step_size**2 / (2 * temperature)


def test_bpda_gradient_is_straight_through_and_grad_steps_exact():
    d, w, c = margin_setup(num_steps=5)
    x = tf.constant(np.random.default_rng(3).normal(size=(4, D)).astype("float32"))
    y = tf.constant([0, 1, 1, 0], tf.int32)
    h = 3
    direction = (w[:, 1] - w[:, 0])[None] * np.where(y.numpy() == 0, 1, -1)[:, None]
    for m in (0, 2, 5, 9):
        s = attack.AttackSettings(
            eps=0.1,
            step_size=0.1,
            num_steps=1,
            adv_replicates=h,
            loss="margin",
            grad_steps=m,
        )
        _, grad = attack.eot_logits_and_grad(d, x, y, s, tf.constant([4, 5]))
        # Each replica gets 1/H of the averaged logits' gradient; the sum
        # over replicas is the gradient at the average.
        np.testing.assert_allclose(grad, c ** min(m, 5) * direction, rtol=1e-4)


def test_verification_decides_and_breaks_stay_broken():
    class Split(purify.DefendedClassifier):
        """The attack replicates always misclassify; verification is correct
        for images whose first coordinate is positive."""

        def __init__(self):
            self.num_steps = 1
            self.classifier = keras.layers.Identity()

        def purify(self, x, seed, num_steps=None):
            return tf.zeros_like(x) + tf.one_hot(1, D)

        def logits(self, x, num_replicates, seed):
            good = tf.one_hot(tf.zeros(tf.shape(x)[0], tf.int32), D)
            return tf.where(x[:, :1] > 0, good, 1 - good)

    x = tf.constant(
        [[0.5] + [0.0] * (D - 1), [-0.5] + [0.0] * (D - 1), [0.05] + [0.0] * (D - 1)]
    )
    y = tf.constant([0, 0, 0], tf.int32)
    s = attack.AttackSettings(eps=0.2, step_size=0.1, num_steps=3, random_start=False)
    record, correct, broken, _ = attack.batch_attack(Split(), s)(
        x, y, tf.zeros_like(x), tf.constant([0, 0])
    )
    assert not correct.numpy().any()
    # Image 0 is verified correct at every iterate (it stays in the positive
    # half-space: the PGD moves are 0.1 per step from 0.5); image 1 is wrong
    # from the natural verification on, and stays wrong.
    np.testing.assert_array_equal(record[:, 0], True)
    np.testing.assert_array_equal(record[:, 1], False)
    np.testing.assert_array_equal(broken[1], x[1])
    # Image 2 holds at the natural image and the start, and breaks at the
    # first PGD iterate (coordinate 0 falls by eta, the others rise: the
    # cross-entropy gradient of the identity "classifier"); that iterate is
    # the one kept.
    np.testing.assert_array_equal(record[:, 2], [True, True, False, False, False])
    np.testing.assert_allclose(
        broken[2], x[2] + 0.1 * np.array([-1.0] + [1.0] * (D - 1))
    )


def test_evaluate_resumes_and_reports_intervals(tmp_path):
    clf = classifier()
    d = defended(clf, num_steps=2)
    x, y = inputs(n=10)
    s = attack.AttackSettings(
        eps=0.3, step_size=0.1, num_steps=3, adv_replicates=2, def_replicates=3
    )
    full = attack.evaluate(
        d, x.numpy(), y.numpy(), s, str(tmp_path / "a"), batch_size=4
    )
    # A kill after the first batch: the missing batches are recomputed, and
    # the result equals the uninterrupted run.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for name in ("batch_00001_4.npz", "batch_00002_2.npz", "partial.json"):
        (tmp_path / "b" / name).unlink()
    resumed = attack.evaluate(
        d, x.numpy(), y.numpy(), s, str(tmp_path / "b"), batch_size=4
    )
    assert (tmp_path / "b" / "batch_00002_2.npz").exists()
    assert resumed["per_image_robust"] == full["per_image_robust"]
    assert resumed["curve"] == full["curve"]
    lo, hi = full["robust_ci95"]
    assert lo <= full["robust_accuracy"] <= hi and hi - lo > 0.2  # n = 10
    with pytest.raises(ValueError, match="other settings"):
        attack.evaluate(d, x.numpy(), y.numpy(), s, str(tmp_path / "a"), batch_size=5)
    # A prefix of the images reuses the saved batches.
    head = attack.evaluate(
        d, x.numpy()[:8], y.numpy()[:8], s, str(tmp_path / "a"), batch_size=4
    )
    assert head["per_image_robust"] == full["per_image_robust"][:8]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="step_size <= eps"):
        attack.AttackSettings(eps=0.1, step_size=0.2, num_steps=1)
    with pytest.raises(ValueError, match="norm"):
        attack.AttackSettings(eps=0.1, step_size=0.1, num_steps=1, norm="l1")


def test_worst_case_counts_an_image_robust_only_if_every_attack_failed():
    from keras_ebm.defense import report

    runs = [
        dict(name="a", per_image_robust=[1, 1, 0, 1]),
        dict(name="b", per_image_robust=[1, 0, 1, 1]),
    ]
    worst = report.worst_case(runs)
    assert worst["robust_accuracy"] == 0.5 and worst["attacks"] == ["a", "b"]
    # An attack run on the first images only: the worst case over those.
    runs.append(dict(name="c", per_image_robust=[0, 1]))
    assert report.worst_case(runs)["robust_accuracy"] == 0.0
    assert report.worst_case(runs)["num_images"] == 2
