"""End-to-end runs: outputs of a run, and resuming after a kill."""

import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from configs import longrun, shortrun
from keras_ebm import callbacks, run

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
    steps = [s for s, _ in callbacks.list_checkpoints(workdir)]
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


def test_kill_and_resume_restores_saved_state(tmp_path):
    workdir = str(tmp_path / "run")
    flags = [
        "--dataset=smoke",
        f"--workdir={workdir}",
        "--config.train.num_steps=400",
        "--config.train.log_every=1",
        "--config.train.checkpoint_every=1",
        "--config.train.image_every=400",
    ]
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "train.py"), *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            saved = callbacks.list_checkpoints(workdir)
            if saved and saved[-1][0] >= 5:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    step, path = callbacks.list_checkpoints(workdir)[-1]
    assert 5 <= step < 400

    config = shortrun.get_config("smoke")
    config.train.update(
        num_steps=step, log_every=1, checkpoint_every=1, image_every=400
    )
    reference = run.build_model(config)
    reference.load_weights(path)
    fresh = run.build_model(config)
    resumed = run.train(config, workdir)  # re-running the command, 0 steps left
    assert int(resumed.ebm_optimizer.iterations) == step
    saved, restored = _state(reference), _state(resumed)
    assert saved.keys() == restored.keys()
    for key in saved:
        np.testing.assert_array_equal(saved[key], restored[key], err_msg=key)
    # Bank, counts and optimizer moments really are trained state.
    assert np.any(resumed.bank.counts.numpy() > 0)
    assert not np.array_equal(resumed.bank.states.numpy(), fresh.bank.states.numpy())
    assert int(resumed.gen_optimizer.iterations) == step

    config.train.num_steps = step + 2
    resumed = run.train(config, workdir)
    assert int(resumed.ebm_optimizer.iterations) == step + 2


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


@pytest.mark.parametrize("configs", [shortrun, longrun], ids=["shortrun", "longrun"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, configs):
    # The same 4 steps, once straight through and once as 2 + 2 with a
    # resume from the step-2 checkpoint in between: same data batches, same
    # random draws, so the same weights, moments, banks (both of longrun),
    # latents and counts.
    def config(num_steps):
        c = configs.get_config("smoke")
        c.train.update(num_steps=num_steps, log_every=2, checkpoint_every=2)
        return c

    straight = run.train(config(4), str(tmp_path / "a"))
    run.train(config(2), str(tmp_path / "b"))
    resumed = run.train(config(4), str(tmp_path / "b"))
    assert int(resumed.ebm_optimizer.iterations) == 4
    for bank in resumed.banks.values():
        assert np.any(bank.counts.numpy() > 0)
    a, b = _state(straight), _state(resumed)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7, err_msg=key)
