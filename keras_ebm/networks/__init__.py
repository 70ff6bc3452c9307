"""Network registry: `build(name, **kwargs)` returns a built Keras model.

- `ebm_sngan32/64/128`: the reference EBMs, 4,204,800 / 19,542,720 /
  38,419,136 parameters.
- `gen_sngan32/64/128`: the reference generators, 4,280,323 / 12,226,563 /
  32,160,771 parameters (moving statistics included).
- `ebm_small`, `gen_small`: narrow versions of the same blocks (digits).
- `ebm_toy`, `gen_toy`: MLPs for 2-D toy data (ToyNet: 10,593).
- `ebm_biggan`: the reference's ImageNet EBM at 224 (and 256), 128 or 64:
  4,289,605 / 3,774,469 / 1,850,041 parameters.
- `gen_biggan_deep128/256`: DeepMind's conditional BigGAN-deep (the
  HuggingFace port), optionally resized (256 -> 224, 128 -> 64):
  50,388,609 / 55,880,833 parameters as PyTorch counts them (50.4M /
  55.9M), plus the per-truncation batch-norm statistics.
- `clf_digits`, `clf_wrn28_10`: classifiers (digits CNN; WRN-28-10).
"""

import contextlib

import keras
import tensorflow as tf

from keras_ebm.networks.biggan import BigGANDeepGenerator, BigGANEnergyNet
from keras_ebm.networks.classifier import DigitsCNN, WideResNet
from keras_ebm.networks.sngan import SNGANEnergyNet, SNGANGenerator
from keras_ebm.networks.toy import MLP
from keras_ebm.networks.weights import load_tf_checkpoint, load_weights

_T, _F = True, False


def _halving(width, size):
    """Block widths `width, width/2, ...` taking a 4x4 map up to `size`."""
    num_blocks = max(int(size).bit_length() - 3, 1)  # log2(size / 4)
    return [max(width >> i, 8) for i in range(num_blocks)]


def _gen(base, channels, image_shape=None, **kwargs):
    """An SNGAN generator whose output must match `image_shape` if given."""
    if image_shape is not None:
        kwargs["out_channels"] = image_shape[-1]
    gen = SNGANGenerator(base, channels, **kwargs)
    if image_shape is not None and tuple(image_shape) != gen.image_shape:
        raise ValueError(
            f"this generator makes {gen.image_shape} images, not {image_shape}"
        )
    return gen


_REGISTRY = {
    "ebm_sngan32": lambda image_shape=(32, 32, 3), **kw: SNGANEnergyNet(
        [256, 256, 256, 256], [_T, _F, _F], image_shape, **kw
    ),
    "ebm_sngan64": lambda image_shape=(64, 64, 3), **kw: SNGANEnergyNet(
        [64, 128, 256, 512, 1024], [_T, _T, _T, _T], image_shape, **kw
    ),
    "ebm_sngan128": lambda image_shape=(128, 128, 3), **kw: SNGANEnergyNet(
        [64, 128, 256, 512, 1024, 1024], [_T, _T, _T, _T, _F], image_shape, **kw
    ),
    "ebm_small": lambda image_shape=(16, 16, 1), width=32, **kw: SNGANEnergyNet(
        [width, 2 * width, 2 * width], [_T, _F], image_shape, **kw
    ),
    "gen_sngan32": lambda **kw: _gen(256, [256, 256, 256], **kw),
    "gen_sngan64": lambda **kw: _gen(1024, [512, 256, 128, 64], **kw),
    "gen_sngan128": lambda **kw: _gen(1024, [1024, 512, 256, 128, 64], **kw),
    "gen_small": lambda width=64, image_shape=(16, 16, 1), **kw: _gen(
        width, _halving(width, image_shape[0]), image_shape=image_shape, **kw
    ),
    "ebm_toy": lambda image_shape=(2,), **kw: MLP(image_shape[0], 1, **kw),
    "clf_digits": lambda image_shape=(16, 16, 1), **kw: DigitsCNN(image_shape, **kw),
    "clf_wrn28_10": lambda image_shape=(32, 32, 3), **kw: WideResNet(
        28, 10, image_shape=image_shape, **kw
    ),
    "gen_toy": lambda latent_dim=2, image_shape=(2,), **kw: MLP(
        latent_dim, image_shape[0], role="generator", **kw
    ),
    "ebm_biggan": lambda image_shape=(224, 224, 3), **kw: BigGANEnergyNet(
        image_shape, **kw
    ),
    "gen_biggan_deep128": lambda **kw: BigGANDeepGenerator(128, **kw),
    "gen_biggan_deep256": lambda **kw: BigGANDeepGenerator(256, **kw),
}

NAMES = tuple(_REGISTRY)
# Networks used only with published weights (never trained here): where a
# user gets them, for the error that finds them missing.
WEIGHTS_SOURCES = {
    name: "DeepMind's weights in the reference's TF layout come from "
    "tf2-model-clones' save_biggan_tf2.ipynb (README: ImageNet weights)"
    for name in ("gen_biggan_deep128", "gen_biggan_deep256")
}


def sample_latent(generator, shape, seed):
    """Latent rows of `shape` for `generator`, a function of `seed` alone.

    A generator with its own latent distribution (BigGAN-deep: truncated z
    and a class) has `sample_latent`; the others take `z ~ N(0, I)`.
    """
    if hasattr(generator, "sample_latent"):
        return generator.sample_latent(shape, seed)
    return tf.random.stateless_normal(shape, seed)


@contextlib.contextmanager
def precision(name):
    """Networks built inside compute in `name` (`float32` or `bfloat16`).

    bfloat16 is Keras' `mixed_bfloat16` policy: variables stay float32,
    layers cast their inputs to bfloat16 and compute in it. Outputs are
    bfloat16; `EnergyModel` casts energies and generated states back to
    float32, so chains, banks and losses never leave float32. bfloat16 has
    float32's exponent range, so no loss scaling is needed.
    """
    policy = {"float32": "float32", "bfloat16": "mixed_bfloat16"}[name]
    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(old)


def build(name, **kwargs):
    """Builds the registered network `name`; kwargs go to its constructor."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown network {name!r}; known: {', '.join(NAMES)}")
    return _REGISTRY[name](**kwargs)


__all__ = [
    "BigGANDeepGenerator",
    "BigGANEnergyNet",
    "DigitsCNN",
    "MLP",
    "WideResNet",
    "NAMES",
    "WEIGHTS_SOURCES",
    "SNGANEnergyNet",
    "SNGANGenerator",
    "build",
    "precision",
    "sample_latent",
    "load_tf_checkpoint",
    "load_weights",
]
