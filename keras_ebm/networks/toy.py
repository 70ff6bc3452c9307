"""Multilayer perceptrons for the 2-D toy densities (ebm-anatomy `ToyNet`)."""

import keras
from keras import layers


@keras.saving.register_keras_serializable(package="keras_ebm")
class MLP(keras.Model):
    """`x [B, in_dim] -> [B, out_dim]`, LeakyReLU(0.05) between layers.

    With `widths=(32, 64, 64, 64)` and `in_dim=2, out_dim=1` this is the
    ebm-anatomy ToyNet (10,593 parameters). `role` says which side is the
    state: an `energy` network takes states (`image_shape = (in_dim,)`), a
    `generator` makes them from a latent (`image_shape = (out_dim,)`,
    `latent_dim = in_dim`).
    """

    def __init__(self, in_dim, out_dim, widths=(32, 64, 64, 64), role="energy", **kw):
        super().__init__(**kw)
        if role not in ("energy", "generator"):
            raise ValueError(f"role must be 'energy' or 'generator', got {role!r}")
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.widths = list(widths)
        self.role = role
        self.hidden = [layers.Dense(w, name=f"f{i}") for i, w in enumerate(widths)]
        self.act = layers.LeakyReLU(negative_slope=0.05)
        self.out = layers.Dense(out_dim, name=f"f{len(widths)}")
        self(keras.ops.zeros((1, in_dim)))  # creates every weight

    @property
    def image_shape(self):
        """The shape of one state: what an energy takes, a generator makes."""
        return (self.in_dim,) if self.role == "energy" else (self.out_dim,)

    @property
    def latent_dim(self):
        if self.role != "generator":
            raise AttributeError("an energy MLP has no latent_dim")
        return self.in_dim

    def call(self, x, training=False):
        for layer in self.hidden:
            x = self.act(layer(x))
        return self.out(x)

    def get_config(self):
        config = super().get_config()
        config.update(
            in_dim=self.in_dim, out_dim=self.out_dim, widths=self.widths, role=self.role
        )
        return config
