"""EnergyModel train steps, initialization options, save/restore."""

import numpy as np
import pytest
import tensorflow as tf
from absl.testing import parameterized

from keras_ebm import run
from keras_ebm.configs import shortrun


def smoke_config(**overrides):
    config = shortrun.get_config("smoke")
    for key, value in overrides.items():
        node = config
        *path, leaf = key.split(".")
        for part in path:
            node = node[part]
        node[leaf] = value
    return config


def data_batch(config, seed=0):
    shape = (config.train.batch_size,) + run.state_shape(config)
    return tf.random.stateless_uniform(shape, [seed, 0], -1, 1)


def one_step(model, config, seed=0):
    x = data_batch(config, seed)
    if model.init_source == "data":
        x = {"x": x, "x_init": data_batch(config, seed + 100)}
    ds = tf.data.Dataset.from_tensors(x).repeat()
    return model.fit(ds, steps_per_epoch=1, epochs=1, verbose=0, shuffle=False).history


def variables_by_path(model):
    # Optimizer variable paths are not unique across the two optimizers.
    out = {}
    for owner in (model, model.ebm_optimizer, model.gen_optimizer):
        if owner is not None:
            for v in owner.variables:
                out[f"{owner.name}:{v.path}"] = v.numpy()
    return out


class EnergyModelTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        ("hybrid", "generator", True),
        ("persistent", "noise", True),
        ("coop", "generator", False),
        ("data_persistent", "data", True),
        ("noise_shortrun", "noise", False),
    )
    @pytest.mark.slow
    def test_train_step_for_each_initialization(self, source, persistent):
        config = smoke_config(**{"init.source": source, "init.persistent": persistent})
        model = run.build_model(config)
        if model.bank is not None:
            init = data_batch(config, 5).numpy().repeat(4, 0)
            model.initialize_bank(init if source == "data" else None)
        before = [w.numpy() for w in model.energy_net.weights]
        history = one_step(model, config)
        self.assertTrue(np.isfinite(history["loss"][0]))
        after = [w.numpy() for w in model.energy_net.weights]
        self.assertTrue(any(np.any(a != b) for a, b in zip(before, after, strict=True)))
        self.assertEqual(int(model.ebm_optimizer.iterations), 1)
        self.assertEqual("gen_loss" in history, source == "generator")

    @pytest.mark.slow
    def test_frozen_generator(self):
        config = smoke_config(**{"generator.trainable": False})
        model = run.build_model(config)
        model.initialize_bank()
        before = [w.numpy() for w in model.generator.weights]
        history = one_step(model, config)
        self.assertNotIn("gen_loss", history)
        for a, b in zip(before, model.generator.weights, strict=True):
            self.assertAllEqual(a, b)

    @pytest.mark.slow
    def test_save_restore_round_trip_continues_identically(self):
        config = smoke_config()
        path = self.get_temp_dir() + "/m.weights.h5"
        model = run.build_model(config)
        model.initialize_bank()
        one_step(model, config, seed=1)
        one_step(model, config, seed=2)
        model.save_weights(path)
        clone = run.build_model(config)
        clone.load_weights(path)
        saved, restored = variables_by_path(model), variables_by_path(clone)
        self.assertLen(restored, len(saved))
        for (key, value), other in zip(saved.items(), restored.values(), strict=True):
            self.assertAllEqual(value, other, msg=key)
        self.assertEqual(int(clone.ebm_optimizer.iterations), 2)
        # The random stream is a function of the step: same next step.
        one_step(model, config, seed=3)
        one_step(clone, config, seed=3)
        self.assertAllClose(clone.bank.states, model.bank.states, atol=1e-5)
        self.assertAllEqual(clone.bank.counts, model.bank.counts)

    @pytest.mark.slow
    def test_sample_runs_the_model_potential(self):
        config = smoke_config()
        model = run.build_model(config)
        x = data_batch(config)
        x_k, stats = model.sample(x, num_steps=2)
        self.assertEqual(x_k.shape, x.shape)
        self.assertGreater(float(stats.drift_norm), 0.0)
