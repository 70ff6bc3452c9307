"""Sampling, evaluation and export use the settings they are given.

A linear energy `E(x) = <w, x>` moves every chain by the same drift
`-K (eps^2 / 2) w / T` while the noise adds variance `K eps^2` per
coordinate, so the mean and variance of the displacement reveal which K,
step size and temperature a sampler really used.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ebm import export as export_lib
from keras_ebm.models import EnergyModel
from tests.linear_nets import LinearEnergy, LinearGenerator

D, N = 3, 4096
W = np.array([10.0, -20.0, 5.0])
TRAIN = dict(num_steps=3, step_size=0.2, temperature=0.5)


def model_with(w=W):
    model = EnergyModel(
        LinearEnergy(D, w=w),
        generator=LinearGenerator(2, D),  # A = 0: gen(z) = 0
        init_source="generator",
        train_generator=False,
        **TRAIN,
    )
    model.compile(keras.optimizers.SGD(0.1))
    return model


def assert_moved(x0, x, num_steps, step_size, temperature, w=W):
    """Displacement mean and variance are those of (K, eps, T)."""
    d = np.asarray(x) - np.asarray(x0)
    drift = -num_steps * step_size**2 / 2 * w / temperature
    noise_std = step_size * np.sqrt(num_steps)
    np.testing.assert_allclose(d.mean(0), drift, atol=4 * noise_std / np.sqrt(len(d)))
    np.testing.assert_allclose(d.var(0), noise_std**2 * np.ones(D), rtol=0.1)


def test_sample_defaults_and_overrides_reach_the_potential():
    model = model_with()
    x0 = np.zeros((N, D), "float32")
    x, _ = model.sample(x0, seed=[0, 1])
    assert_moved(x0, x, **TRAIN)
    x, _ = model.sample(x0, num_steps=5, seed=[0, 2], step_size=0.3, temperature=2.0)
    assert_moved(x0, x, 5, 0.3, 2.0)
    # joint_temperature divides the network term.
    x, _ = model.sample(
        x0, num_steps=5, seed=[0, 3], temperature=2.0, joint_temperature=4.0
    )
    assert_moved(x0, x, 5, TRAIN["step_size"], 8.0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("export") / "sm")
    export_lib.export(
        model_with(),
        path,
        purify_steps=7,
        purify_step_size=0.1,
        eval_steps=4,
        eval_step_size=0.3,
        eval_temperature=2.0,
    )
    return tf.saved_model.load(path)


def test_export_sample_uses_the_trained_settings(exported):
    x0 = np.zeros((N, D), "float32")
    x = exported.sample(tf.constant(x0), tf.constant(6))
    assert_moved(x0, x, 6, TRAIN["step_size"], TRAIN["temperature"])


def test_export_purify_runs_its_steps_at_its_step_size(tmp_path):
    # On a flat energy purification is pure noise: variance K_def eps_def^2.
    path = str(tmp_path / "flat")
    export_lib.export(
        model_with(w=np.zeros(D)),
        path,
        purify_steps=9,
        purify_step_size=0.15,
        eval_steps=1,
        eval_step_size=0.1,
        eval_temperature=1.0,
    )
    r = tf.saved_model.load(path)
    x0 = np.zeros((N, D), "float32")
    assert_moved(x0, r.purify(tf.constant(x0)), 9, 0.15, 1.0, w=np.zeros(D))


def test_export_generate_uses_the_evaluation_settings(exported):
    x = exported.generate(tf.constant(N))  # from gen(z) = 0
    assert_moved(np.zeros((N, D)), x, 4, 0.3, 2.0)


def test_potential_terms_and_joint_temperature():
    # U_j(x) = E/(T j) + E_prior/(T_prior j) + ||x||^2/(2 tau^2): the joint
    # temperature divides both network terms and never the Gaussian term.
    w_prior = np.array([0.5, 1.0, -2.0])
    model = EnergyModel(
        LinearEnergy(D, w=W),
        prior_net=LinearEnergy(D, w=w_prior),
        prior_temperature=3.0,
        tau=0.7,
        **TRAIN,
    )
    x = np.random.default_rng(0).normal(size=(5, D)).astype("float32")
    t, j = TRAIN["temperature"], 1.25
    want = x @ W / (t * j) + x @ w_prior / (3.0 * j) + (x**2).sum(1) / (2 * 0.49)
    np.testing.assert_allclose(model.potential_at(t, j)(x), want, rtol=1e-5)
    np.testing.assert_allclose(
        model.potential(x),
        x @ W / t + x @ w_prior / 3.0 + (x**2).sum(1) / 0.98,
        rtol=1e-5,
    )
