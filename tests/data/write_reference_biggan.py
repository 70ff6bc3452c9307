"""Writes `tests/data/reference_biggan/`: small BigGAN checkpoints saved by
the reference's own code, with its outputs on fixed inputs.

    python tests/data/write_reference_biggan.py --nets=<ebm-life-cycle>/nets.py

The reference's networks (`nets.py` of point0bar1/ebm-life-cycle, commit
c7e12da) run under tf_keras (`TF_USE_LEGACY_KERAS=1`, TF 2.21), narrow
(channel width 8 for the EBM, 4 for the generator, 16-d z, 10 classes),
with every weight set to seeded random values, and save themselves the way
the reference saves and loads them: the EBM inside `create_ebm`'s
functional wrapper (`layer_with_weights-0/...`), the generator
(`GenBigGANCond`, the class that loads tf2-model-clones' BigGAN-deep) on
its own. `tests/biggan_test.py` loads both into keras_ebm's networks and
compares the outputs.

TF-Addons, whose `SpectralNormalization` wraps every layer, does not
install beside TF 2.21; `nets.py` gets a stand-in that builds what the
wrapper builds (the wrapped layer as `layer`, its kernel as `w`, a
non-trainable `sn_u` of shape `[1, out]`) and calls the layer as it is
(the reference calls with `training=False`, where the wrapper does not
normalize). Written once; the files are checked in.
"""

import argparse
import importlib.util
import os
import sys
import types

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.keras is tf_keras, as in 2022

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_biggan")


def _spectral_normalization():
    keras2 = tf.keras  # noqa: TID251  (the reference's Keras 2)

    class SpectralNormalization(keras2.layers.Wrapper):
        """Builds what `tfa.layers.SpectralNormalization` builds; never
        normalizes (the reference's calls are all `training=False`)."""

        def __init__(self, layer, power_iterations=1, **kwargs):
            super().__init__(layer, **kwargs)

        def build(self, input_shape):
            super().build(input_shape)  # builds the wrapped layer
            self.w = self.layer.kernel
            self.u = self.add_weight(
                shape=(1, self.w.shape[-1]),
                initializer=keras2.initializers.TruncatedNormal(stddev=0.02),
                trainable=False,
                name="sn_u",
            )

        def call(self, inputs, training=None):
            return self.layer(inputs)

    return SpectralNormalization


def _reference_nets(path):
    tfa = types.ModuleType("tensorflow_addons")
    tfa.layers = types.SimpleNamespace(SpectralNormalization=_spectral_normalization())
    sys.modules["tensorflow_addons"] = tfa
    spec = importlib.util.spec_from_file_location("nets", path)
    nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nets)
    return nets


def _randomize(model, rng):
    """Seeded values for every weight: kernels scaled by their fan-in (O(1)
    activations), positive batch-norm variances, the rest N(0, 0.3)."""
    for v in model.weights:
        shape = v.shape.as_list()
        name = v.name.split("/")[-1].split(":")[0]
        value = rng.normal(0.0, 0.3, shape)
        if name == "var":
            value = rng.uniform(0.5, 1.5, shape)
        elif name == "kernel" and len(shape) > 1:
            value = rng.normal(0.0, 1.0, shape) / np.sqrt(np.prod(shape[:-1]))
        v.assign(value.astype("float32"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--nets", required=True, help="ebm-life-cycle nets.py")
    nets = _reference_nets(parser.parse_args().nets)
    keras2 = tf.keras  # noqa: TID251
    rng = np.random.default_rng(0)
    os.makedirs(OUT, exist_ok=True)

    # The EBM, as `create_ebm` builds it, at 64x64.
    inputs = keras2.Input(shape=(64, 64, 3))
    ebm = keras2.models.Model(
        inputs, nets.EBMBigGAN(im_sz=64, channel_width=8)(inputs, training=False)
    )
    _randomize(ebm, rng)
    x = rng.uniform(-1.0, 1.0, (2, 64, 64, 3)).astype("float32")
    energy = ebm(x, training=False).numpy()
    ebm.save_weights(os.path.join(OUT, "ebm"))

    # BigGAN-deep-256 resized to 224 (`im_sz=224`, the midrun preset's).
    gen = nets.GenBigGANCond(im_sz=224, z_sz=16, channel_width=4, num_classes=10)
    z = (0.405 * rng.standard_normal((2, 16))).astype("float32")
    labels = np.array([3, 7])
    y = tf.one_hot(labels, 10)
    gen(z, y, truncation=0.405)  # builds every weight
    _randomize(gen, rng)
    images = gen(z, y, truncation=0.405).numpy()
    gen.save_weights(os.path.join(OUT, "gen"))

    os.remove(os.path.join(OUT, "checkpoint"))  # tf_keras' index of prefixes
    np.savez(
        os.path.join(OUT, "outputs.npz"),
        x=x,
        energy=energy,
        z=z,
        labels=labels,
        truncation=0.405,
        # Every 7th row and column (32 x 32 of 224 x 224): the resize's
        # samples everywhere, a fiftieth of the bytes.
        images=images[:, ::7, ::7],
    )
    print(f"written to {OUT}: energy {energy.ravel()}, images {images.shape}")


if __name__ == "__main__":
    main()
