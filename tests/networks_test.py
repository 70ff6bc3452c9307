"""Network golden numbers (reference parameter counts) and contracts."""

import numpy as np
import pytest
import tensorflow as tf
from absl.testing import parameterized

from keras_ebm import networks

# (test name, network, total, trainable): reference-implementation.md §2, §6.
REFERENCE_COUNTS = [
    (name, name, total, trainable)
    for name, total, trainable in [
        ("ebm_sngan32", 4_204_800, 4_204_800),
        ("ebm_sngan64", 19_542_720, 19_542_720),
        ("ebm_sngan128", 38_419_136, 38_419_136),
        ("gen_sngan32", 4_280_323, 4_276_739),
        ("gen_sngan64", 12_226_563, 12_220_675),
        ("gen_sngan128", 32_160_771, 32_150_787),
        ("ebm_toy", 10_593, 10_593),
    ]
]


def _count(variables):
    return int(sum(np.prod(v.shape) for v in variables))


class NetworksTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.named_parameters(*REFERENCE_COUNTS)
    @pytest.mark.slow  # builds the full-size networks
    def test_reference_parameter_counts(self, name, total, trainable):
        net = networks.build(name)
        self.assertEqual(net.count_params(), total)
        self.assertEqual(_count(net.trainable_weights), trainable)

    def test_energy_shape_and_generator_range(self):
        ebm = networks.build("ebm_small", image_shape=(16, 16, 1), width=8)
        self.assertEqual(tuple(ebm(tf.zeros((5, 16, 16, 1))).shape), (5, 1))
        gen = networks.build("gen_small", image_shape=(16, 16, 1), latent_dim=4)
        x = gen(tf.random.normal((5, 4)) * 10, training=True)
        self.assertEqual(tuple(x.shape), (5, 16, 16, 1))
        self.assertLessEqual(float(tf.reduce_max(tf.abs(x))), 1.0)

    def test_batch_norm_epsilon(self):
        default = networks.build("gen_small", image_shape=(8, 8, 1), latent_dim=4)
        torch_like = networks.build(
            "gen_small", image_shape=(8, 8, 1), latent_dim=4, bn_epsilon=1e-5
        )
        self.assertEqual(default.get_layer("bn_3").epsilon, 1e-3)
        self.assertEqual(torch_like.get_layer("bn_3").epsilon, 1e-5)

    def test_generator_in_batch_stats_mode_moves_statistics(self):
        gen = networks.build("gen_small", image_shape=(8, 8, 1), latent_dim=4)
        bn = gen.get_layer("bn_3")
        before = bn.moving_mean.numpy().copy()
        gen(tf.random.normal((8, 4)), training=False)
        self.assertAllEqual(bn.moving_mean, before)
        gen(tf.random.normal((8, 4)), training=True)
        self.assertNotAllClose(bn.moving_mean, before)

    def test_config_round_trip(self):
        ebm = networks.build("ebm_small", image_shape=(8, 8, 1), width=8)
        clone = ebm.__class__.from_config(ebm.get_config())
        self.assertEqual(clone.count_params(), ebm.count_params())

    def test_unknown_name_and_bad_shape(self):
        with self.assertRaisesRegex(ValueError, "unknown network"):
            networks.build("ebm_resnet")
        with pytest.raises(ValueError, match="makes"):
            networks.build("gen_sngan32", image_shape=(64, 64, 3))


def write_reference_checkpoint(net, prefix, root_prefix, drop=None):
    """A stand-in TF checkpoint with the reference's key layout."""
    root = tf.Module()
    holder = tf.Module()
    if root_prefix:
        setattr(root, root_prefix, holder)
    else:
        holder = root
    values = {}
    for var in net.weights:
        name = var.path.split("/", 1)[1]
        if name == drop:
            continue
        node = holder
        *parts, leaf = name.split("/")
        for part in parts:
            if not hasattr(node, part):
                setattr(node, part, tf.Module())
            node = getattr(node, part)
        values[name] = (
            np.random.default_rng(len(values)).normal(size=var.shape).astype("float32")
        )
        setattr(node, leaf, tf.Variable(values[name]))
    tf.train.Checkpoint(root=root).write(prefix)
    return values


class ReferenceCheckpointTest(tf.test.TestCase):
    def _write_reference_style(self, net, prefix, root_prefix, drop=None):
        return write_reference_checkpoint(net, prefix, root_prefix, drop)

    def test_loads_reference_keys(self):
        net = networks.build("ebm_small", image_shape=(8, 8, 1), width=4)
        prefix = self.get_temp_dir() + "/ebm"
        values = self._write_reference_style(net, prefix, "layer_with_weights-0")
        networks.load_weights(net, prefix)
        for var in net.weights:
            self.assertAllEqual(var, values[var.path.split("/", 1)[1]])

    def test_missing_key_assigns_nothing(self):
        net = networks.build("gen_small", image_shape=(8, 8, 1), latent_dim=4)
        prefix = self.get_temp_dir() + "/gen"
        self._write_reference_style(net, prefix, None, drop="lin_1/kernel")
        before = [v.numpy() for v in net.weights]
        with self.assertRaisesRegex(ValueError, "lin_1/kernel: 0 matching"):
            networks.load_weights(net, prefix)
        for a, b in zip(before, net.weights, strict=True):
            self.assertAllEqual(a, b)
        with self.assertRaisesRegex(FileNotFoundError, "no TF checkpoint"):
            networks.load_weights(net, self.get_temp_dir() + "/nothing")
        with self.assertRaisesRegex(FileNotFoundError, "does not exist"):
            networks.load_weights(net, self.get_temp_dir() + "/x.weights.h5")


class ClassifierNetworksTest(tf.test.TestCase):
    @pytest.mark.slow
    def test_wide_resnet_28_10_matches_the_original_count(self):
        # 36,489,290 trainable parameters: the PyTorch WRN-28-10 the
        # reference ports (convolutions with biases).
        wrn = networks.build("clf_wrn28_10")
        self.assertEqual(_count(wrn.trainable_weights), 36_489_290)

    def test_weight_decay_is_half_squared_norm_of_all_variables(self):
        wrn = networks.WideResNet(depth=10, width=1, weight_decay=1e-2)
        x = tf.zeros((2, 32, 32, 3))
        self.assertEqual(tuple(wrn(x).shape), (2, 10))
        self.assertEmpty(wrn.losses)
        wrn(x, training=True)
        expected = 1e-2 * sum(
            float(tf.reduce_sum(tf.square(v))) / 2 for v in wrn.trainable_variables
        )
        self.assertAllClose(float(sum(wrn.losses)), expected, rtol=1e-5)

    def test_digits_cnn_features(self):
        cnn = networks.build("clf_digits", image_shape=(16, 16, 1))
        x = tf.zeros((3, 16, 16, 1))
        self.assertEqual(tuple(cnn.features(x).shape), (3, 128))
        self.assertEqual(tuple(cnn(x).shape), (3, 10))


def test_ebm_activation_reaches_every_nonlinearity():
    # With the identity as activation the whole network is affine in x: the
    # energy of a midpoint is the mean of the energies. A relu left anywhere
    # (block input, inside a block, before the head) would break that.
    net = networks.build(
        "ebm_small", image_shape=(8, 8, 1), width=8, activation="linear"
    )
    rng = np.random.default_rng(0)
    a, b = rng.uniform(-1, 1, (2, 4, 8, 8, 1)).astype("float32")
    mid = net((a + b) / 2).numpy()
    np.testing.assert_allclose(mid, (net(a).numpy() + net(b).numpy()) / 2, atol=1e-5)
    relu = networks.build("ebm_small", image_shape=(8, 8, 1), width=8)
    assert relu.count_params() == net.count_params()
    assert (
        networks.build(
            "ebm_small", image_shape=(8, 8, 1), width=8, activation="silu"
        ).get_config()["activation"]
        == "silu"
    )
