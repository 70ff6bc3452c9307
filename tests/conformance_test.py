"""Every registered network keeps its contract: the state shape it declares
is the shape it accepts (energies, classifiers) or makes (generators)."""

import numpy as np
import pytest
import tensorflow as tf

from keras_ebm import networks

# The large reference networks are built at their default sizes; forward
# passes use a batch of 2.
HEAVY = {
    "ebm_sngan64",
    "ebm_sngan128",
    "gen_sngan32",
    "gen_sngan64",
    "gen_sngan128",
    "clf_wrn28_10",
}


def _params():
    for name in networks.NAMES:
        marks = [pytest.mark.slow] if name in HEAVY else []
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", list(_params()))
def test_declared_shape_is_the_shape_used(name):
    net = networks.build(name)
    shape = tuple(net.image_shape)
    if name.startswith("gen_"):
        z = tf.random.normal((2, net.latent_dim))
        assert tuple(net(z, training=False).shape) == (2,) + shape
        return
    out = net(tf.zeros((2,) + shape), training=False)
    width = 1 if name.startswith("ebm_") else 10
    assert tuple(out.shape) == (2, width)
    # A state of any other shape is refused.
    wrong = shape[:-1] + (shape[-1] + 1,)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
        net(tf.zeros((2,) + wrong), training=False)


@pytest.mark.parametrize("name", ["ebm_toy", "ebm_small", "gen_toy", "gen_small"])
def test_requested_shape_is_the_declared_shape(name):
    # What a config asks for (run.state_shape) is what the network declares.
    shape = (2,) if name.endswith("toy") else (8, 8, 1)
    net = networks.build(name, image_shape=shape)
    assert tuple(net.image_shape) == shape
    if name.startswith("gen_"):
        assert tuple(net(np.zeros((3, net.latent_dim), "float32")).shape[1:]) == shape
