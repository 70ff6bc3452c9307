"""SNGAN-style energy networks and generators (ebm-life-cycle `nets.py`).

The EBMs are the Mimicry SNGAN discriminator with no spectral norm, global
average pooling and a bias-free `Dense(1)`; the generators are the Mimicry
ResNet generators. Layer names follow the reference TF checkpoints
(`conv_1/conv_1/kernel`, `block2/bn_1/gamma`, `lin_1/kernel`, ...) so that
its weights can be assigned by key.
"""

import keras
from keras import layers, ops


def _conv(channels, kernel, name):
    return layers.Conv2D(channels, kernel, padding="same", name=name)


class EBMBlock(layers.Layer):
    """Residual discriminator block (Mimicry `DBlock` / `DBlockOptimized`).

    Stem (`stem=True`): `avgpool(conv_2(relu(conv_1(x)))) + sc(avgpool(x))`.
    Block: `pool(conv_2(relu(conv_1(relu(x))))) + pool(sc(x))`, where `pool`
    is 2x2 average pooling when `down`, and `sc` a 1x1 convolution present
    when the channels change or `down`. `activation` replaces relu.
    """

    def __init__(
        self, in_channels, out_channels, down, stem=False, activation="relu", **kwargs
    ):
        super().__init__(**kwargs)
        self.down = down
        self.stem = stem
        self.act = keras.activations.get(activation)
        self.conv_1 = _conv(out_channels, 3, "conv_1")
        self.conv_2 = _conv(out_channels, 3, "conv_2")
        self.sc = None
        if stem or down or in_channels != out_channels:
            self.sc = layers.Conv2D(out_channels, 1, name="sc")
        self.pool = layers.AveragePooling2D(pool_size=2)

    def call(self, x):
        h = x if self.stem else self.act(x)
        h = self.conv_2(self.act(self.conv_1(h)))
        if self.down:
            h = self.pool(h)
        if self.stem:
            return h + self.sc(self.pool(x))
        y = x if self.sc is None else self.sc(x)
        return h + (self.pool(y) if self.down else y)


@keras.saving.register_keras_serializable(package="keras_ebm")
class SNGANEnergyNet(keras.Model):
    """Residual energy network `E: [B, H, W, C] -> [B, 1]`.

    Args:
        channels: output channels of the stem, then of each block.
        down: for each block after the stem, whether it halves the size.
        image_shape: `(H, W, C)`.
        activation: relu (the reference), or any Keras activation. With relu
            the energy is piecewise linear in x, its Hessian zero almost
            everywhere: each noise path's Langevin step has the identity as
            its Jacobian, so the pathwise gradient through purification is
            the straight-through (BPDA) one, while the gradient of the
            expected (noise-averaged) loss is not (`defense.gradients`). A
            smooth activation (e.g. silu) makes even the pathwise ones differ.
    """

    def __init__(self, channels, down, image_shape, activation="relu", **kwargs):
        super().__init__(**kwargs)
        if len(down) != len(channels) - 1:
            raise ValueError("`down` needs one entry per block after the stem")
        self.channels = list(channels)
        self.down = list(down)
        self.image_shape = tuple(image_shape)
        self.activation = activation
        self.act = keras.activations.get(activation)
        self.blocks = [
            EBMBlock(
                image_shape[-1],
                channels[0],
                True,
                stem=True,
                activation=activation,
                name="conv_1",
            )
        ]
        for i, (c_in, c_out, d) in enumerate(
            zip(channels[:-1], channels[1:], down, strict=True)
        ):
            self.blocks.append(
                EBMBlock(c_in, c_out, d, activation=activation, name=f"block{i + 2}")
            )
        n = len(channels) + 1
        self.head = layers.Dense(1, use_bias=False, name=f"lin_{n}")
        self(ops.zeros((1,) + self.image_shape))  # creates every weight

    def call(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(ops.mean(self.act(x), axis=(1, 2)))

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            down=self.down,
            image_shape=self.image_shape,
            activation=self.activation,
        )
        return config


class GenBlock(layers.Layer):
    """Upsampling residual block (Mimicry `GBlock`).

    `h = conv_2(relu(bn_2(conv_1(up(relu(bn_1(x)))))))`, output
    `h + sc(up(x))`, with bilinear 2x upsampling.
    """

    def __init__(self, out_channels, bn_epsilon, synchronized, **kwargs):
        super().__init__(**kwargs)

        def bn(name):
            return layers.BatchNormalization(
                epsilon=bn_epsilon, synchronized=synchronized, name=name
            )

        self.bn_1, self.bn_2 = bn("bn_1"), bn("bn_2")
        self.conv_1 = _conv(out_channels, 3, "conv_1")
        self.conv_2 = _conv(out_channels, 3, "conv_2")
        self.sc = layers.Conv2D(out_channels, 1, name="sc")
        # float32 under any policy: XLA's bilinear-resize gradient in a
        # bfloat16 graph yields float32 and the compile fails ("mixed
        # precision is disallowed"); the resize has no weights and is cheap.
        self.up = layers.UpSampling2D(interpolation="bilinear", dtype="float32")

    def call(self, x, training=False):
        h = self.up(ops.relu(self.bn_1(x, training=training)))
        h = ops.relu(self.bn_2(self.conv_1(h), training=training))
        return self.conv_2(h) + self.sc(self.up(x))


@keras.saving.register_keras_serializable(package="keras_ebm")
class SNGANGenerator(keras.Model):
    """ResNet generator `g: z [B, latent_dim] -> [B, H, W, C]` in [-1, 1].

    `lin_1` maps z to a `4 x 4 x base_channels` map (reshaped channel-first,
    then transposed, as the PyTorch original), each block doubles the size.

    Args:
        base_channels: channels of the 4x4 map (Mimicry ngf).
        channels: output channels of each block.
        latent_dim: width of z (128 in the reference).
        out_channels: image channels.
        bn_epsilon: batch-norm epsilon; 1e-3 matches the reference TF ports
            and their checkpoints, 1e-5 the PyTorch originals.
        synchronized: cross-replica batch norm, as the reference's
            `SyncBatchNormalization`.
    """

    def __init__(
        self,
        base_channels,
        channels,
        latent_dim=128,
        out_channels=3,
        bn_epsilon=1e-3,
        synchronized=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.base_channels = base_channels
        self.channels = list(channels)
        self.latent_dim = latent_dim
        self.out_channels = out_channels
        self.bn_epsilon = bn_epsilon
        self.synchronized = synchronized
        self.lin_1 = layers.Dense(4 * 4 * base_channels, name="lin_1")
        self.blocks = [
            GenBlock(c, bn_epsilon, synchronized, name=f"block{i + 2}")
            for i, c in enumerate(channels)
        ]
        n = len(channels) + 2
        self.bn_out = layers.BatchNormalization(
            epsilon=bn_epsilon, synchronized=synchronized, name=f"bn_{n}"
        )
        self.conv_out = _conv(out_channels, 3, f"conv_{n}")
        self(ops.zeros((1, latent_dim)))  # creates every weight

    @property
    def image_shape(self):
        size = 4 * 2 ** len(self.channels)
        return (size, size, self.out_channels)

    def call(self, z, training=False):
        x = ops.reshape(self.lin_1(z), (-1, self.base_channels, 4, 4))
        x = ops.transpose(x, (0, 2, 3, 1))
        for block in self.blocks:
            x = block(x, training=training)
        x = ops.relu(self.bn_out(x, training=training))
        return ops.tanh(self.conv_out(x))

    def get_config(self):
        config = super().get_config()
        config.update(
            base_channels=self.base_channels,
            channels=self.channels,
            latent_dim=self.latent_dim,
            out_channels=self.out_channels,
            bn_epsilon=self.bn_epsilon,
            synchronized=self.synchronized,
        )
        return config
