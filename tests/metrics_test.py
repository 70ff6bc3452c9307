"""FID against closed forms and an independent NumPy/SciPy computation."""

import numpy as np
import pytest
from scipy import linalg

from keras_ebm.evaluation import metrics


def reference_fid(a, b):
    """Straight from the definition, with eigen-decomposition square roots."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root_a @ s_b @ root_a
    w, _ = linalg.eigh((inner + inner.T) / 2)
    return (
        np.sum((mu_a - mu_b) ** 2)
        + np.trace(s_a + s_b)
        - 2 * np.sum(np.sqrt(np.clip(w, 0, None)))
    )


def test_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    var1, var2 = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
    got = metrics.fid_from_statistics(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, rel=1e-9)


def test_closed_form_for_general_gaussians_and_samples():
    rng = np.random.default_rng(1)
    d = 4
    a_root = rng.normal(size=(d, d))
    sigma = a_root @ a_root.T + np.eye(d)
    # Same covariance, shifted mean: FID = ||shift||^2 exactly.
    assert metrics.fid_from_statistics(
        np.zeros(d), sigma, np.full(d, 0.5), sigma
    ) == pytest.approx(d * 0.25, abs=1e-8)
    # Scaled covariance c^2 sigma: tr(sigma) (1 - c)^2.
    c = 1.7
    assert metrics.fid_from_statistics(
        np.zeros(d), sigma, np.zeros(d), c**2 * sigma
    ) == pytest.approx(np.trace(sigma) * (1 - c) ** 2, rel=1e-8)
    # From samples the estimate converges to the population value.
    x = rng.multivariate_normal(np.zeros(d), sigma, 200000)
    y = rng.multivariate_normal(np.full(d, 0.5), sigma, 200000)
    assert metrics.fid_from_activations(x, y) == pytest.approx(d * 0.25, abs=0.03)


def test_matches_independent_computation_on_random_activations():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16))
    b = rng.normal(size=(250, 16)) * 1.5 + 0.3
    assert metrics.fid_from_activations(a, b) == pytest.approx(
        reference_fid(a, b), rel=1e-6
    )
    assert metrics.fid_from_activations(a, a) == pytest.approx(0.0, abs=1e-6)


def test_singular_covariances_use_the_fallback():
    rng = np.random.default_rng(3)
    # 10 samples in 32 dims: rank-deficient covariances.
    a, b = rng.normal(size=(10, 32)), rng.normal(size=(10, 32))
    value = metrics.fid_from_activations(a, b)
    assert np.isfinite(value) and value > 0


def test_bad_shapes():
    with pytest.raises(ValueError, match="N >= 2"):
        metrics.fid_from_activations(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="different shapes"):
        metrics.fid_from_activations(np.ones((5, 3)), np.ones((5, 4)))


def test_singular_covariances_give_a_finite_fid_without_warnings():
    # Features that never fire (dead ReLU units of a small classifier): zero
    # rows of both covariances, a singular product, which scipy warns about.
    # The FID is that of the live features, and nothing is printed.
    import warnings

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(100, 8)), rng.normal(1.0, 1.0, size=(100, 8))
    live = metrics.fid_from_activations(a[:, 3:], b[:, 3:])
    a[:, :3] = b[:, :3] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = metrics.fid_from_activations(a, b)
    assert value == pytest.approx(live, rel=1e-4)


def test_class_balance_against_closed_forms():
    reference = np.repeat(np.arange(10), [20] * 5 + [60] * 5)  # shares 0.05 / 0.15
    even = metrics.class_balance(reference, reference, 10)
    assert even["max_share_ratio"] == pytest.approx(1.0)
    # H of five classes at 0.05 and five at 0.15, over log 10.
    h = -5 * (0.05 * np.log(0.05) + 0.15 * np.log(0.15)) / np.log(10)
    assert even["entropy"] == pytest.approx(h)
    uniform = metrics.class_balance(np.arange(100) % 10, reference, 10)
    assert uniform["entropy"] == pytest.approx(1.0)
    # Class 0 holds 0.1 of the samples and 0.05 of the data: twice its share.
    assert uniform["max_share_ratio"] == pytest.approx(2.0)
    assert uniform["largest_class"] in range(5)
    collapsed = metrics.class_balance(np.full(50, 7), reference, 10)
    assert collapsed["entropy"] == pytest.approx(0.0)
    assert collapsed["max_share_ratio"] == pytest.approx(1 / 0.15)
    assert collapsed["largest_class"] == 7
    assert collapsed["shares"] == [0.0] * 7 + [1.0] + [0.0] * 2
