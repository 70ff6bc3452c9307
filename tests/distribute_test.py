"""One global bank under MirroredStrategy on two logical CPUs."""

import numpy as np
import tensorflow as tf

from keras_ebm import distribute, run
from tests.energy_model_test import data_batch, smoke_config


class DistributeTest(tf.test.TestCase):
    def test_mirrored_train_step_keeps_one_consistent_bank(self):
        strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
        config = smoke_config(**{"bank.rejuvenation_prob": 0.0, "bank.max_updates": 0})
        with strategy.scope():
            model = run.build_model(config)
        model.initialize_bank()
        before = model.bank.states.numpy().copy()
        ds = tf.data.Dataset.from_tensors(data_batch(config)).repeat()
        history = model.fit(
            ds, steps_per_epoch=1, epochs=1, verbose=0, shuffle=False
        ).history
        self.assertTrue(np.isfinite(history["loss"][0]))
        # Every replica holds the same, complete bank.
        for var in (model.bank.states, model.bank.counts, model.bank.latents):
            copies = [v.numpy() for v in var.value.values]
            self.assertLen(copies, 2)
            self.assertAllEqual(copies[0], copies[1])
        # Each replica updated B/2 distinct states of its own half.
        counts = model.bank.counts.numpy()
        half = model.bank.num_states // 2
        self.assertEqual(counts[:half].sum(), config.train.batch_size // 2)
        self.assertEqual(counts[half:].sum(), config.train.batch_size // 2)
        moved = np.any(model.bank.states.numpy() != before, axis=(1, 2, 3))
        self.assertAllEqual(moved, counts == 1)

    def test_replica_seeds_and_loss_scaling(self):
        strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])

        def fn():
            seed = distribute.replica_seed(tf.constant([1, 2]))
            noise = tf.random.stateless_normal((3,), seed)
            return noise, distribute.scale_for_replicas(tf.constant(1.0))

        noise, scaled = strategy.run(fn)
        a, b = (t.numpy() for t in strategy.experimental_local_results(noise))
        self.assertNotAllClose(a, b)
        self.assertAllEqual(
            [t.numpy() for t in strategy.experimental_local_results(scaled)],
            [0.5, 0.5],
        )
