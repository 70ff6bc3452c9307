"""Networks whose gradients (and Langevin laws) are known in closed form,
for math tests.

`LinearEnergy`: `E(x) = <w, x>` per sample, so `grad_x E = w` and
`grad_w mean E(x) = mean x`. `LinearGenerator`: `gen(z) = z A`, so
`grad_A sum ||x - z A||^2 / B = -2 z^T (x - z A) / B`.
"""

import keras
import numpy as np
from keras import ops


class LinearEnergy(keras.Model):
    def __init__(self, dim, w=None, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = (dim,)
        init = keras.initializers.Constant(np.zeros(dim) if w is None else w)
        self.w = self.add_weight(shape=(dim,), initializer=init, name="w")

    def call(self, x, training=False):
        return ops.sum(x * self.w, axis=1, keepdims=True)


class LinearGenerator(keras.Model):
    def __init__(self, latent_dim, dim, a=None, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = latent_dim
        self.image_shape = (dim,)
        init = keras.initializers.Constant(
            np.zeros((latent_dim, dim)) if a is None else a
        )
        self.a = self.add_weight(shape=(latent_dim, dim), initializer=init, name="a")

    def call(self, z, training=False):
        return ops.matmul(z, self.a)


class HalfSquare(keras.Model):
    """`E(x) = ||x||^2 / 2`: at T = 1 the law is N(0, I)."""

    def __init__(self, dim, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = (dim,)

    def call(self, x, training=False):
        return 0.5 * ops.sum(ops.square(x), axis=1, keepdims=True)


class ScaledSquare(keras.Model):
    """`E(x) = s ||x||^2 / 2` with s a weight: one Langevin step of size eps
    at temperature T is `x -> c x + eps n`, `c = 1 - s eps^2 / (2T)`."""

    def __init__(self, dim, s=1.0, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = (dim,)
        self.s = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(s), name="s"
        )

    def call(self, x, training=False):
        return 0.5 * self.s * ops.sum(ops.square(x), axis=1, keepdims=True)


def gaussian_law(k, eps, t, s=1.0):
    """`(c^K, v)`: K Langevin steps of size eps at temperature t on
    `s ||x||^2 / 2` take x0 to `N(c^K x0, v I)`, `c = 1 - s eps^2 / (2t)`,
    `v = eps^2 (1 - c^(2K)) / (1 - c^2)`."""
    c = 1 - s * eps**2 / (2 * t)
    return c**k, eps**2 * (1 - c ** (2 * k)) / (1 - c**2)


def assert_gaussian_rows(samples, mean, var, n_sigma=5):
    """The rows of `samples` are draws of N(mean, var I) (elementwise):
    their mean and variance within n_sigma sampling errors."""
    samples = np.asarray(samples)
    n = len(samples)
    gap = np.abs(samples.mean(0) - mean)
    assert np.all(gap < n_sigma * np.sqrt(var / n)), (samples.mean(0), mean)
    np.testing.assert_allclose(samples.var(0), var, rtol=n_sigma * np.sqrt(2 / n))
