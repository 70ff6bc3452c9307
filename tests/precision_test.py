"""bfloat16 networks, float32 chains: `train.precision=bfloat16`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ebm import networks, run
from keras_ebm.models import EnergyModel
from tests.energy_model_test import data_batch, smoke_config
from tests.linear_nets import ScaledSquare, assert_gaussian_rows, gaussian_law


def _twins(config):
    """A float32 model trained a few steps and its bfloat16 twin with the
    same weights and bank (seeded: the tolerances below were measured on
    these weights, whatever ran before in the process)."""
    keras.utils.set_random_seed(0)
    f32 = run.build_model(config)
    f32.initialize_bank()
    ds = tf.data.Dataset.from_tensors(data_batch(config)).repeat()
    f32.fit(ds, steps_per_epoch=20, epochs=1, verbose=0)
    config = config.copy_and_resolve_references()
    config.train.precision = "bfloat16"
    bf16 = run.build_model(config)
    bf16.set_weights(f32.get_weights())
    return f32, bf16


def test_bfloat16_networks_keep_float32_state():
    f32, bf16 = _twins(smoke_config())
    assert bf16.energy_net.dtype_policy.name == "mixed_bfloat16"
    assert bf16.generator.dtype_policy.name == "mixed_bfloat16"
    assert f32.energy_net.dtype_policy.name == "float32"
    # Variables, banks, energies, generated states and chains: float32.
    assert {v.dtype for v in bf16.weights} == {"float32", "int32"}
    x = data_batch(smoke_config())
    assert bf16.energy(x).dtype == tf.float32
    assert bf16.generate(tf.zeros((2, bf16.generator.latent_dim))).dtype == tf.float32
    assert bf16.sample(x, 2)[0].dtype == tf.float32


@pytest.mark.slow
def test_langevin_statistics_match_float32():
    # The same trained EBM, starts and noise: after K steps the mean energy
    # and the drift norms of the bfloat16 network are within 2% of float32
    # (bfloat16 keeps 8 bits of mantissa: 0.4% per rounding).
    config = smoke_config(**{"langevin.num_steps": 20})
    f32, bf16 = _twins(config)
    x0 = data_batch(config, seed=3)
    seed = [4, 5]
    _, s32 = f32.sample(x0, 20, seed=seed)
    _, s16 = bf16.sample(x0, 20, seed=seed)
    for name in ("energy", "drift_norm", "last_drift_norm"):
        a, b = float(getattr(s32, name)), float(getattr(s16, name))
        assert abs(a - b) <= 0.02 * abs(a), (name, a, b)
    # Energies of the same states: one bfloat16 forward pass.
    e32, e16 = f32.energy(x0).numpy(), bf16.energy(x0).numpy()
    np.testing.assert_allclose(e16, e32, atol=0.02 * np.abs(e32).max())


def test_gaussian_law_with_a_bfloat16_network():
    # E = s ||x||^2 / 2 computed in bfloat16, 2000 steps of eps 0.003 at
    # T 0.01 from x0 = 3: the closed-form law N(c^K x0, v), mean 1.22. Each
    # step moves a state by ~0.003, below bfloat16's spacing at |x| ~ 2-3
    # (0.016): chains kept in bfloat16 stay near 2.6 (tried by hand).
    with networks.precision("bfloat16"):
        net = ScaledSquare(2, s=1.0)
    model = EnergyModel(net, num_steps=1, step_size=0.003, temperature=0.01)
    x0 = np.full((4096, 2), 3.0, "float32")
    x, _ = model.sample(x0, 2000, seed=[8, 9])
    ck, v = gaussian_law(2000, 0.003, 0.01)
    assert_gaussian_rows(x.numpy(), ck * 3.0, v)
