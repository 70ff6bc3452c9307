"""toy2d steady-state measures against closed forms, and `evaluate.py` on a
toy2d run of each regime."""

import json
import os

import numpy as np
import pytest
from scipy import stats

from keras_ebm import run
from keras_ebm.configs import longrun, shortrun
from keras_ebm.evaluation import steady_state


def gaussian_grid(mean, sigma, limit=4.6):
    points = steady_state.grid_points(limit)
    log_p = -np.sum((points - mean) ** 2, 1) / (2 * sigma**2)
    return steady_state.grid_probabilities(log_p)


def test_grid_tv_and_kl_of_shifted_gaussians_match_closed_forms():
    # N((0,0), s^2 I) vs N((d,0), s^2 I): TV = 2 Phi(d / 2s) - 1,
    # KL = d^2 / (2 s^2).
    s, d = 0.5, 0.6
    p = gaussian_grid([0.0, 0.0], s)
    q = gaussian_grid([d, 0.0], s)
    assert p.sum() == pytest.approx(1.0)
    assert steady_state.total_variation(p, q) == pytest.approx(
        2 * stats.norm.cdf(d / (2 * s)) - 1, abs=2e-3
    )
    assert steady_state.kl_divergence(p, q) == pytest.approx(
        d**2 / (2 * s**2), rel=1e-2
    )
    assert steady_state.total_variation(p, p) == 0.0
    assert steady_state.kl_divergence(p, p) == pytest.approx(0.0, abs=1e-12)


def test_histograms_converge_to_the_grid_density():
    s, limit = 0.5, 4.6
    p = gaussian_grid([0.0, 0.0], s, limit)
    coarse = steady_state.coarsen(p)
    assert coarse.sum() == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    tvs = [
        steady_state.total_variation(
            steady_state.histogram_probabilities(rng.normal(0, s, (n, 2)), limit),
            coarse,
        )
        for n in (1000, 100000)
    ]
    assert tvs[1] < tvs[0] / 3 and tvs[1] < 0.05
    # Mass outside the grid counts against the histogram.
    far = steady_state.histogram_probabilities(np.full((10, 2), 9.0), limit)
    assert far[-1] == 1.0
    assert steady_state.total_variation(far, coarse) == pytest.approx(1.0)


def test_histogram_cells_are_the_grid_cells():
    # An off-centre, anisotropic Gaussian: its samples' histogram matches
    # the coarsened grid density cell by cell (x along columns, y along
    # rows, as the grid); with the axes swapped it would not.
    limit, mean = 4.6, np.array([1.5, -0.7])
    points = steady_state.grid_points(limit)
    log_p = -((points[:, 0] - mean[0]) ** 2) / 0.5 - (points[:, 1] - mean[1]) ** 2 / 2
    coarse = steady_state.coarsen(steady_state.grid_probabilities(log_p))
    rng = np.random.default_rng(0)
    samples = mean + rng.normal(size=(100000, 2)) * [0.5, 1.0]
    hist = steady_state.histogram_probabilities(samples, limit)
    assert steady_state.total_variation(hist, coarse) < 0.03
    swapped = steady_state.histogram_probabilities(samples[:, ::-1], limit)
    assert steady_state.total_variation(swapped, coarse) > 0.5


def test_grid_density_is_exp_minus_u_at_the_evaluation_temperature():
    # E = ||x||^2 / 2 trained at T = 1, evaluated at T 0.25 (joint
    # temperature 1.5 on top): exp(-E / 0.375) is N(0, 0.375 I).
    import keras

    from keras_ebm.models import EnergyModel
    from tests.linear_nets import HalfSquare

    model = EnergyModel(HalfSquare(2), num_steps=1, step_size=0.1, temperature=1.0)
    model.compile(keras.optimizers.SGD(0.1))
    config = longrun.get_config("toy2d")
    config.eval.update(temperature=0.25, joint_temperature=1.5)
    points = steady_state.grid_points(4.6)
    p = steady_state.grid_density(model, points, config.eval)
    want = gaussian_grid([0.0, 0.0], np.sqrt(0.375))
    assert steady_state.total_variation(p, want) < 1e-4
    assert steady_state.total_variation(p, gaussian_grid([0.0, 0.0], 1.0)) > 0.2


@pytest.mark.slow
@pytest.mark.parametrize("configs", [shortrun, longrun], ids=["shortrun", "longrun"])
def test_evaluate_a_toy2d_run(configs, tmp_path):
    config = configs.get_config("toy2d")
    config.train.update(num_steps=4, log_every=2, image_every=4, checkpoint_every=2)
    config.eval.update(num_samples=300, num_steps=1500)
    run.train(config, str(tmp_path))
    results = run.evaluate(config, str(tmp_path))
    for key in ("tv_grid", "tv_sampler_histogram", "tv_chains_histogram"):
        assert 0.0 <= results[key] <= 1.0, key
    assert results["kl_grid"] >= 0.0
    assert results["tv_true_samples_histogram"] < results["tv_grid"]
    saved = json.load(open(os.path.join(tmp_path, "eval", "steady_state.json")))
    assert saved["tv_grid"] == results["tv_grid"]
    assert os.path.exists(os.path.join(tmp_path, "eval", "steady_state.png"))
    # The long chains resume from their saved state: nothing left to run.
    again = run.evaluate(config, str(tmp_path))
    assert again["tv_chains_histogram"] == results["tv_chains_histogram"]


def test_mala_removes_the_discretization_bias_of_ula(tmp_path):
    # U = ||x||^2 / 2 at a large step (eps = 1): ULA's stationary variance is
    # 1 / (1 - eps^2 / 4) = 4/3; MALA's Metropolis step makes it exactly 1.
    import keras

    from keras_ebm.models import EnergyModel
    from tests.linear_nets import HalfSquare

    model = EnergyModel(HalfSquare(2), num_steps=1, step_size=1.0)
    model.compile(keras.optimizers.SGD(0.1))
    config = longrun.get_config("toy2d")
    config.eval.update(num_steps=300, step_size=1.0, temperature=1.0)
    x0 = np.zeros((4000, 2), "float32")
    ula, rate = steady_state.long_chains(config, str(tmp_path), model, x0, 100)
    mala, acceptance = steady_state.long_chains(
        config, str(tmp_path), model, x0, 100, sampler="mala"
    )
    assert rate == 1.0 and 0.5 < acceptance < 1.0
    np.testing.assert_allclose(ula.var(0), [4 / 3] * 2, rtol=0.06)
    np.testing.assert_allclose(mala.var(0), [1.0] * 2, rtol=0.06)


def test_mala_takes_the_ula_proposal(tmp_path):
    # On a flat energy every MALA proposal is accepted and moves by eps n,
    # as ULA: after k steps the variance is k eps^2.
    import keras

    from keras_ebm.models import EnergyModel
    from tests.linear_nets import LinearEnergy

    model = EnergyModel(LinearEnergy(2), num_steps=1, step_size=0.5)
    model.compile(keras.optimizers.SGD(0.1))
    config = longrun.get_config("toy2d")
    config.eval.update(num_steps=10, step_size=0.5, temperature=1.0)
    x0 = np.zeros((4000, 2), "float32")
    mala, acceptance = steady_state.long_chains(
        config, str(tmp_path), model, x0, sampler="mala"
    )
    assert acceptance == 1.0
    np.testing.assert_allclose(mala.var(0), [10 * 0.25] * 2, rtol=0.08)
