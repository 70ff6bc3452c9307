"""SIGTERM (preemption) and SIGINT (Ctrl-C): training, the FID evaluation
and the attack save their state, stop with one line and resume to the
uninterrupted result."""

import os
import re
import signal
import time

import keras
import numpy as np
import pytest

from keras_ebm import run
from keras_ebm.configs import shortrun
from keras_ebm.defense import attack, purify
from keras_ebm.errors import Interrupted
from keras_ebm.evaluation import trajectory
from keras_ebm.runs import checkpoints, interrupt
from tests import processes
from tests.attack_test import D, gaussian_model, two_class

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_signal_mid_run_saves_the_step_and_exits_with_one_line(tmp_path, sig):
    workdir = str(tmp_path / "run")
    flags = processes.train_flags("shortrun", workdir, 2000)
    flags += ["--config.train.log_every=4", "--config.train.checkpoint_every=1000"]
    flags += ["--config.train.image_every=1000"]
    log = tmp_path / "train.log"
    proc = processes.start("train.py", flags, log)

    def steps_done():  # the progress bar's count (it may skip some)
        return max(map(int, re.findall(r"(\d+)/2000", processes.read(log))), default=0)

    # Past the first epoch (4 steps), between regular checkpoints (0, 1000).
    processes.wait_until(lambda: steps_done() >= 4, proc)
    proc.send_signal(sig)
    proc.wait(120)
    output = processes.read(log)
    assert proc.returncode == 128 + sig, output[-2000:]
    assert "Traceback" not in output
    step, path = processes.newest(workdir)
    assert 4 <= step < 1000
    (line,) = [x for x in output.splitlines() if x.startswith(sig.name)]
    assert line.startswith(f"{sig.name}: training at step {step} stopped;"), line
    assert f"checkpoint {path} written" in line and "Resume: python " in line
    assert "train.py --regime=shortrun --dataset=smoke" in line
    assert checkpoints.problem_of(path) is None


def _smoke(num_steps):
    c = shortrun.get_config("smoke")
    c.train.update(num_steps=num_steps, log_every=2, checkpoint_every=2)
    return c


class SignalAt(keras.callbacks.Callback):
    """Sends `sig` to this process as step `step + 1` begins (once)."""

    def __init__(self, step, sig):
        super().__init__()
        self.step, self.sig, self.sent = step, sig, False

    def on_train_batch_begin(self, batch, logs=None):
        if not self.sent and int(self.model.ebm_optimizer.iterations) == self.step:
            self.sent = True
            os.kill(os.getpid(), self.sig)


def test_resumed_from_a_mid_epoch_signal_equals_the_uninterrupted_run(tmp_path):
    # SIGTERM during step 3 of epochs of 2: a checkpoint of step 3, and the
    # resumed run first completes its epoch (step 4), then goes on; all of
    # it equals the run that was never stopped.
    straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
    run.train(_smoke(6), straight)
    from keras_ebm import regimes
    from keras_ebm.runs import training

    regime = regimes.REGIMES["shortrun"]
    with pytest.raises(Interrupted) as e:
        training.train(
            _smoke(6),
            stopped,
            regime.build,
            regime.check,
            extra_callbacks=[SignalAt(2, signal.SIGTERM)],
        )
    assert e.value.exit_code == 128 + signal.SIGTERM
    assert "SIGTERM: training at step 3 stopped" in str(e.value)
    assert [s for s, _ in checkpoints.list_checkpoints(stopped)] == [0, 2, 3]
    # Handlers are restored after the run.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    run.train(_smoke(6), stopped)
    a, b = [checkpoints.checkpoint_path(d, 6) for d in (straight, stopped)]
    assert processes.assert_same_checkpoints(a, b) > 20


def test_fid_chains_stop_on_a_signal_and_resume_to_the_same_curve(tmp_path):
    # Chains of a Gaussian random walk; a signal during the second chunk
    # leaves the state of the chunk's start; the resumed curve equals the
    # uninterrupted one.
    rng = np.random.default_rng(0)
    data = rng.normal(size=(64, 3)).astype("float32")
    stats = (data.mean(0), np.cov(data, rowvar=False))
    calls = []

    def advance(x, num_steps, seed, kill_at=None):
        calls.append(tuple(seed))
        if kill_at is not None and len(calls) == kill_at:
            os.kill(os.getpid(), signal.SIGINT)
        noise = np.random.default_rng(seed).normal(size=x.shape)
        return 0.9 * x + 0.1 * noise.astype("float32"), 0.0, 0.0

    def chains(path, kill_at=None):
        return trajectory.trajectory_fid(
            lambda b: np.full((8, 3), 3.0, "float32"),
            lambda x, k, s: advance(x, k, s, kill_at),
            lambda x: np.asarray(x),
            stats,
            32,
            8,
            (0, 4, 8),
            state_path=path,
            progress=False,
            chunk=2,
        )

    full = chains(str(tmp_path / "a.npz"))
    calls.clear()
    path = str(tmp_path / "b.npz")
    with interrupt.handled(), pytest.raises(Interrupted) as e:
        chains(path, kill_at=6)  # batch 1 of the chunk 2 -> 4
    assert "SIGINT: the FID evaluation stopped; chain states at step 2" in str(e.value)
    with np.load(path) as saved:
        assert int(saved["step"]) == 2
    resumed = chains(path)
    assert resumed["fid"] == full["fid"]
    assert not os.path.exists(trajectory.previous_state(path))


def test_a_corrupted_chain_state_falls_back_to_the_previous_one(tmp_path, caplog):
    stats = (np.zeros(2), np.eye(2))
    calls = []

    def advance(x, k, s):
        calls.append(s)
        return x * 0.5 + np.random.default_rng(s).normal(size=x.shape), 0.0, 0.0

    def chains(path, milestones):
        return trajectory.trajectory_fid(
            lambda b: np.ones((4, 2), "float32"),
            advance,
            lambda x: np.asarray(x, "float64"),
            stats,
            8,
            4,
            milestones,
            state_path=path,
            progress=False,
            chunk=1,
        )

    full = chains(str(tmp_path / "a.npz"), (0, 3))
    path = str(tmp_path / "b.npz")
    chains(path, (0, 3))
    # A kill between the two renames of a save leaves the state before it
    # as `.prev`; here the newest is garbage besides.
    os.replace(path, trajectory.previous_state(path))
    with open(path, "wb") as f:
        f.write(b"not a zip file")
    calls.clear()
    resumed = chains(path, (0, 3))
    assert path in caplog.text and os.path.exists(path + ".corrupt")
    assert resumed["fid"] == full["fid"]
    assert calls == []  # continued from `.prev` (complete), not restarted


def _attack_case(n, num_steps):
    """A noisy defense of images on the boundary: each record is decided
    by the purification noise (`attack_test`)."""
    clf, _ = two_class(seed=0)
    d = purify.DefendedClassifier(gaussian_model(), clf, 3)
    s = attack.AttackSettings(
        eps=0.3, step_size=0.1, num_steps=num_steps, adv_replicates=2, def_replicates=3
    )
    return d, np.zeros((n, D), "float32"), np.zeros(n, "int32"), s


def test_an_attack_stopped_mid_batch_resumes_to_the_uninterrupted_result(tmp_path):
    # Batches of 3 over 10 images (boundaries 3, 6, 9); SIGINT arrives in
    # the second PGD iterate of batch 2. Batches 0 and 1 are kept, batch 2
    # is attacked anew; every record equals the uninterrupted attack's.
    # The iterates' hooks need not run in order inside the compiled loop:
    # enough iterates that a later one sees the signal.
    d, x, y, s = _attack_case(10, num_steps=10)
    full = attack.evaluate(d, x, y, s, str(tmp_path / "a"), batch_size=3, seed=5)
    steps = []

    def on_step(iterate, accuracy):
        steps.append(int(iterate))
        if steps.count(1) == 3 and int(iterate) == 1:  # batch 2, iterate 1
            os.kill(os.getpid(), signal.SIGINT)
            # The kernel may hand the signal to another thread, later on a
            # loaded machine (CI saw it land in batch 3): hold this iterate
            # until it has arrived, as it does at once on an idle one.
            deadline = time.time() + 30
            while interrupt.requested() is None and time.time() < deadline:
                time.sleep(0.01)

    out = str(tmp_path / "b")
    with interrupt.handled(), pytest.raises(Interrupted) as e:
        attack.evaluate(d, x, y, s, out, batch_size=3, seed=5, on_step=on_step)
    assert "SIGINT: the attack in batch 2 of 4 stopped; batches 0-1 are saved" in str(
        e.value
    )
    assert sorted(p.name[:11] for p in (tmp_path / "b").glob("batch_*.npz")) == [
        "batch_00000",
        "batch_00001",
    ]
    resumed = attack.evaluate(d, x, y, s, out, batch_size=3, seed=5)
    assert resumed["per_image_robust"] == full["per_image_robust"]
    assert resumed["curve"] == full["curve"]


def test_a_corrupted_attack_batch_is_attacked_again(tmp_path, caplog):
    d, x, y, s = _attack_case(6, num_steps=2)
    out = str(tmp_path / "a")
    full = attack.evaluate(d, x, y, s, out, batch_size=3, seed=1)
    (first, _) = sorted((tmp_path / "a").glob("batch_*.npz"))
    with open(first, "r+b") as f:
        f.truncate(100)
    again = attack.evaluate(d, x, y, s, out, batch_size=3, seed=1)
    assert str(first) in caplog.text
    assert os.path.exists(str(first) + ".corrupt")
    assert again["per_image_robust"] == full["per_image_robust"]
