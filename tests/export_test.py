"""SavedModel export: loaded by plain TensorFlow, without keras_ebm."""

import numpy as np
import pytest
import tensorflow as tf

from keras_ebm import run
from keras_ebm.configs import shortrun
from tests.standalone import run_without_keras_ebm

# Whole runs, subprocesses and exports: seconds each.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    config = shortrun.get_config("smoke")
    model = run.train(config, workdir)
    path = run.export(config, workdir)
    return model, path


def test_loads_without_keras_ebm_and_every_endpoint_works(exported, tmp_path):
    model, path = exported
    x = np.random.default_rng(0).uniform(-1, 1, (3, 8, 8, 1)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    out = run_without_keras_ebm(
        f"""
        r = tf.saved_model.load({path!r})
        x = tf.constant(np.load("x.npy"))
        out = dict(
            energy=r.energy(x).numpy().tolist(),
            sample=list(r.sample(x, tf.constant(4)).shape),
            sample0=r.sample(x, tf.constant(0)).numpy().tolist(),
            purify=list(r.purify(x).shape),
            generate=list(r.generate(tf.constant(5)).shape),
        )
        print(json.dumps(out))
    """,
        tmp_path,
    )
    np.testing.assert_allclose(out["energy"], model.potential(x).numpy(), rtol=1e-5)
    assert out["sample"] == [3, 8, 8, 1] and out["purify"] == [3, 8, 8, 1]
    np.testing.assert_allclose(out["sample0"], x)  # zero steps: unchanged
    assert out["generate"] == [5, 8, 8, 1]


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 8, 8), "float32"),  # rank
        np.zeros((2, 16, 16, 1), "float32"),  # size
        np.zeros((2, 8, 8, 3), "float32"),  # channels
    ],
)
def test_bad_inputs_get_clear_errors(exported, bad):
    _, path = exported
    r = tf.saved_model.load(path)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"expects \[B, 8, 8, 1\]"):
        r.energy(tf.constant(bad))
    with pytest.raises(tf.errors.InvalidArgumentError, match="expects"):
        r.purify(tf.constant(bad))


def test_wrong_dtype_is_refused(exported):
    _, path = exported
    r = tf.saved_model.load(path)
    with pytest.raises((TypeError, ValueError)):
        r.energy(tf.zeros((2, 8, 8, 1), tf.float64))
