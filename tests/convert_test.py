"""`python -m keras_ebm.convert`: a reference-layout TF checkpoint becomes a
Keras weights file the registry's network loads, computing the same."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_ebm import convert, errors, networks
from tests.networks_test import write_reference_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KWARGS = dict(image_shape=(8, 8, 1), width=4)


def test_converted_weights_compute_what_the_checkpoint_computes(tmp_path):
    reference = networks.build("ebm_small", **KWARGS)
    prefix = str(tmp_path / "ckpt" / "ebm")
    write_reference_checkpoint(reference, prefix, "layer_with_weights-0")
    networks.load_weights(reference, prefix)
    out = str(tmp_path / "ebm_small.weights.h5")
    convert.convert("ebm_small", prefix, out, **KWARGS)
    fresh = networks.build("ebm_small", **KWARGS)
    fresh.load_weights(out)
    x = tf.random.stateless_uniform((5, 8, 8, 1), [0, 1], -1, 1)
    np.testing.assert_array_equal(fresh(x), reference(x))
    assert not np.allclose(fresh(x), networks.build("ebm_small", **KWARGS)(x))
    # Never over an existing file; a checkpoint of another network fails
    # with the keys it lacks, before anything is written.
    with pytest.raises(errors.ConfigError, match="exists"):
        convert.convert("ebm_small", prefix, out, **KWARGS)
    other = str(tmp_path / "gen.weights.h5")
    with pytest.raises(errors.ConfigError, match="does not fit"):
        convert.convert("gen_small", prefix, other, image_shape=(8, 8, 1))
    assert not os.path.exists(other)


@pytest.mark.slow  # one process
def test_the_command(tmp_path):
    net = networks.build("gen_small", image_shape=(8, 8, 1), latent_dim=4)
    prefix = str(tmp_path / "gen")
    write_reference_checkpoint(net, prefix, None)
    networks.load_weights(net, prefix)
    out = tmp_path / "gen.weights.h5"
    args = [
        "--network=gen_small",
        f"--checkpoint={prefix}",
        f"--output={out}",
        '--network_kwargs={"image_shape": [8, 8, 1], "latent_dim": 4}',
    ]
    result = subprocess.run(
        [sys.executable, "-m", "keras_ebm.convert", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = networks.build("gen_small", image_shape=(8, 8, 1), latent_dim=4)
    loaded.load_weights(str(out))
    z = tf.random.stateless_normal((3, 4), [0, 2])
    np.testing.assert_array_equal(loaded(z), net(z))
