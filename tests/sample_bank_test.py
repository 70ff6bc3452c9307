"""Bank semantics: distinct draws, rejuvenation rules, in-place write-back."""

import importlib

import numpy as np
import pytest
import tensorflow as tf

from keras_ebm import regimes
from keras_ebm.sampling import SampleBank
from tests.conftest import mirrored_strategy


class SampleBankTest(tf.test.TestCase):
    def test_effective_size_rounds_down_to_batch_multiple(self):
        self.assertEqual(SampleBank(10000, 128, (2,)).num_states, 9984)
        self.assertEqual(SampleBank(25000, 128, (2,)).num_states, 24960)

    def test_draws_are_distinct_and_uniform(self):
        bank = SampleBank(64, 16, (2,))
        hits = np.zeros(64)
        for i in range(400):
            idx = bank.draw_indices(tf.constant([i, 0])).numpy()
            self.assertLen(set(idx), 16)
            hits[idx] += 1
        # Each state is drawn with probability 1/4: 100 of 400 draws expected.
        self.assertAllClose(hits.mean(), 100.0)
        self.assertLess(np.abs(hits - 100).max(), 45)

    def test_replicas_share_the_one_device_draw(self):
        bank = SampleBank(64, 16, (2,))
        seed = tf.constant([0, 0])
        strategy = mirrored_strategy()
        shares = strategy.experimental_local_results(
            strategy.run(lambda: bank.draw_indices(seed))
        )
        self.assertLen(shares, 2)
        self.assertLen(shares[0], 8)
        whole = bank.draw_indices(seed).numpy()
        self.assertAllEqual(np.concatenate([s.numpy() for s in shares]), whole)

    def test_rejuvenation_probability_and_cap(self):
        counts = tf.constant([0, 1, 2, 3, 4, 0, 0, 0])
        seed = tf.constant([1, 1])
        never = SampleBank(8, 8, (2,), rejuvenation_prob=0.0, max_updates=2)
        self.assertAllEqual(never.rejuvenation_mask(counts, seed), counts.numpy() > 2)
        always = SampleBank(8, 8, (2,), rejuvenation_prob=1.0)
        self.assertTrue(np.all(always.rejuvenation_mask(counts, seed)))
        no_cap = SampleBank(8, 8, (2,), rejuvenation_prob=0.0, max_updates=0)
        self.assertFalse(np.any(no_cap.rejuvenation_mask(counts + 100, seed)))
        half = SampleBank(8, 8, (2,), rejuvenation_prob=0.3)
        rate = np.mean(
            [
                half.rejuvenation_mask(tf.zeros(8, "int32"), tf.constant([i, 9]))
                for i in range(500)
            ]
        )
        self.assertAllClose(rate, 0.3, atol=0.03)

    def test_update_writes_rows_in_place(self):
        bank = SampleBank(8, 4, (3,), latent_dim=2)
        bank.fill(tf.zeros((8, 3)), tf.zeros((8, 2)))
        state_var = bank.states.value
        idx = tf.constant([1, 5, 6, 7])
        rows = tf.reshape(tf.range(12, dtype=tf.float32), (4, 3))
        bank.update(idx, rows, tf.constant([1, 2, 3, 4]), tf.ones((4, 2)))
        self.assertIs(bank.states.value, state_var)
        states, counts, latents = bank.draw(idx)
        self.assertAllEqual(states, rows)
        self.assertAllEqual(counts, [1, 2, 3, 4])
        self.assertAllEqual(latents, tf.ones((4, 2)))
        untouched = bank.draw(tf.constant([0, 2, 3, 4]))
        self.assertAllEqual(untouched[0], tf.zeros((4, 3)))
        self.assertAllEqual(untouched[1], [0, 0, 0, 0])

    def test_bad_sizes(self):
        with self.assertRaisesRegex(ValueError, "at least the batch"):
            SampleBank(8, 16, (2,))
        with self.assertRaisesRegex(ValueError, "rejuvenation_prob"):
            SampleBank(16, 8, (2,), rejuvenation_prob=1.5)


def _bank_ops(model, config, strategy):
    """`{op type}` of every op of the traced training step (one replica's
    batch on each) that takes a bank variable (states, counts, latents) of
    any bank of `model`, on any replica."""
    from tests.energy_model_test import data_batch

    handles = []
    for bank in model.banks.values():
        for v in (bank.states, bank.counts, bank.latents):
            if v is not None:
                handles += list(getattr(v.value, "values", None) or [v.value])
    handles = {id(h.handle) for h in handles}
    x = data_batch(config)
    x = x[: x.shape[0] // strategy.num_replicas_in_sync]
    if model.init_source == "data":
        x = {"x": x, "x_init": x}
    step = tf.function(lambda x: strategy.run(model.train_step, (x,)))
    graph = step.get_concrete_function(
        tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), x)
    ).graph
    inner = {t.name for outer, t in graph.captures if id(outer) in handles}
    assert len(inner) == len(handles)  # every copy of every bank variable
    return {
        op.type for op in graph.get_operations() for t in op.inputs if t.name in inner
    }


class BankWriteTest(tf.test.TestCase):
    @pytest.mark.slow
    def test_the_step_reads_and_writes_the_banks_only_sparsely(self):
        # O(B) per step whatever the bank size: B rows gathered and B rows
        # scattered on each replica's copy, and nothing else: a dense write
        # (`assign` of a scattered copy) or a dense read (`bank.counts` for
        # a mean, `tf.gather` of a mirrored variable) copies the whole bank
        # every step.
        for regime in ("shortrun", "longrun"):
            config = importlib.import_module(f"keras_ebm.configs.{regime}")
            config = config.get_config("smoke")
            for strategy in (tf.distribute.get_strategy(), mirrored_strategy()):
                replicas = strategy.num_replicas_in_sync
                with self.subTest(regime=regime, replicas=replicas):
                    with strategy.scope():
                        model = regimes.REGIMES[regime].build(config)
                    self.assertEqual(
                        _bank_ops(model, config, strategy),
                        {"ResourceGather", "ResourceScatterUpdate"},
                    )
