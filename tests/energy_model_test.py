"""EnergyModel train steps, initialization options, save/restore."""

from functools import partial

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


# === Serialization ===

# Every constructor argument at a value other than its default, so that a
# field missing from `get_config` shows as a different rebuilt model.
SETTINGS = dict(
    num_steps=3,
    step_size=0.05,
    temperature=0.5,
    data_noise_std=0.01,
    generator_batch_stats=True,
    max_drift_norm=0.3,
    prior_temperature=2.0,
    tau=2.5,
    seed=7,
)
BANK = dict(
    size=18, batch_size=4, state_shape=(2,), rejuvenation_prob=0.25, max_updates=9
)


def _coop_model():
    from keras_ebm import networks
    from keras_ebm.models import EnergyModel
    from keras_ebm.sampling import SampleBank

    gen = networks.build("gen_toy", latent_dim=3)
    return EnergyModel(
        networks.build("ebm_toy"),
        bank=SampleBank(latent_dim=3, **BANK),
        generator=gen,
        init_source="generator",
        prior_net=networks.build("ebm_toy"),
        **SETTINGS,
    )


def _longrun_model():
    from keras_ebm import networks
    from keras_ebm.models import LongrunEnergyModel
    from keras_ebm.sampling import SampleBank

    bank = dict(BANK, rejuvenation_prob=0.0, max_updates=0)
    return LongrunEnergyModel(
        networks.build("ebm_toy"),
        burnin_bank=SampleBank(**dict(bank, size=12)),
        burnin_steps=2,
        burnin_length=3,
        bank=SampleBank(**bank),
        init_source="noise",
        **SETTINGS,
    )


def _compiled(model):
    import keras

    gen = keras.optimizers.Adam(2e-3) if model.train_generator else None
    model.compile(keras.optimizers.Adam(1e-3), gen)
    return model


def _assert_same_model(clone, model):
    assert type(clone) is type(model)
    for name in list(SETTINGS) + ["init_source", "train_generator"]:
        assert getattr(clone, name) == getattr(model, name), name
    for name in ("burnin_steps", "burnin_length"):
        assert getattr(clone, name, None) == getattr(model, name, None), name
    for name in ("bank", "burnin_bank", "generator", "prior_net", "energy_net"):
        a, b = getattr(clone, name, None), getattr(model, name, None)
        assert (a is None) == (b is None), name
        if b is not None:
            assert a.get_config() == b.get_config(), name


def _toy_data(model):
    x = np.random.default_rng(0).normal(size=(4, 2)).astype("float32")
    return tf.data.Dataset.from_tensors(x).repeat()


def test_sample_bank_config_round_trip():
    from keras_ebm.sampling import SampleBank

    bank = SampleBank(latent_dim=3, name="bank_x", **BANK)
    clone = SampleBank.from_config(bank.get_config())
    for name in list(BANK) + ["latent_dim", "num_states", "name"]:
        assert getattr(clone, name) == getattr(bank, name), name
    assert clone.latents.shape == (16, 3)


@pytest.mark.parametrize("build", [_coop_model, _longrun_model])
def test_config_round_trip(build):
    model = build()
    clone = type(model).from_config(model.get_config())
    _assert_same_model(clone, model)
    x = np.random.default_rng(1).normal(size=(5, 2)).astype("float32")
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(clone.energy(x), model.energy(x))


@pytest.mark.slow
@pytest.mark.parametrize("build", [_coop_model, _longrun_model])
def test_keras_file_round_trip_continues_identically(build, tmp_path):
    import keras

    model = _compiled(build())
    model.initialize_bank()
    data = _toy_data(model)
    model.fit(data, steps_per_epoch=2, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    clone = keras.models.load_model(path)
    _assert_same_model(clone, model)
    # Every variable, both optimizers included (their step counters drive
    # the random stream), then the same next step.
    saved, restored = variables_by_path(model), variables_by_path(clone)
    assert len(restored) == len(saved) > 0
    for (key, value), other in zip(saved.items(), restored.values(), strict=True):
        np.testing.assert_array_equal(value, other, err_msg=key)
    for m in (model, clone):
        m.fit(data, steps_per_epoch=1, epochs=1, verbose=0)
    for a, b in zip(model.get_weights(), clone.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_bank_without_the_generators_latents_is_refused_at_fit():
    import keras

    from keras_ebm import networks
    from keras_ebm.models import EnergyModel
    from keras_ebm.sampling import SampleBank

    gen = networks.build("gen_toy", latent_dim=3)
    for latent_dim in (0, 2):
        model = EnergyModel(
            networks.build("ebm_toy"),
            num_steps=1,
            step_size=0.1,
            bank=SampleBank(16, 4, (2,), latent_dim=latent_dim),
            generator=gen,
            init_source="generator",
        )
        model.compile(keras.optimizers.Adam(1e-3), keras.optimizers.Adam(1e-3))
        data = _toy_data(model)
        fit = partial(model.fit, data, steps_per_epoch=1, epochs=1, verbose=0)
        for call in (fit, model.initialize_bank):
            with pytest.raises(ValueError) as e:
                call()
            message = str(e.value)
            assert "\n" not in message
            want = f"latents of width {latent_dim} but the generator takes 3"
            assert want in message and "latent_dim=3" in message
        assert int(model.ebm_optimizer.iterations.numpy()) == 0


def test_rejuvenation_draws_latents_from_the_generators_distribution():
    # Not always N(0, I): BigGAN-deep draws a truncated z and a class
    # (`sample_latent`); the model must take what the generator draws.
    import keras

    from keras_ebm import networks
    from keras_ebm.models import EnergyModel
    from keras_ebm.sampling import SampleBank

    class OwnLatents(keras.Model):
        latent_dim = 2

        def __init__(self):
            super().__init__()
            self.image_shape = (2,)
            self.dense = keras.layers.Dense(2)

        def sample_latent(self, shape, seed):
            return tf.fill(shape, 3.0)

        def call(self, z, training=False):
            return self.dense(z)

    model = EnergyModel(
        networks.build("ebm_toy"),
        num_steps=1,
        step_size=0.1,
        bank=SampleBank(8, 4, (2,), latent_dim=2),
        generator=OwnLatents(),
        init_source="generator",
        train_generator=False,
    )
    np.testing.assert_array_equal(model.latent(4, tf.constant([0, 1])), 3.0)
    model.initialize_bank()
    np.testing.assert_array_equal(model.bank.latents.numpy(), 3.0)
