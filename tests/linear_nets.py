"""Networks whose gradients are known in closed form, for math tests.

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
