"""End-to-end runs: the outputs of a run (kills and resumes:
kill_shortrun_test.py, kill_longrun_test.py, signals_test.py)."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_ebm import run
from keras_ebm.configs import shortrun
from keras_ebm.runs import checkpoints

# Whole runs, subprocesses and exports: seconds each.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(model):
    """Everything a resume must restore, in a fixed order.

    Keyed by position: paths carry auto-numbered model names, which differ
    between two models built in one process.
    """
    variables = list(model.weights)
    for opt in (model.ebm_optimizer, model.gen_optimizer):
        variables += list(opt.variables) if opt is not None else []
    return {i: v.numpy() for i, v in enumerate(variables)}


def test_smoke_run_writes_all_outputs(tmp_path):
    workdir = str(tmp_path / "run")
    model = run.train(shortrun.get_config("smoke"), workdir)
    assert int(model.ebm_optimizer.iterations) == 4
    assert os.path.exists(os.path.join(workdir, "config.json"))
    steps = [s for s, _ in checkpoints.list_checkpoints(workdir)]
    assert steps == [0, 2, 4]
    for kind in ("negatives", "bank", "generator"):
        assert os.path.exists(f"{workdir}/samples/{kind}_00000004.png")
    events = glob.glob(f"{workdir}/tensorboard/events.out.tfevents.*")
    tags = set()
    for event in tf.compat.v1.train.summary_iterator(events[0]):
        tags.update(v.tag for v in event.summary.value)
    for tag in (
        "loss",
        "energy_gap",
        "drift_norm",
        "bank_age",
        "gen_loss",
        "learning_rate/ebm",
        "learning_rate/gen",
        "negatives",
    ):
        assert tag in tags, tag
    # A finished run asked for the same steps does nothing more.
    again = run.train(shortrun.get_config("smoke"), workdir)
    assert int(again.ebm_optimizer.iterations) == 4


def test_toy2d_run_writes_scatter_plots(tmp_path):
    config = shortrun.get_config("toy2d")
    config.bank.size = 200
    config.train.update(num_steps=2, log_every=2, image_every=2, checkpoint_every=2)
    model = run.train(config, str(tmp_path))
    assert model.bank.states.shape == (200, 2)
    for kind in ("negatives", "bank", "generator"):
        assert (tmp_path / "samples" / f"{kind}_00000002.png").exists()
    # The export takes 2-D states (the toy networks once claimed shape (1,)).
    path = run.export(config, str(tmp_path))
    loaded = tf.saved_model.load(path)
    x = tf.random.normal((5, 2))
    np.testing.assert_allclose(
        loaded.energy(x).numpy(), model.potential(x).numpy(), rtol=1e-5
    )
    assert tuple(loaded.generate(tf.constant(7)).shape) == (7, 2)
    assert tuple(loaded.purify(x).shape) == (5, 2)
