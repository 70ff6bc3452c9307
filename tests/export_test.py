"""SavedModel export: loaded by plain TensorFlow, without keras_ebm."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from configs import shortrun
from keras_ebm import run

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
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import tensorflow as tf
        try:
            import keras_ebm  # noqa: F401
            sys.exit("keras_ebm must not be importable here")
        except ImportError:
            pass
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
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
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
