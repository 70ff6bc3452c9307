"""MirroredStrategy on two logical CPUs: one global bank, and a step that
equals the same step on one device."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ebm import distribute, run
from keras_ebm.models import EnergyModel
from keras_ebm.runs import guard
from keras_ebm.sampling import SampleBank
from tests.conftest import mirrored_strategy
from tests.energy_model_test import data_batch, smoke_config
from tests.test_case import assert_trained_alike


class SqrtEnergy(keras.Model):
    """`E(x) = sqrt(v + ||x||^2)` at v = 0: finite everywhere, with an
    infinite gradient in v at x = 0."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = (2,)
        self.v = self.add_weight(shape=(), initializer="zeros", name="v")

    def call(self, x, training=False):
        return keras.ops.sqrt(self.v + keras.ops.sum(x * x, 1, keepdims=True))


def _fit_one(model, batch):
    ds = tf.data.Dataset.from_tensors(batch).repeat()
    return model.fit(ds, steps_per_epoch=1, epochs=1, verbose=0, shuffle=False).history


def _state(model):
    out = [v.numpy() for v in model.weights]
    for opt in (model.ebm_optimizer, model.gen_optimizer):
        out += [v.numpy() for v in opt.variables]
    return out


def _build(config, strategy=None, lr=1e-5):
    # A small step: with T 1e-4 the loss is 1e4 x the energy gap, and at SGD
    # 0.1 the weights grow by orders of magnitude per step, so float noise
    # between replica counts would swamp a second step.
    with (strategy or tf.distribute.get_strategy()).scope():
        model = run.build_model(config)
        model.compile(keras.optimizers.SGD(lr), keras.optimizers.SGD(lr))
    return model


def _mirrored():
    return mirrored_strategy()


class DistributeTest(tf.test.TestCase):
    @pytest.mark.slow
    def test_mirrored_step_equals_one_device_step(self):
        # Every random draw is made for the global batch and sliced per
        # replica, so two replicas with half a batch each must reproduce the
        # one-device step: bank rows, counts, latents, both networks and both
        # optimizers' moments. This proves the loss scaling (1/R) and the
        # gradient sum, and the bank's all_gather + scatter.
        # Plain SGD: Adam's update is invariant to the gradient's scale, so
        # it would hide a wrong loss scaling.
        config = smoke_config(**{"bank.rejuvenation_prob": 0.5})
        single = run.build_model(config)
        single.compile(keras.optimizers.SGD(0.1), keras.optimizers.SGD(0.1))
        single.initialize_bank()
        strategy = mirrored_strategy()
        with strategy.scope():
            mirrored = run.build_model(config)
            mirrored.compile(keras.optimizers.SGD(0.1), keras.optimizers.SGD(0.1))
        mirrored.set_weights(single.get_weights())
        batch = data_batch(config)
        one = _fit_one(single, batch)
        two = _fit_one(mirrored, batch)
        self.assertAllClose(one["loss"], two["loss"], rtol=1e-4)
        self.assertAllClose(one["gen_loss"], two["gen_loss"], rtol=1e-4)
        self.assertGreater(one["rejuvenated"][0], 0.0)
        for a, b in zip(_state(single), _state(mirrored), strict=True):
            self.assertAllClose(a, b, rtol=1e-4, atol=1e-5)
        # Every replica holds the same, complete bank.
        for var in (mirrored.bank.states, mirrored.bank.counts, mirrored.bank.latents):
            copies = [v.numpy() for v in var.value.values]
            self.assertLen(copies, 2)
            self.assertAllEqual(copies[0], copies[1])

    @pytest.mark.slow
    def test_checkpoints_move_between_replica_counts(self):
        # A run saved on 2 replicas resumes on 1 and one saved on 1 resumes
        # on 2; either way its next step is the step of a run that never
        # moved (bank rows, counts, latents, networks, optimizers).
        # Compared against how far the two steps moved each array (a step
        # of SGD at 1e-5 moves the generator by ~1e-5: a fixed atol of that
        # size checked none of it).
        config = smoke_config(**{"bank.rejuvenation_prob": 0.5})
        batch = data_batch(config)
        start = _build(config)
        start.initialize_bank()
        reference = _build(config)
        reference.set_weights(start.get_weights())
        for _ in range(2):
            _fit_one(reference, batch)
        for first, then in ((_mirrored(), None), (None, _mirrored())):
            a = _build(config, first)
            a.set_weights(start.get_weights())
            _fit_one(a, batch)
            path = os.path.join(self.get_temp_dir(), "ckpt.weights.h5")
            a.save_weights(path)
            b = _build(config, then)
            b.load_weights(path)
            _fit_one(b, batch)
            assert_trained_alike(b, reference, start)
            if then is not None:
                for var in (b.bank.states, b.bank.counts, b.bank.latents):
                    copies = [v.numpy() for v in var.value.values]
                    self.assertAllEqual(copies[0], copies[1])

    def test_sampling_spread_over_replicas_equals_one_device(self):
        # FID chains spread over the replicas (`sample(spread=True)`): each
        # replica runs its rows with its rows of the global noise.
        config = smoke_config()
        single = _build(config)
        mirrored = _build(config, _mirrored())
        mirrored.set_weights(single.get_weights())
        x = data_batch(config)
        want, want_stats = single.sample(x, 4, seed=[3, 4])
        got, got_stats = mirrored.sample(x, 4, seed=[3, 4], spread=True)
        self.assertAllClose(got, want, rtol=1e-5, atol=1e-5)
        for a, b in zip(got_stats, want_stats, strict=True):
            self.assertAllClose(a, b, rtol=1e-5)

    def test_replicas_agree_names_a_diverged_copy(self):
        strategy = _mirrored()
        with strategy.scope():
            same = keras.Variable(np.arange(6.0), name="same")
            apart = keras.Variable(np.zeros(3, "int32"), name="apart")
        self.assertEqual(distribute.check_replicas_agree([same, apart], strategy), 2)

        def diverge():  # aggregation "none": each replica writes its own copy
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            apart.value.assign(tf.fill([3], rid))

        strategy.run(tf.function(diverge))
        with self.assertRaisesRegex(RuntimeError, "disagree on 1 variables: apart"):
            distribute.check_replicas_agree([same, apart], strategy)

    def test_replicas_agree_sees_a_swap_that_keeps_a_checksum(self):
        # Two elements 1,009 apart swapped on one replica: the same
        # index-weighted checksum (weights repeating every 1,009), other
        # bytes.
        strategy = _mirrored()
        with strategy.scope():
            bank = keras.Variable(np.arange(2048.0), name="bank", aggregation="none")
        values = np.arange(2048.0)
        values[[3, 3 + 1009]] = values[[3 + 1009, 3]]

        def swap():
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            bank.value.assign(tf.where(rid == 1, values, np.arange(2048.0)))

        strategy.run(tf.function(swap))
        with self.assertRaisesRegex(RuntimeError, "disagree on 1 variables: bank"):
            distribute.check_replicas_agree([bank], strategy)

    def test_the_guard_sees_one_bad_replica(self):
        # Finite energies everywhere, a gradient that is infinite on the
        # second replica only (its positives sit where sqrt(v + |x|^2) has
        # an infinite slope in v): one bad replica of two must read 1, not
        # 0.5, or the guard's `> 0.5` misses it.
        strategy = _mirrored()
        with strategy.scope():
            model = EnergyModel(SqrtEnergy(), num_steps=1, step_size=0.1)
            model.compile(keras.optimizers.SGD(1e-3))
        x = np.ones((4, 2), "float32")
        x[2:] = 0.0  # replica 1's rows
        watch = guard.Guard((-1e9, 1e9), patience=100)
        ds = tf.data.Dataset.from_tensors(x).repeat()
        logs = model.fit(
            ds, steps_per_epoch=1, epochs=1, verbose=0, callbacks=[watch]
        ).history
        self.assertTrue(np.isfinite(logs["energy_gap"][0]))
        self.assertEqual(logs["nonfinite"], [1.0])
        self.assertIsNotNone(watch.event)
        self.assertIn("non-finite", watch.event.cause)

    def test_reinitialized_rows_is_the_total_over_replicas(self):
        # Replica 0 writes 2 finite rows, replica 1 one finite and one NaN
        # row: 1 row replaced in all, on every replica.
        strategy = _mirrored()
        with strategy.scope():
            bank = SampleBank(8, 4, (2,))
        states = tf.constant([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [np.nan, 0.0]])

        def update():
            ctx = tf.distribute.get_replica_context()
            r = ctx.replica_id_in_sync_group
            rows = states[2 * r : 2 * r + 2]
            return bank.update(
                tf.range(2 * r, 2 * r + 2),
                rows,
                tf.ones(2, "int32"),
                fresh=(tf.fill((2, 2), 7.0), None),
            )

        replaced = strategy.experimental_local_results(
            strategy.run(tf.function(update))
        )
        self.assertAllEqual([int(r) for r in replaced], [1, 1])
        self.assertAllEqual(bank.states.numpy()[:4], [[1, 1], [2, 2], [3, 3], [7, 7]])

    def test_replica_rows_and_loss_scaling(self):
        strategy = mirrored_strategy()
        seed = tf.constant([1, 2])

        def fn():
            rows = distribute.replica_rows(
                lambda shape: tf.random.stateless_normal(shape, seed), (3, 2)
            )
            return rows, distribute.scale_for_replicas(tf.constant(1.0))

        rows, scaled = strategy.run(fn)
        a, b = (t.numpy() for t in strategy.experimental_local_results(rows))
        whole = tf.random.stateless_normal((6, 2), seed).numpy()
        self.assertAllEqual(np.concatenate([a, b]), whole)
        self.assertAllEqual(
            [t.numpy() for t in strategy.experimental_local_results(scaled)],
            [0.5, 0.5],
        )
