"""Multilayer perceptrons for the 2-D toy densities (ebm-anatomy `ToyNet`)."""

import keras
from keras import layers


@keras.saving.register_keras_serializable(package="keras_ebm")
class MLP(keras.Model):
    """`x [B, in_dim] -> [B, out_dim]`, LeakyReLU(0.05) between layers.

    With `widths=(32, 64, 64, 64)` and `in_dim=2, out_dim=1` this is the
    ebm-anatomy ToyNet (10,593 parameters); with `out_activation="linear"`
    and `out_dim=2` it serves as a toy generator from a latent vector.
    """

    def __init__(self, in_dim, out_dim, widths=(32, 64, 64, 64), **kwargs):
        super().__init__(**kwargs)
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.widths = list(widths)
        self.hidden = [layers.Dense(w, name=f"f{i}") for i, w in enumerate(widths)]
        self.act = layers.LeakyReLU(negative_slope=0.05)
        self.out = layers.Dense(out_dim, name=f"f{len(widths)}")
        self(keras.ops.zeros((1, in_dim)))  # creates every weight

    @property
    def image_shape(self):
        return (self.out_dim,)

    @property
    def latent_dim(self):
        """Input width, when the MLP serves as a generator."""
        return self.in_dim

    def call(self, x, training=False):
        for layer in self.hidden:
            x = self.act(layer(x))
        return self.out(x)

    def get_config(self):
        config = super().get_config()
        config.update(in_dim=self.in_dim, out_dim=self.out_dim, widths=self.widths)
        return config
