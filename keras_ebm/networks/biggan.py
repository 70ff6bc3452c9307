"""BigGAN-deep networks of the ImageNet experiments (ebm-life-cycle `nets.py`).

- `BigGANEnergyNet`: the reference's `EBMBigGAN`, a BigGAN-deep
  discriminator body (bottleneck residual blocks, one self-attention layer)
  with a bias-free linear head: `E: [B, H, W, 3] -> [B, 1]`.
- `BigGANDeepGenerator`: the reference's `GenBigGANCond`, a TF port of
  HuggingFace's `pytorch-pretrained-BigGAN` (DeepMind's BigGAN-deep):
  class embedding, batch norm with precomputed statistics per truncation and
  class-conditional gains, self-attention, output resized on request.

Spectral normalization. The reference wraps every convolution and linear
layer in `tfa.layers.SpectralNormalization`, which normalizes only when
called with `training=True`; the reference always calls with
`training=False`, so its EBM trains unnormalized weights and its `sn_u`
vectors never move, and its generator checkpoints hold weights already
divided by their spectral norm (tf2-model-clones). These networks compute
what the reference computes: plain layers, no `sn_u`. The checkpoints'
`sn_u` tensors are the only keys the loader skips (`INERT_KEYS`).

Layer names are the reference's, so checkpoints load by key
(`checkpoint_key`): `layers_out/4/snconv1x1_theta/w`, `rgb_conv/layer/bias`,
`layers_out/0/bn_0/mean`, ...
"""

import itertools
import math
import re

import keras
import tensorflow as tf
from keras import layers, ops


def _down_pairs(widths):
    """A halving block from each width to the next, each followed by a
    block that keeps its size and width (the discriminator's rhythm)."""
    plan = []
    for a, b in itertools.pairwise(widths):
        plan += [(True, a, b), (False, b, b)]
    return plan


def _up_pairs(widths):
    """A block that keeps each width, then one that doubles the size and
    goes to the next width (the generator's rhythm)."""
    plan = []
    for a, b in itertools.pairwise(widths):
        plan += [(False, a, a), (True, a, b)]
    return plan


# The reference's block plans, (halve or double the size, in, out) with
# channels as multiples of the width, and the EBMs' attention positions.
EBM_PLANS = {
    224: (_down_pairs([1, 2, 4, 8, 8, 16, 16]), 4),  # attention at 56x56
    128: (_down_pairs([1, 2, 4, 8, 16, 16]), 2),
    64: ([(False, 1, 1)] + _down_pairs([1, 2, 4, 8, 16]), 1),
}
EBM_PLANS[256] = EBM_PLANS[224]
GEN_PLANS = {
    128: _up_pairs([16, 16, 8, 4, 2, 1]),
    256: _up_pairs([16, 16, 8, 8, 4, 2, 1]),
    512: _up_pairs([16, 16, 8, 8, 4, 2, 1, 1]),
}
GEN_ATTENTION_POSITION = 8

# Checkpoint tensors that hold nothing these networks compute.
INERT_KEYS = ("sn_u",)


def checkpoint_key(path, plain_dense=()):
    """The reference checkpoint key (without `/.ATTRIBUTES/...`) of a weight.

    `path` is the weight's path below the model (`layers_out_4/conv_0/kernel`).
    Lists are numbered (`layers_out/4`); a spectrally normalized layer keeps
    its kernel as the wrapper's `w` and its bias under the wrapped `layer`.
    `plain_dense` names the layers that have no wrapper (`embeddings`).
    """
    path = re.sub(r"(^|/)layers_out_(\d+)(?=/)", r"\1layers_out/\2", path)
    head, _, leaf = path.rpartition("/")
    if head.rpartition("/")[2] in plain_dense or leaf not in ("kernel", "bias"):
        return path
    return f"{head}/w" if leaf == "kernel" else f"{head}/layer/bias"


def _conv(filters, kernel, name, use_bias=True):
    return layers.Conv2D(filters, kernel, padding="same", use_bias=use_bias, name=name)


class SelfAttention(layers.Layer):
    """BigGAN self-attention: `x + gamma * o(softmax(theta phi^T) g)`.

    theta, phi, g, o are bias-free 1x1 convolutions to C/8, C/8, C/2, C
    channels; phi and g are max-pooled 2x2, so each of the HW positions
    attends over HW/4. `gamma` starts glorot-uniform (a random scalar in
    +-1.73), as the reference's `add_weight` default, not at 0 as in BigGAN.
    """

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.snconv1x1_theta = _conv(channels // 8, 1, "snconv1x1_theta", False)
        self.snconv1x1_phi = _conv(channels // 8, 1, "snconv1x1_phi", False)
        self.snconv1x1_g = _conv(channels // 2, 1, "snconv1x1_g", False)
        self.snconv1x1_o_conv = _conv(channels, 1, "snconv1x1_o_conv", False)
        self.pool = layers.MaxPooling2D(2)

    def build(self, input_shape):
        self.gamma = self.add_weight(
            shape=(1,), initializer="glorot_uniform", name="gamma"
        )

    def call(self, x):
        _, h, w, c = x.shape
        theta = ops.reshape(self.snconv1x1_theta(x), (-1, h * w, c // 8))
        phi = ops.reshape(self.pool(self.snconv1x1_phi(x)), (-1, h * w // 4, c // 8))
        attn = ops.softmax(ops.matmul(theta, ops.transpose(phi, (0, 2, 1))), axis=-1)
        g = ops.reshape(self.pool(self.snconv1x1_g(x)), (-1, h * w // 4, c // 2))
        o = self.snconv1x1_o_conv(ops.reshape(ops.matmul(attn, g), (-1, h, w, c // 2)))
        return x + ops.cast(self.gamma, x.dtype) * o


class EBMBlockBigGAN(layers.Layer):
    """BigGAN-deep discriminator block (bottleneck, channels grow by concat).

    `h = conv_3(pool(relu(conv_2(relu(conv_1(relu(conv_0(relu(x)))))))))`
    with 1x1 `conv_0` to in/4 channels, 3x3 `conv_1`, `conv_2`, 1x1 `conv_3`
    to `out`; output `h + [x', conv_sc(x')]` with `x' = pool(x)` (the 1x1
    `conv_sc` adds the `out - in` missing channels). `pool` is 2x2 average
    pooling when `down`, else the identity.
    """

    def __init__(self, in_channels, out_channels, down, **kwargs):
        super().__init__(**kwargs)
        middle = in_channels // 4
        self.down = down
        # An attribute, so that a smooth twin can swap it (networks.smooth).
        self.act = keras.activations.relu
        self.conv_0 = _conv(middle, 1, "conv_0")
        self.conv_1 = _conv(middle, 3, "conv_1")
        self.conv_2 = _conv(middle, 3, "conv_2")
        self.conv_3 = _conv(out_channels, 1, "conv_3")
        self.conv_sc = None
        if in_channels != out_channels:
            self.conv_sc = _conv(out_channels - in_channels, 1, "conv_sc")
        self.pool = layers.AveragePooling2D(2)

    def call(self, x):
        h = self.conv_0(self.act(x))
        h = self.conv_2(self.act(self.conv_1(self.act(h))))
        h = self.act(h)
        if self.down:
            h, x = self.pool(h), self.pool(x)
        h = self.conv_3(h)
        if self.conv_sc is not None:
            x = ops.concatenate([x, self.conv_sc(x)], axis=-1)
        return h + x


@keras.saving.register_keras_serializable(package="keras_ebm")
class BigGANEnergyNet(keras.Model):
    """The reference's ImageNet EBM `E: [B, S, S, 3] -> [B, 1]` (`EBMBigGAN`).

    `rgb_conv` (3x3 to `channel_width`), the blocks of `EBM_PLANS[S]` with
    self-attention before block `position` (at 56x56 for S = 224), then
    `relu -> global average pool -> linear_head` (bias-free, to 1). Sizes
    224 (and 256, the same plan), 128 and 64.

    Args:
        image_shape: `(S, S, 3)`.
        channel_width: the plan's unit of channels (48 in the reference).
    """

    def __init__(self, image_shape=(224, 224, 3), channel_width=48, **kwargs):
        super().__init__(**kwargs)
        size = image_shape[0]
        if size not in EBM_PLANS or image_shape[1] != size:
            raise ValueError(
                f"ebm_biggan is built for square images of size "
                f"{sorted(EBM_PLANS)}, not {tuple(image_shape)}"
            )
        self.image_shape = tuple(image_shape)
        self.channel_width = channel_width
        plan, position = EBM_PLANS[size]
        ch = channel_width
        self.rgb_conv = _conv(ch, 3, "rgb_conv")
        self.layers_out = []
        for down, c_in, c_out in plan:
            if len(self.layers_out) == position:
                name = f"layers_out_{len(self.layers_out)}"
                self.layers_out.append(SelfAttention(ch * c_in, name=name))
            name = f"layers_out_{len(self.layers_out)}"
            self.layers_out.append(
                EBMBlockBigGAN(ch * c_in, ch * c_out, down, name=name)
            )
        self.linear_head = layers.Dense(1, use_bias=False, name="linear_head")
        self.act = keras.activations.relu
        self(ops.zeros((1,) + self.image_shape))  # creates every weight

    def call(self, x):
        x = self.rgb_conv(x)
        for layer in self.layers_out:
            x = layer(x)
        return self.linear_head(ops.mean(self.act(x), axis=(1, 2)))

    INERT_KEYS = INERT_KEYS

    def checkpoint_key(self, path):
        return checkpoint_key(path)

    def get_config(self):
        config = super().get_config()
        config.update(image_shape=self.image_shape, channel_width=self.channel_width)
        return config


class BigGANBatchNorm(layers.Layer):
    """Batch norm with precomputed statistics, one row per truncation.

    `(x - mean_t) / sqrt(var_t + eps) * gain + bias`, with `mean_t`, `var_t`
    the rows of the `[n_stats, C]` tables for truncation t (rows t / step,
    `step = 1 / (n_stats - 1)`; between rows the HuggingFace port's
    interpolation `coef * row_i + (1 - coef) * row_{i+1}`, its weights as it
    has them). Conditional: `gain = 1 + scale(c)`, `bias = offset(c)`
    (bias-free linear maps of the condition vector c); otherwise the fixed
    vectors `w`, `b`. Never updated: the statistics are DeepMind's.
    """

    def __init__(
        self,
        num_features,
        truncation,
        n_stats=51,
        epsilon=1e-4,
        conditional=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_features = num_features
        self.truncation = truncation
        self.n_stats = n_stats
        self.epsilon = epsilon
        self.conditional = conditional
        if conditional:
            self.scale = layers.Dense(num_features, use_bias=False, name="scale")
            self.offset = layers.Dense(num_features, use_bias=False, name="offset")

    def build(self, input_shape):
        stats = (self.n_stats, self.num_features)
        self.mean = self.add_weight(
            shape=stats, initializer="zeros", trainable=False, name="mean"
        )
        self.var = self.add_weight(
            shape=stats, initializer="ones", trainable=False, name="var"
        )
        if not self.conditional:
            c = (self.num_features,)
            self.w = self.add_weight(
                shape=c, initializer="ones", trainable=False, name="w"
            )
            self.b = self.add_weight(
                shape=c, initializer="zeros", trainable=False, name="b"
            )

    def statistics(self):
        """`(mean_t, var_t)` of the truncation, as the HuggingFace port."""
        # Divided by the step as the port does: t * (n - 1) can land on the
        # other side of a row boundary, and its interpolation then weights
        # the rows the other way round.
        coef, start = math.modf(self.truncation / (1.0 / (self.n_stats - 1)))
        start = int(start)
        mean, var = self.mean[start], self.var[start]
        if coef != 0.0:
            mean = mean * coef + self.mean[start + 1] * (1 - coef)
            var = var * coef + self.var[start + 1] * (1 - coef)
        return mean, var

    def call(self, x, cond=None):
        mean, var = self.statistics()
        x = (x - ops.cast(mean, x.dtype)) * ops.cast(
            ops.rsqrt(var + self.epsilon), x.dtype
        )
        if not self.conditional:
            return x * ops.cast(self.w, x.dtype) + ops.cast(self.b, x.dtype)
        gain = 1 + self.scale(cond)[:, None, None, :]
        return x * gain + self.offset(cond)[:, None, None, :]


class GenBlockBigGAN(layers.Layer):
    """BigGAN-deep generator block (bottleneck, channels shrink by dropping).

    `h = conv_3(r(bn_3(conv_2(r(bn_2(conv_1(up(r(bn_1(conv_0(r(bn_0(x)))))))))))))`,
    `r` = relu, 1x1 `conv_0` to in/4, 3x3 `conv_1`, `conv_2`, 1x1 `conv_3`
    to `out`; output `h + up(x[..., :out])` when the channels halve, else
    `h + up(x)`; `up` is 2x nearest-neighbour upsampling when `up`.
    """

    def __init__(self, in_channels, out_channels, up, truncation, epsilon, **kwargs):
        super().__init__(**kwargs)
        middle = in_channels // 4
        self.up = up
        self.drop_channels = in_channels != out_channels
        self.keep = in_channels // 2

        def bn(features, name):
            return BigGANBatchNorm(features, truncation, epsilon=epsilon, name=name)

        self.bn_0, self.conv_0 = bn(in_channels, "bn_0"), _conv(middle, 1, "conv_0")
        self.bn_1, self.conv_1 = bn(middle, "bn_1"), _conv(middle, 3, "conv_1")
        self.bn_2, self.conv_2 = bn(middle, "bn_2"), _conv(middle, 3, "conv_2")
        self.bn_3, self.conv_3 = bn(middle, "bn_3"), _conv(out_channels, 1, "conv_3")
        self.upsample = layers.UpSampling2D()

    def build(self, x_shape, cond_shape=None):
        pass  # the sublayers build on the first call, from their own inputs

    def call(self, x, cond):
        h = self.conv_0(ops.relu(self.bn_0(x, cond)))
        h = ops.relu(self.bn_1(h, cond))
        if self.up:
            h = self.upsample(h)
        h = self.conv_1(h)
        h = self.conv_2(ops.relu(self.bn_2(h, cond)))
        h = self.conv_3(ops.relu(self.bn_3(h, cond)))
        if self.drop_channels:
            x = x[..., : self.keep]
        if self.up:
            x = self.upsample(x)
        return h + x


@keras.saving.register_keras_serializable(package="keras_ebm")
class BigGANDeepGenerator(keras.Model):
    """Conditional BigGAN-deep `g: [z, u] -> [B, H, W, 3]` in [-1, 1].

    The latent is `[z, u]` (width `z_dim + 1`): z = truncation x a truncated
    standard normal (`sample_latent`), u ~ U[0, 1) picks the ImageNet class
    `floor(u * num_classes)`. The class is thus uniform at random on every
    draw, as the reference draws it on every call, but drawn with z from the
    run's stateless seeds: a step replays exactly and a stored latent (a
    bank's) regenerates its own image. `call(latent, labels=...)` gives the
    classes instead.

    `c = [z, embeddings(one_hot(class))]` (256-d) conditions every batch
    norm; `gen_z(c)` is a 4x4 map of 16 x channel_width channels, then the
    blocks of `GEN_PLANS[resolution]` (attention before block 8), the
    unconditional batch norm `bn`, relu, `conv_to_rgb` (channel_width
    channels, the first 3 kept), tanh, and a bilinear resize (no antialias)
    to `image_shape` when it differs: 256 -> 224 for the defense, 128 -> 64
    for longrun, as the reference.

    Args:
        resolution: 128, 256 or 512 (the network DeepMind trained).
        image_shape: `(H, W, 3)` of the output (default: the resolution's).
        latent_dim: width of z (128).
        truncation: in (0, 1]; scales z and picks the batch-norm statistics.
    """

    def __init__(
        self,
        resolution=128,
        image_shape=None,
        latent_dim=128,
        channel_width=128,
        num_classes=1000,
        truncation=1.0,
        bn_epsilon=1e-4,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if resolution not in GEN_PLANS:
            raise ValueError(f"BigGAN-deep resolutions are {sorted(GEN_PLANS)}")
        if not 0 < truncation <= 1:
            raise ValueError(f"truncation must be in (0, 1], not {truncation}")
        if image_shape is None:
            image_shape = (resolution, resolution, 3)
        if tuple(image_shape)[-1] != 3:
            raise ValueError(f"BigGAN-deep makes RGB images, not {tuple(image_shape)}")
        self.resolution = resolution
        self.image_shape = tuple(image_shape)
        self.z_dim = latent_dim
        self.latent_dim = latent_dim + 1
        self.channel_width = channel_width
        self.num_classes = num_classes
        self.truncation = truncation
        self.bn_epsilon = bn_epsilon
        ch = channel_width
        self.embeddings = layers.Dense(latent_dim, use_bias=False, name="embeddings")
        self.gen_z = layers.Dense(4 * 4 * 16 * ch, name="gen_z")
        self.layers_out = []
        for up, c_in, c_out in GEN_PLANS[resolution]:
            if len(self.layers_out) == GEN_ATTENTION_POSITION:
                name = f"layers_out_{len(self.layers_out)}"
                self.layers_out.append(SelfAttention(ch * c_in, name=name))
            self.layers_out.append(
                GenBlockBigGAN(
                    ch * c_in,
                    ch * c_out,
                    up,
                    truncation,
                    bn_epsilon,
                    name=f"layers_out_{len(self.layers_out)}",
                )
            )
        self.bn = BigGANBatchNorm(
            ch, truncation, epsilon=bn_epsilon, conditional=False, name="bn"
        )
        self.conv_to_rgb = _conv(ch, 3, "conv_to_rgb")
        self(ops.zeros((1, self.latent_dim)))  # creates every weight

    def sample_latent(self, shape, seed):
        """`[truncation * truncated_normal(z_dim), U[0, 1)]` rows, stateless."""
        seeds = tf.random.experimental.stateless_split(seed, 2)
        z = tf.random.stateless_truncated_normal(
            tf.concat([shape[:1], [self.z_dim]], 0), seeds[0]
        )
        u = tf.random.stateless_uniform(tf.concat([shape[:1], [1]], 0), seeds[1])
        return tf.concat([self.truncation * z, u], axis=1)

    def classes(self, latent):
        """The class of each latent row: `floor(u * num_classes)`."""
        u = ops.cast(latent[:, self.z_dim], "float32")
        return ops.minimum(
            ops.cast(ops.floor(u * self.num_classes), "int32"), self.num_classes - 1
        )

    def call(self, latent, labels=None, training=False):
        del training  # batch norm statistics are fixed
        if labels is None:
            labels = self.classes(latent)
        y = ops.one_hot(labels, self.num_classes, dtype=self.compute_dtype)
        cond = ops.concatenate([latent[:, : self.z_dim], self.embeddings(y)], axis=1)
        x = ops.reshape(self.gen_z(cond), (-1, 4, 4, 16 * self.channel_width))
        for layer in self.layers_out:
            x = layer(x) if isinstance(layer, SelfAttention) else layer(x, cond)
        x = self.conv_to_rgb(ops.relu(self.bn(x)))
        x = ops.tanh(x[..., :3])
        if self.image_shape[:2] != (self.resolution, self.resolution):
            # In float32: XLA's bilinear resize rejects mixed precision.
            x = ops.image.resize(
                ops.cast(x, "float32"), self.image_shape[:2], antialias=False
            )
        return x

    INERT_KEYS = INERT_KEYS

    def checkpoint_key(self, path):
        return checkpoint_key(path, plain_dense=("embeddings",))

    def get_config(self):
        config = super().get_config()
        config.update(
            resolution=self.resolution,
            image_shape=self.image_shape,
            latent_dim=self.z_dim,
            channel_width=self.channel_width,
            num_classes=self.num_classes,
            truncation=self.truncation,
            bn_epsilon=self.bn_epsilon,
        )
        return config
