"""One training step against a hand computation.

With a linear energy and a linear generator every quantity of a step has a
closed form: the Langevin chain (`grad_x E = w`), the ML gradient
`(mean(x+ + s n) - mean x-) / T` and the generator gradient
`-2 z^T (x- - z A) / B`. The random draws are reproduced from the step's
seeds (`EnergyModel.step_seeds`), so a wrong sign, a swapped branch or a
missing term in `train_step` changes the numbers compared here.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ebm.models import EnergyModel
from keras_ebm.sampling import SampleBank
from tests.linear_nets import LinearEnergy, LinearGenerator

D, L, B, N = 3, 2, 4, 8
T, EPS, S = 0.5, 0.2, 0.1
LR, GEN_LR = 0.1, 0.05


def build(source, num_steps, p, cap, counts, persistent=True):
    rng = np.random.default_rng(0)
    energy = LinearEnergy(D, w=rng.normal(size=D))
    gen = None
    if source == "generator":
        gen = LinearGenerator(L, D, a=rng.normal(size=(L, D)))
    bank = None
    if persistent:
        bank = SampleBank(
            N,
            B,
            (D,),
            latent_dim=L if gen is not None else 0,
            rejuvenation_prob=p,
            max_updates=cap,
        )
    model = EnergyModel(
        energy,
        num_steps=num_steps,
        step_size=EPS,
        temperature=T,
        data_noise_std=S,
        bank=bank,
        generator=gen,
        init_source=source,
        seed=3,
    )
    model.compile(
        keras.optimizers.SGD(LR), keras.optimizers.SGD(GEN_LR) if gen else None
    )
    if bank is not None:
        # Rows far apart, so that each written row tells where it came from.
        states = rng.normal(size=(N, D)) + 10.0 * np.arange(N)[:, None]
        latents = rng.normal(size=(N, L)) if gen is not None else None
        bank.fill(
            tf.constant(states, tf.float32),
            None if latents is None else tf.constant(latents, tf.float32),
            tf.constant(counts, tf.int32),
        )
    return model


def fit_one_step(model, x_pos, x_data):
    batch = x_pos if x_data is None else {"x": x_pos, "x_init": x_data}
    ds = tf.data.Dataset.from_tensors(batch).repeat()
    return model.fit(ds, steps_per_epoch=1, epochs=1, verbose=0, shuffle=False).history


def expected_step(model, x_pos, x_data):
    """The step by hand, from the state before it. Returns a dict."""
    seeds = model.step_seeds(0)
    w = model.energy_net.w.numpy()
    k = model.num_steps
    out = {}
    if model.init_source == "generator":
        z_new = tf.random.stateless_normal((B, L), seeds.fresh).numpy()
        fresh = z_new @ model.generator.a.numpy()
    elif model.init_source == "data":
        z_new, fresh = None, x_data
    else:
        z_new = None
        fresh = tf.random.stateless_uniform((B, D), seeds.fresh, -1, 1).numpy()
    if model.bank is not None:
        idx = model.bank.draw_indices(seeds.draw).numpy()
        old = model.bank.states.numpy()[idx]
        counts = model.bank.counts.numpy()[idx]
        u = tf.random.stateless_uniform((B,), seeds.mask).numpy()
        mask = u < model.bank.rejuvenation_prob
        if model.bank.max_updates > 0:
            mask |= counts > model.bank.max_updates
        x0 = np.where(mask[:, None], fresh, old)
        out.update(idx=idx, mask=mask, counts=np.where(mask, 0, counts + 1))
        if z_new is not None:
            z_old = model.bank.latents.numpy()[idx]
            out["z"] = np.where(mask[:, None], z_new, z_old)
    else:
        x0 = fresh
        out["z"] = z_new
    # grad_x U = w / T for every sample: the drift is the same for all.
    noise = sum(
        tf.random.stateless_normal(
            (B, D), tf.random.experimental.stateless_fold_in(seeds.langevin, i)
        ).numpy()
        for i in range(k)
    )
    x_neg = x0 - k * (EPS**2 / 2) * w / T + EPS * noise
    x_plus = x_pos + S * tf.random.stateless_normal((B, D), seeds.data_noise).numpy()
    out["x_neg"] = x_neg
    out["loss"] = (np.mean(x_plus @ w) - np.mean(x_neg @ w)) / T
    out["w"] = w - LR * (x_plus.mean(0) - x_neg.mean(0)) / T
    if model.train_generator:
        a = model.generator.a.numpy()
        z = out["z"]
        out["a"] = a - GEN_LR * (-2.0 * z.T @ (x_neg - z @ a) / B)
        out["gen_loss"] = np.sum((x_neg - z @ a) ** 2) / B
    return out


@pytest.mark.parametrize("source", ["generator", "data", "noise"])
@pytest.mark.parametrize("num_steps", [0, 3])
def test_step_equals_hand_computation(source, num_steps):
    # Counts 1..4 with cap 2: rows drawn at 3 or 4 must restart whatever u.
    counts = [1, 2, 3, 4, 1, 2, 3, 4]
    model = build(source, num_steps, p=0.5, cap=2, counts=counts)
    rng = np.random.default_rng(1)
    x_pos = rng.normal(size=(B, D)).astype("float32")
    x_data = rng.normal(size=(B, D)).astype("float32") if source == "data" else None
    want = expected_step(model, x_pos, x_data)
    history = fit_one_step(model, tf.constant(x_pos), x_data)

    idx = want["idx"]
    # Both branches of the rejuvenation choice are exercised.
    assert 0 < want["mask"].sum() < B
    np.testing.assert_array_equal(model.bank.counts.numpy()[idx], want["counts"])
    np.testing.assert_allclose(
        model.bank.states.numpy()[idx], want["x_neg"], rtol=1e-5, atol=1e-4
    )
    untouched = np.setdiff1d(np.arange(N), idx)
    np.testing.assert_array_equal(
        model.bank.counts.numpy()[untouched], np.asarray(counts)[untouched]
    )
    if "z" in want:
        np.testing.assert_allclose(
            model.bank.latents.numpy()[idx], want["z"], rtol=1e-6
        )
    np.testing.assert_allclose(history["loss"][0], want["loss"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.energy_net.w.numpy(), want["w"], rtol=1e-5)
    if source == "generator":
        np.testing.assert_allclose(model.generator.a.numpy(), want["a"], rtol=1e-5)
        np.testing.assert_allclose(history["gen_loss"][0], want["gen_loss"], rtol=1e-4)


def test_lifetime_cap_forces_exactly_the_rows_over_it():
    model = build("noise", 0, p=0.0, cap=2, counts=[0] * N)
    idx = model.bank.draw_indices(model.step_seeds(0).draw).numpy()
    counts = np.zeros(N, "int32")
    counts[idx] = [0, 3, 2, 5]  # two at or under the cap, two over it
    model.bank.counts.assign(counts)
    before = model.bank.states.numpy().copy()
    fit_one_step(model, tf.zeros((B, D)), None)
    over = counts[idx] > 2
    after = model.bank.states.numpy()[idx]
    # Kept rows keep their state (K = 0); forced rows restart in [-1, 1].
    np.testing.assert_array_equal(after[~over], before[idx][~over])
    assert np.all(np.abs(after[over]) <= 1.0)
    np.testing.assert_array_equal(
        model.bank.counts.numpy()[idx], np.where(over, 0, counts[idx] + 1)
    )


def test_without_bank_chains_start_fresh_every_step():
    model = build("generator", 2, p=0.0, cap=0, counts=None, persistent=False)
    rng = np.random.default_rng(2)
    x_pos = rng.normal(size=(B, D)).astype("float32")
    want = expected_step(model, x_pos, None)
    history = fit_one_step(model, tf.constant(x_pos), None)
    np.testing.assert_allclose(model.energy_net.w.numpy(), want["w"], rtol=1e-5)
    np.testing.assert_allclose(model.generator.a.numpy(), want["a"], rtol=1e-5)
    np.testing.assert_allclose(history["loss"][0], want["loss"], rtol=1e-4, atol=1e-4)
