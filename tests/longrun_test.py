"""Longrun: one step by hand (burn-in, transfer, update on the update batch
only), burn-in counts, checks, export of the full potential."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ebm import run
from keras_ebm.configs import longrun, prior
from keras_ebm.models import LongrunEnergyModel
from keras_ebm.runs import training
from keras_ebm.sampling import SampleBank
from tests.linear_nets import LinearEnergy

D, B, N_UPDATE, N_BURNIN, LENGTH = 3, 4, 8, 8, 3
T, EPS, LR = 0.5, 0.2, 0.1


def build(num_steps, burnin_steps, source="noise"):
    rng = np.random.default_rng(0)
    model = LongrunEnergyModel(
        LinearEnergy(D, w=rng.normal(size=D)),
        burnin_bank=SampleBank(N_BURNIN, B, (D,)),
        burnin_steps=burnin_steps,
        burnin_length=LENGTH,
        num_steps=num_steps,
        step_size=EPS,
        temperature=T,
        bank=SampleBank(N_UPDATE, B, (D,)),
        init_source=source,
        seed=5,
    )
    model.compile(keras.optimizers.SGD(LR))
    model.bank.fill(tf.constant(rng.normal(size=(N_UPDATE, D)) + 100, tf.float32))
    model.burnin_bank.fill(
        tf.constant(rng.normal(size=(N_BURNIN, D)) - 100, tf.float32)
    )
    return model


def chain(x, w, seed, steps):
    """Langevin on E = <w, x> / T by hand, noise from `fold_in(seed, k)`."""
    noise = sum(
        tf.random.stateless_normal(
            x.shape, tf.random.experimental.stateless_fold_in(seed, k)
        ).numpy()
        for k in range(steps)
    )
    return x - steps * (EPS**2 / 2) * w / T + EPS * noise


@pytest.mark.parametrize("num_steps, burnin_steps", [(0, 0), (2, 3)])
def test_step_equals_hand_computation(num_steps, burnin_steps):
    model = build(num_steps, burnin_steps)
    seeds = model.step_seeds(0)
    idx = model.bank.draw_indices(seeds.draw).numpy()
    idx_b = model.burnin_bank.draw_indices(seeds.burnin_draw).numpy()
    # Burn-in counts at the drawn rows: D-1 stays, D and more transfer.
    counts_b = np.zeros(N_BURNIN, "int32")
    counts_b[idx_b] = [LENGTH - 1, LENGTH, 0, LENGTH + 2]
    counts_u = np.arange(N_UPDATE, dtype="int32")
    model.burnin_bank.counts.assign(counts_b)
    model.bank.counts.assign(counts_u)
    transfer = counts_b[idx_b] >= LENGTH
    w = model.energy_net.w.numpy()
    x_u = model.bank.states.numpy()[idx]
    x_b = model.burnin_bank.states.numpy()[idx_b]
    fresh = tf.random.stateless_uniform((B, D), seeds.fresh, -1, 1).numpy()
    x_u_new = chain(x_u, w, seeds.langevin, num_steps)
    x_b_new = chain(x_b, w, seeds.burnin, burnin_steps)
    x_pos = np.random.default_rng(1).normal(size=(B, D)).astype("float32")

    ds = tf.data.Dataset.from_tensors(tf.constant(x_pos)).repeat()
    history = model.fit(
        ds, steps_per_epoch=1, epochs=1, verbose=0, shuffle=False
    ).history

    tr = transfer[:, None]
    np.testing.assert_allclose(
        model.bank.states.numpy()[idx], np.where(tr, x_b_new, x_u_new), rtol=1e-5
    )
    np.testing.assert_allclose(
        model.burnin_bank.states.numpy()[idx_b],
        np.where(tr, fresh, x_b_new),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_array_equal(
        model.bank.counts.numpy()[idx], np.where(transfer, 0, counts_u[idx] + 1)
    )
    np.testing.assert_array_equal(
        model.burnin_bank.counts.numpy()[idx_b],
        np.where(transfer, 0, counts_b[idx_b] + 1),
    )
    # The gradient sees the update batch only (no data noise here).
    want = w - LR * (x_pos.mean(0) - x_u_new.mean(0)) / T
    np.testing.assert_allclose(model.energy_net.w.numpy(), want, rtol=1e-5)
    assert history["transferred"][0] == pytest.approx(transfer.mean())
    # Mean energy of the transferred states, under the updated weights.
    e = (x_b_new[transfer] @ model.energy_net.w.numpy()).mean()
    assert history["transferred_energy"][0] == pytest.approx(e, rel=1e-4)


def test_burnin_counts_start_uniform_below_d():
    big = LongrunEnergyModel(
        LinearEnergy(D),
        burnin_bank=SampleBank(4000, B, (D,)),
        burnin_steps=1,
        burnin_length=10,
        num_steps=1,
        step_size=EPS,
        bank=SampleBank(N_UPDATE, B, (D,)),
    )
    big.initialize_bank()
    counts = big.burnin_bank.counts.numpy()
    assert counts.min() == 0 and counts.max() == 9
    hist = np.bincount(counts, minlength=10)
    assert np.all(np.abs(hist - 400) < 80)
    assert np.all(big.bank.counts.numpy() == 0)
    assert np.all(np.abs(big.burnin_bank.states.numpy()) <= 1.0)


def test_data_initialized_banks_take_rows_of_their_own():
    # The reference draws the burn-in bank's data apart from the update
    # bank's: no burn-in state starts as a copy of an update-bank state.
    from keras_ebm import data
    from keras_ebm.regimes import longrun as longrun_regime

    config = longrun.get_config("smoke")
    config.init.source = "data"
    model = longrun_regime.build(config)
    source = data.images(config)
    model.initialize_bank(training.initial_data(config, model, source))
    update = model.bank.states.numpy().reshape(model.bank.num_states, -1)
    burnin = model.burnin_bank.states.numpy().reshape(model.burnin_bank.num_states, -1)
    assert len(np.unique(update, axis=0)) == len(update)
    same = (update[:, None] == burnin[None]).all(-1)
    assert not same.any()
    # Both banks hold data: each burn-in state is a row of the dataset.
    rows = data.take_array(source, len(update) + len(burnin)).reshape(
        len(update) + len(burnin), -1
    )
    np.testing.assert_array_equal(burnin, rows[len(update) :])


def test_update_bank_is_never_rejuvenated():
    with pytest.raises(ValueError, match="never rejuvenated"):
        LongrunEnergyModel(
            LinearEnergy(D),
            burnin_bank=SampleBank(8, B, (D,)),
            burnin_steps=1,
            burnin_length=2,
            num_steps=1,
            step_size=EPS,
            bank=SampleBank(8, B, (D,), rejuvenation_prob=0.1),
        )


def test_missing_prior_run_names_the_command(tmp_path):
    config = longrun.get_config("smoke")
    config.prior.workdir = str(tmp_path / "no_prior")
    with pytest.raises(run.ConfigError, match="--regime=prior --dataset=digits"):
        run.train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_missing_generator_names_the_command(tmp_path):
    config = prior.get_config("digits")
    config.generator.weights = str(tmp_path / "nothing")
    with pytest.raises(run.ConfigError, match="--regime=shortrun --dataset=digits"):
        run.train(config, str(tmp_path / "run"))


@pytest.mark.slow
def test_export_energy_is_the_full_potential(tmp_path):
    p = prior.get_config("smoke")
    run.train(p, str(tmp_path / "prior"))
    config = longrun.get_config("smoke")
    config.prior.workdir = str(tmp_path / "prior")
    config.langevin.tau = 0.5
    # T_prior apart from T, so that each term's temperature wiring shows.
    config.prior.temperature = 3 * config.langevin.temperature
    model = run.train(config, str(tmp_path / "lr"))
    assert model.prior_temperature == config.prior.temperature
    x = tf.random.uniform((3, 8, 8, 1), -1, 1, seed=1)
    e = model.energy(x).numpy() / config.langevin.temperature
    e_prior = model.prior_energy(x).numpy() / config.prior.temperature
    gauss = tf.reduce_sum(x**2, axis=(1, 2, 3)).numpy() / (2 * 0.25)
    loaded = tf.saved_model.load(run.export(config, str(tmp_path / "lr")))
    np.testing.assert_allclose(loaded.energy(x), e + e_prior + gauss, rtol=1e-5)
    # The prior is the prior run's trained network, frozen.
    trained_prior = training.network_of_run(str(tmp_path / "prior"), "energy_net")
    np.testing.assert_allclose(
        model.prior_energy(x), tf.reshape(trained_prior(x), (-1,)), rtol=1e-6
    )
    assert not model.prior_net.trainable


def test_grids_name_the_banks_and_the_chains_for_what_they_are():
    # The update bank (around +100) trains the model, the burn-in bank
    # (around -100) feeds it; the init + K steps grid is neither.
    from keras_ebm.runs.callbacks import snapshot

    model = build(num_steps=2, burnin_steps=1)
    grids = snapshot(model, 4)
    assert set(grids) == {"update_bank", "burnin_bank", "noise_plus_2_steps"}
    assert np.all(grids["update_bank"] > 90) and np.all(grids["burnin_bank"] < -90)
    assert np.all(np.abs(grids["noise_plus_2_steps"]) < 10)
