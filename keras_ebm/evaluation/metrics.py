"""Evaluation math: Frechet distances between activation statistics."""

import warnings

import numpy as np
from scipy import linalg


def activation_statistics(activations: np.ndarray) -> tuple:
    """Mean `[D]` and unbiased covariance `[D, D]` of `[N, D]` activations."""
    activations = np.asarray(activations, np.float64)
    if activations.ndim != 2 or len(activations) < 2:
        raise ValueError(f"need [N >= 2, D] activations, got shape {activations.shape}")
    return activations.mean(0), np.cov(activations, rowvar=False)


def fid_from_statistics(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Frechet distance between `N(mu1, sigma1)` and `N(mu2, sigma2)`.

    `d^2 = ||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2})`

    The matrix square root is scipy's `sqrtm`, as in the TTUR reference code
    (Heusel et al. 2017). When the product is near singular and the root is
    not finite, `eps * I` is added to both covariances (TTUR's fallback);
    imaginary parts from round-off are dropped. With N samples the plug-in
    estimate is biased upwards by O(D / N), so compare FIDs at equal N.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError("the two sets of statistics have different shapes")
    diff = mu1 - mu2
    # A singular product is common (fewer samples than features) and
    # handled below; scipy's "Matrix is singular" warning says nothing a
    # user can act on.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(
                f"imaginary component {np.max(np.abs(covmean.imag))} in sqrtm"
            )
        covmean = covmean.real
    value = diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2)
    return float(value - 2 * np.trace(covmean))


def fid_from_activations(act1: np.ndarray, act2: np.ndarray) -> float:
    """FID between two sets of `[N, D]` activations (see
    `fid_from_statistics`)."""
    return fid_from_statistics(
        *activation_statistics(act1), *activation_statistics(act2)
    )


def class_balance(labels, reference_labels, num_classes):
    """How evenly `labels` (classes a classifier gives to samples) cover
    the classes, against `reference_labels` (the same classifier on real
    data).

    With p_c the samples' share of class c and q_c the reference's:
    `entropy = H(p) / log C` (1 = uniform) and `max_share_ratio =
    max_c p_c / q_c` (1 = no class above its data share; 2 = some class
    at twice its share).

    Returns:
        `{"entropy", "max_share_ratio", "largest_class", "shares": [C]}`.
    """
    p = np.bincount(np.asarray(labels, np.int64), minlength=num_classes) / len(labels)
    q = np.bincount(np.asarray(reference_labels, np.int64), minlength=num_classes)
    q = q / len(reference_labels)
    nonzero = p[p > 0]
    ratio = p / np.maximum(q, 1e-12)
    return {
        "entropy": float(-(nonzero * np.log(nonzero)).sum() / np.log(num_classes)),
        "max_share_ratio": float(ratio.max()),
        "largest_class": int(np.argmax(ratio)),
        "shares": [float(v) for v in p],
    }
