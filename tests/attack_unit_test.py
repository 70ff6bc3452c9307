"""Attack unit tests (Zimmermann, Brendel, Tramer & Carlini, NeurIPS 2022):
a purifier and classifier pair in which an adversarial example inside the
radius exists by construction; an attack that misses it is too weak.

The purifier contracts x1: `E(x) = a |x1|`, written as a ReLU network, so
every noise path's purified map is piecewise a translation while the
expected purified x1 forgets where it started (K_def steps of drift 0.1
pull any start within the radius to the well; the noise spreads it). x2 is
left to the noise. From x0 = (-0.5, -0.5), l2 radius 1.2, no random start:

- **x2 pair**: the classifier reads x2 (margin `x2 - 0.2`): moving x2 by
  1.2 breaks it, and every gradient points along x2. Every attack finds it.
- **contraction pair**: the classifier reads `10 x1 + x2 - 0.2`. Its own
  gradient points mostly along x1, which purification undoes; the example
  (x2 moved to 0.7, margin ~ +0.5 after purification) needs the expected
  gradient, which points along x2. BPDA - and the exact pathwise gradient,
  which on a ReLU energy is BPDA's - spend the radius on x1 (x2 reaches
  only -0.38, margin ~ -0.58) and fail: shattered gradients. The surrogate
  (the smooth twin's Jacobians see the contraction) and SPSA (it sees only
  the expected loss) find the example.
"""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ebm.defense import attack, purify
from keras_ebm.models import EnergyModel

K_DEF = 30


class Well(keras.Model):
    """`E(x) = a (relu(x1) + relu(-x1)) = a |x1|`, on states `[B, 2]`."""

    def __init__(self, a=20.0, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = (2,)
        self.a = a
        self.fold = keras.layers.Dense(2, activation="relu", use_bias=False)
        self.fold.build((None, 2))
        self.fold.kernel.assign(np.array([[1.0, -1.0], [0.0, 0.0]], "float32"))

    def call(self, x, training=False):
        return self.a * keras.ops.sum(self.fold(x), axis=1, keepdims=True)


def linear_classifier(w1, w2, bias):
    """Two classes; class 1's logit minus class 0's is `w1 x1 + w2 x2 - bias`."""
    clf = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    clf.layers[0].kernel.assign(np.array([[0.0, w1], [0.0, w2]], "float32"))
    clf.layers[0].bias.assign(np.array([0.0, -bias], "float32"))
    return clf


def well_defense(w1):
    model = EnergyModel(Well(), num_steps=1, step_size=0.1, temperature=1.0)
    return purify.DefendedClassifier(model, linear_classifier(w1, 1.0, 0.2), K_DEF)


BASE = attack.AttackSettings(
    eps=1.2,
    step_size=0.3,
    num_steps=20,
    norm="l2",
    adv_replicates=16,
    def_replicates=64,
    random_start=False,
)
ATTACKS = {
    "bpda": BASE,
    "exact": dataclasses.replace(BASE, grad_steps=K_DEF),
    "surrogate": dataclasses.replace(BASE, grad_steps=K_DEF, surrogate_beta=10.0),
    "spsa": dataclasses.replace(BASE, spsa_samples=8, spsa_delta=0.1),
}
X0 = tf.constant([[-0.5, -0.5]] * 8)
Y = tf.zeros(8, tf.int32)


def robust_accuracy(defended, settings):
    result = attack.batch_attack(defended, settings)(
        X0, Y, tf.zeros_like(X0), tf.constant([0, 1])
    )
    assert result.record.numpy()[0].all()  # every natural point defended
    assert int(result.nonfinite) == 0
    moved = np.linalg.norm(result.x_adv.numpy() - X0.numpy(), axis=1)
    assert np.all(moved <= BASE.eps + 1e-5)  # inside the radius
    return float(result.record.numpy()[-1].mean()), result.x_adv.numpy()


@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_attack_finds_the_example_the_gradient_points_to(name):
    robust, x_adv = robust_accuracy(well_defense(w1=0.0), ATTACKS[name])
    assert robust == 0.0
    assert np.all(x_adv[:, 1] > 0.5)  # found along x2


@pytest.mark.parametrize("name", ["surrogate", "spsa"])
def test_surrogate_and_spsa_find_the_example_behind_the_contraction(name):
    robust, x_adv = robust_accuracy(well_defense(w1=10.0), ATTACKS[name])
    assert robust == 0.0
    assert np.all(x_adv[:, 1] > 0.5)


@pytest.mark.parametrize("name", ["bpda", "exact"])
def test_bpda_misses_the_example_behind_the_contraction(name):
    # The expected failure: on a ReLU energy the pathwise gradient (BPDA's,
    # and the exact one, equal to it) follows the classifier's own
    # gradient into the contracted direction. An attack that passes this
    # test is too weak for Langevin purification by construction.
    robust, x_adv = robust_accuracy(well_defense(w1=10.0), ATTACKS[name])
    assert robust == 1.0
    assert np.all(x_adv[:, 1] < -0.3)  # the radius went into x1
