"""The Langevin core against closed forms, compile modes and its contract."""

import numpy as np
import pytest
import tensorflow as tf
from absl.testing import parameterized

from keras_ebm.sampling import langevin, potential


def half_square(x):
    """E(x) = ||x||^2 / 2 per sample: the stationary law at T=1 is N(0, I)."""
    return 0.5 * tf.reduce_sum(tf.square(x), axis=1)


def chains(u, x0, num_steps, step_size, seed):
    """Compiled Langevin from `x0`: `(states as NumPy, stats)`."""
    run = tf.function(
        lambda x: langevin(
            u, x, num_steps=num_steps, step_size=step_size, seed=tf.constant(seed)
        )
    )
    x, stats = run(x0)
    return x.numpy(), stats


class LangevinTest(tf.test.TestCase, parameterized.TestCase):
    def test_gaussian_stationary_law(self):
        # 4096 chains x 2 dims from x = 3: mean 0, variance 1 (keras3-notes §8).
        u = potential(half_square, temperature=1.0)
        x, stats = chains(u, tf.fill((4096, 2), 3.0), 2000, 0.1, [7, 7])
        # ULA at step eps has variance 1 / (1 - eps^2/4) ~ 1.0025: within tol.
        self.assertAllClose(x.mean(0), [0.0, 0.0], atol=0.06)
        self.assertAllClose(x.var(0), [1.0, 1.0], atol=0.08)
        # Drift at the end: E||0.005 x|| over 2 dims ~ 0.005 * sqrt(pi/2).
        self.assertAllClose(stats.last_drift_norm, 0.005 * 1.2533, rtol=0.1)

    def test_temperature_scales_the_law(self):
        # U = E/T with E = ||x||^2/2 gives N(0, T I).
        u = potential(half_square, temperature=0.25)
        x, _ = chains(u, tf.zeros((4096, 2)), 1500, 0.05, [1, 2])
        self.assertAllClose(x.var(0), [0.25, 0.25], rtol=0.1)

    def test_tau_term_is_not_tempered(self):
        # With a zero network energy, only ||x||^2/(2 tau^2) remains: N(0, tau^2)
        # whatever T is (the reference divides only network terms by T).
        zero = lambda x: tf.zeros(tf.shape(x)[:1])
        u = potential(zero, temperature=1e-4, tau=0.5)
        x, _ = chains(u, tf.zeros((4096, 2)), 1500, 0.1, [3, 4])
        self.assertAllClose(x.var(0), [0.25, 0.25], rtol=0.1)

    def test_prior_and_gaussian_terms_with_their_own_temperatures(self):
        # E(x) = <a, x>, E_prior(x) = ||x||^4 / 4: distinct functions, so a
        # swapped temperature or a missing term changes the value and the
        # gradient. U = E/T + E_prior/T_prior + ||x||^2/(2 tau^2).
        a = tf.constant([1.0, -3.0])
        energy = lambda x: tf.reduce_sum(x * a, axis=1, keepdims=True)
        prior = lambda x: tf.reduce_sum(tf.square(x), axis=1) ** 2 / 4
        t, t_prior, tau = 0.5, 4.0, 0.7
        u = potential(
            energy, temperature=t, prior_fn=prior, prior_temperature=t_prior, tau=tau
        )
        x0 = np.array([[1.0, -2.0], [0.5, 0.25]], "float32")
        sq = (x0**2).sum(1)
        expected = (x0 @ a.numpy()) / t + sq**2 / 4 / t_prior + sq / (2 * tau**2)
        self.assertAllClose(u(tf.constant(x0)), expected, rtol=1e-6)
        # One noiseless step moves by -(eps^2/2) grad U.
        grad = a.numpy() / t + sq[:, None] * x0 / t_prior + x0 / tau**2
        x1, _ = langevin(u, x0, num_steps=1, step_size=0.1, noise=tf.zeros((1, 2, 2)))
        self.assertAllClose(x1, x0 - 0.005 * grad, rtol=1e-5)

    def test_injected_noise_matches_hand_update(self):
        x0 = tf.constant([[1.0, 2.0], [-1.0, 0.5]])
        noise = tf.random.normal((3, 2, 2), seed=1)
        u = potential(half_square, temperature=0.5)
        x, stats = langevin(u, x0, num_steps=3, step_size=0.2, noise=noise)
        expected = x0.numpy()
        for k in range(3):
            expected = expected - 0.02 * expected / 0.5 + 0.2 * noise[k].numpy()
        self.assertAllClose(x, expected, atol=1e-6)

    @pytest.mark.slow
    def test_xla_equals_graph_with_injected_noise(self):
        from keras_ebm import networks

        net = networks.build("ebm_small", image_shape=(8, 8, 1), width=8)
        u = potential(lambda x: net(x, training=False), temperature=1e-2)
        x0 = tf.random.uniform((4, 8, 8, 1), -1, 1, seed=2)
        noise = tf.random.normal((5, 4, 8, 8, 1), seed=3)

        def run(x, noise):
            return langevin(u, x, num_steps=5, step_size=0.05, noise=noise)

        graph = tf.function(run, jit_compile=False)(x0, noise)
        xla = tf.function(run, jit_compile=True)(x0, noise)
        self.assertAllClose(graph[0], xla[0], atol=1e-5)
        self.assertAllClose(graph[1].drift_norm, xla[1].drift_norm, rtol=1e-4)

    def test_drift_clip_is_per_sample(self):
        # Sample 0's drift (norm 0.2) is under the cap of 0.5 and must be
        # untouched; sample 1's (norm 2.5) is over it and must be scaled to
        # exactly 0.5 in its own direction. A whole-batch rescale fails both.
        g = np.array([[0.0, 40.0, 0.0, 0.0], [3.0, 0.0, 4.0, 0.0]], "float32") * 1e2
        g[0] /= 1e2  # grad 40 -> drift (0.01/2)*40 = 0.2
        linear = lambda x: tf.reduce_sum(x * g, axis=1)
        x, stats = langevin(
            linear,
            tf.zeros((2, 4)),
            num_steps=1,
            step_size=0.1,
            noise=tf.zeros((1, 2, 4)),
            max_drift_norm=0.5,
        )
        drift = 0.005 * g
        self.assertAllClose(x[0], -drift[0], rtol=1e-6)
        self.assertAllClose(x[1], -0.5 * drift[1] / np.linalg.norm(drift[1]), rtol=1e-5)
        self.assertAllClose(stats.last_drift_norm, (0.2 + 0.5) / 2, rtol=1e-5)
        # Without the clip both move by their full drift.
        free, _ = langevin(
            linear,
            tf.zeros((2, 4)),
            num_steps=1,
            step_size=0.1,
            noise=tf.zeros((1, 2, 4)),
        )
        self.assertAllClose(free, -drift, rtol=1e-6)

    def test_same_seed_same_chain(self):
        u = potential(half_square, temperature=0.5)
        x0 = tf.random.stateless_normal((16, 3), [0, 1])
        a, _ = chains(u, x0, 20, 0.1, [5, 6])
        b, _ = chains(u, x0, 20, 0.1, [5, 6])
        c, _ = chains(u, x0, 20, 0.1, [5, 7])
        self.assertAllEqual(a, b)
        self.assertNotAllClose(a, c)
        # A seed draws step k's noise from fold_in(seed, k): the chain equals
        # the same chain with that noise injected.
        noise = tf.stack(
            [
                tf.random.stateless_normal(
                    (16, 3), tf.random.experimental.stateless_fold_in([5, 6], k)
                )
                for k in range(20)
            ]
        )
        injected, _ = langevin(u, x0, num_steps=20, step_size=0.1, noise=noise)
        self.assertAllClose(a, injected, atol=1e-5)

    def test_bad_arguments(self):
        u = potential(half_square)
        x = tf.zeros((2, 2))
        with self.assertRaisesRegex(ValueError, "exactly one"):
            langevin(u, x, num_steps=1, step_size=0.1)
        with self.assertRaisesRegex(ValueError, "step_size"):
            langevin(u, x, num_steps=1, step_size=-0.1, seed=tf.constant([0, 0]))
        with self.assertRaisesRegex(ValueError, "temperatures"):
            potential(half_square, temperature=0.0)
