"""The divergence guard: a NaN step and an exploding energy gap, injected
into real training runs, roll back with lower learning rates or halt; banks
never keep non-finite states."""

import glob

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from keras_ebm import regimes
from keras_ebm.configs import common, shortrun
from keras_ebm.errors import Diverged
from keras_ebm.models import EnergyModel
from keras_ebm.runs import checkpoints, training
from keras_ebm.sampling import SampleBank

pytestmark = pytest.mark.slow


def smoke(action, **guard):
    c = shortrun.get_config("smoke")
    c.train.update(num_steps=8, log_every=2, checkpoint_every=2, image_every=8)
    c.guard.update(action=action, **guard)
    return c


class Inject(keras.callbacks.Callback):
    """Before step `step + 1` (each time the run gets there, or only the
    first time), sets the EBM's last weights to `value` or multiplies them
    by `factor`: a diverging update, as the run would make it."""

    def __init__(self, step, value=None, factor=None, every_time=False):
        super().__init__()
        self.step, self.value, self.factor = step, value, factor
        self.every_time, self.count = every_time, 0

    def on_train_batch_begin(self, batch, logs=None):
        if int(self.model.ebm_optimizer.iterations) != self.step:
            return
        if self.count and not self.every_time:
            return
        self.count += 1
        kernel = self.model.energy_net.weights[-1]  # the last dense kernel
        if self.value is not None:
            kernel.assign(tf.fill(kernel.shape, self.value))
        else:
            kernel.assign(kernel * self.factor)


def train(config, workdir, inject):
    regime = regimes.REGIMES["shortrun"]
    return training.train(
        config, workdir, regime.build, regime.check, extra_callbacks=[inject]
    )


def tags(workdir):
    out = {}
    for path in glob.glob(f"{workdir}/tensorboard/events.*"):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                out.setdefault(v.tag, []).append(event.step)
    return out


def test_a_nan_step_rolls_back_with_lower_learning_rates(tmp_path, capsys):
    workdir = str(tmp_path)
    config = smoke("rollback", lr_factor=0.5)
    # A schedule: its scale is not in the optimizer's variables, so a
    # resume must apply the manifest's.
    config.optim.ebm_lr = common.schedule((0, 2e-4), (100, 1e-4))
    model = train(config, workdir, Inject(4, value=float("nan")))
    out = capsys.readouterr().out
    # Step 5 was non-finite; the state after step 4 produced it, so the run
    # went back to checkpoint 2, halved both rates and finished.
    assert "divergence guard: step 5: non-finite energies or gradients" in out
    assert "rolled back to step 2" in out and "learning rates x0.5" in out
    assert int(model.ebm_optimizer.iterations) == 8
    lr = float(model.ebm_optimizer.learning_rate.numpy())
    np.testing.assert_allclose(lr, 0.5 * config.optim.ebm_lr.rates[0], rtol=1e-6)
    lr = float(model.gen_optimizer.learning_rate.numpy())
    np.testing.assert_allclose(lr, 0.5 * config.optim.gen_lr.rates[0], rtol=1e-6)
    assert all(np.isfinite(w.numpy()).all() for w in model.weights)
    manifest = checkpoints.read_manifest(checkpoints.checkpoint_path(workdir, 8))
    assert (manifest["lr_scale"], manifest["rollbacks"]) == (0.5, 1)
    # What was saved after the trouble began is never resumed from.
    assert glob.glob(f"{workdir}/checkpoints/ckpt-00000004.weights.h5.diverged")
    assert 5 in tags(workdir)["guard"]
    # A resume keeps the lowered rates (from the manifest).
    config.train.num_steps = 10
    again = train(config, workdir, Inject(-1))
    lr = float(again.ebm_optimizer.learning_rate.numpy())
    np.testing.assert_allclose(lr, 0.5 * config.optim.ebm_lr.rates[0], rtol=1e-6)


def test_a_nan_step_halts_and_names_the_last_good_checkpoint(tmp_path):
    workdir = str(tmp_path)
    with pytest.raises(Diverged) as e:
        train(smoke("halt"), workdir, Inject(4, value=float("nan")))
    message = str(e.value)
    assert "training diverged at step 5 (non-finite energies or gradients)" in message
    good = checkpoints.checkpoint_path(workdir, 2)
    assert f"the last good checkpoint is {good}" in message
    assert [s for s, _ in checkpoints.list_checkpoints(workdir)] == [0, 2]


def test_rollbacks_are_bounded_then_the_run_halts(tmp_path, capsys):
    with pytest.raises(Diverged, match="after 2 rollbacks"):
        train(
            smoke("rollback", max_rollbacks=2),
            str(tmp_path),
            Inject(4, value=float("nan"), every_time=True),
        )
    out = capsys.readouterr().out
    assert "rollback 1 of 2" in out and "rollback 2 of 2" in out


@pytest.mark.parametrize("action", ["rollback", "halt"])
def test_an_exploding_gap_outside_the_band(tmp_path, capsys, action):
    # Healthy smoke gaps stay within +-0.3; x1e6 on the last layer sends
    # the gap far out of (-10, 10), and 2 steps out of band make an event.
    workdir = str(tmp_path)
    config = smoke(action, gap_band=(-10.0, 10.0), patience=2)
    inject = Inject(4, factor=1e6)
    if action == "halt":
        with pytest.raises(Diverged, match=r"at step 6 \(energy gap .* outside"):
            train(config, workdir, inject)
        return
    model = train(config, workdir, inject)
    out = capsys.readouterr().out
    assert "divergence guard: step 6: energy gap" in out
    assert "outside [-10, 10] for 2 steps" in out
    assert "rolled back to step 2" in out
    assert int(model.ebm_optimizer.iterations) == 8
    assert inject.count == 1


def test_off_reports_and_banks_stay_finite(tmp_path, capsys):
    # NaN weights from step 5 on: every chain is non-finite, and every row
    # written back restarts from the generator instead (count 0).
    workdir = str(tmp_path)
    model = train(smoke("off"), workdir, Inject(4, value=float("nan")))
    assert "divergence guard: step 5" in capsys.readouterr().out
    assert int(model.ebm_optimizer.iterations) == 8
    assert np.isfinite(model.bank.states.numpy()).all()
    assert np.isfinite(model.bank.latents.numpy()).all()
    assert "reinitialized_rows" in tags(workdir)


def test_bank_update_replaces_non_finite_rows_with_fresh_ones():
    bank = SampleBank(6, 3, (2,), latent_dim=1)
    bank.fill(tf.zeros((6, 2)), tf.zeros((6, 1)), counts=tf.fill((6,), 5))
    states = tf.constant([[1.0, 1.0], [np.nan, 0.0], [2.0, np.inf]])
    # The third fresh row is not finite either: that slot keeps its state.
    fresh = (tf.constant([[7.0, 7.0], [7.0, 7.0], [np.nan, 7.0]]), tf.fill((3, 1), 8.0))
    replaced = bank.update(
        tf.constant([4, 0, 2]),
        states,
        tf.constant([6, 6, 6]),
        tf.ones((3, 1)),
        fresh=fresh,
    )
    assert int(replaced) == 2
    np.testing.assert_array_equal(
        bank.states.numpy(), [[7, 7], [0, 0], [0, 0], [0, 0], [1, 1], [0, 0]]
    )
    np.testing.assert_array_equal(bank.counts.numpy(), [0, 5, 0, 5, 6, 5])
    np.testing.assert_array_equal(bank.latents.numpy()[:, 0], [8, 0, 8, 0, 1, 0])


class SqrtWeight(keras.Model):
    """`E(x) = sqrt(v) sum x + ||x||^2` at v = 0: finite energies whose
    gradient in v is infinite."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = (2,)
        self.v = self.add_weight(shape=(), initializer="zeros", name="v")

    def call(self, x, training=False):
        return ops.sqrt(self.v) * ops.sum(x, 1, keepdims=True) + ops.sum(
            x * x, 1, keepdims=True
        )


def test_a_non_finite_gradient_with_finite_energies_is_flagged():
    # The gap alone would look healthy here; `nonfinite` sees the gradient.
    model = EnergyModel(SqrtWeight(), num_steps=2, step_size=0.1)
    model.compile(keras.optimizers.SGD(1e-3))
    ds = tf.data.Dataset.from_tensors(tf.ones((4, 2))).repeat()
    logs = model.fit(ds, steps_per_epoch=1, epochs=1, verbose=0).history
    assert np.isfinite(logs["energy_gap"][0])
    assert logs["nonfinite"] == [1.0]


class SplitAndStop(keras.callbacks.Callback):
    """Before step 3: makes replica 1's copy of the EBM's first weight
    differ, then stops the run: a gap explosion the guard halts on, or a
    SIGTERM."""

    def __init__(self, stop):
        super().__init__()
        self.stop, self.done = stop, False

    def on_train_batch_begin(self, batch, logs=None):
        if self.done or int(self.model.ebm_optimizer.iterations.numpy()) != 2:
            return
        self.done = True
        copy = self.model.energy_net.weights[0].value.values[1]
        copy.assign(copy + 1.0)
        if self.stop == "diverged":
            kernel = self.model.energy_net.weights[-1]
            kernel.assign(kernel * 1e6)
        else:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("stop", ["diverged", "interrupted"])
def test_replicas_are_compared_after_a_stopped_run_too(tmp_path, monkeypatch, stop):
    # A halted or interrupted run's checkpoint is resumed from: its replicas
    # are checked as a finished run's are, and a disagreement is raised
    # (from the stop).
    from keras_ebm import distribute
    from keras_ebm.errors import Interrupted
    from tests.conftest import mirrored_strategy

    monkeypatch.setattr(distribute, "get_strategy", lambda name: mirrored_strategy())
    config = smoke("halt", gap_band=(-10.0, 10.0), patience=1)
    with pytest.raises(RuntimeError, match="replicas disagree on 1 variables") as e:
        train(config, str(tmp_path), SplitAndStop(stop))
    assert isinstance(
        e.value.__context__, Diverged if stop == "diverged" else Interrupted
    )
