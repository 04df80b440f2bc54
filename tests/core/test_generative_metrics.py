"""KID, FID and k-NN precision / recall on synthetic features, checked against NumPy/SciPy references."""

from __future__ import annotations

import functools
import logging

import numpy as np
import pytest
from scipy import linalg

from generative_augmentation.core.generative_metrics import fid, kid, precision_recall_knn

DIM = 16


@pytest.fixture(scope="module")
def real() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(200, DIM))


@pytest.fixture(scope="module")
def same_distribution() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(150, DIM))


def _reference_unbiased_poly_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """KID's MMD² with kernel (x·y / d + 1)³, written out independently of torchmetrics."""
    kernel = lambda a, b: (a @ b.T / x.shape[1] + 1.0) ** 3  # noqa: E731
    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    m, n = len(x), len(y)
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


def _reference_frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    mean_x, mean_y = x.mean(axis=0), y.mean(axis=0)
    cov_x, cov_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covariance_mean = linalg.sqrtm(cov_x @ cov_y).real
    return float(np.sum((mean_x - mean_y) ** 2) + np.trace(cov_x + cov_y - 2 * covariance_mean))


def test_kid_with_whole_sets_matches_reference_mmd(real: np.ndarray, same_distribution: np.ndarray) -> None:
    fake = same_distribution[:120] + 0.3

    mean, std = kid(real[:120], fake, subset_size=120, subsets=3, seed=0)

    assert mean == pytest.approx(_reference_unbiased_poly_mmd(real[:120], fake), rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-9)  # every subset is the whole set


def test_kid_is_near_zero_for_one_distribution_and_large_for_a_shifted_one(
    real: np.ndarray, same_distribution: np.ndarray
) -> None:
    shifted, _ = kid(real, same_distribution + 1.0, subset_size=100, subsets=20, seed=0)
    same, same_std = kid(real, same_distribution, subset_size=100, subsets=20, seed=0)
    identical, _ = kid(real, real, subset_size=100, subsets=20, seed=0)

    assert shifted > 5.0
    assert abs(same) < 3 * same_std + 0.01
    # Unbiased MMD² of a set against itself is slightly negative (the cross term keeps the diagonal).
    assert abs(identical) < 0.02 * shifted


def test_kid_is_reproducible_for_a_seed_and_varies_across_seeds(
    real: np.ndarray, same_distribution: np.ndarray
) -> None:
    first = kid(real, same_distribution, subset_size=50, subsets=10, seed=7)
    second = kid(real, same_distribution, subset_size=50, subsets=10, seed=7)
    other = kid(real, same_distribution, subset_size=50, subsets=10, seed=8)

    assert first == second
    assert first != other


def test_kid_without_a_subset_size_uses_the_smaller_set(real: np.ndarray, same_distribution: np.ndarray) -> None:
    _, std = kid(real[:30], same_distribution[:40], subset_size=None, subsets=5, seed=0)

    assert std > 0  # 30 of 40 fake rows per subset: subsets differ


def test_kid_rejects_a_subset_larger_than_a_set(real: np.ndarray) -> None:
    with pytest.raises(ValueError, match="subset_size"):
        kid(real, real[:10], subset_size=50, subsets=5, seed=0)


def test_fid_matches_scipy_reference(real: np.ndarray, same_distribution: np.ndarray) -> None:
    fake = same_distribution * 1.5 + 0.2

    assert fid(real, fake) == pytest.approx(_reference_frechet_distance(real, fake), rel=1e-6)


def test_fid_is_zero_for_identical_sets_and_grows_with_a_shift(real: np.ndarray, same_distribution: np.ndarray) -> None:
    assert fid(real, real) == pytest.approx(0.0, abs=1e-6)
    assert fid(real, same_distribution + 1.0) > fid(real, same_distribution) + 10.0  # ‖Δμ‖² ≈ DIM


def test_fid_warns_when_rows_do_not_exceed_dims(real: np.ndarray, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        value = fid(real[:10], real[10:20])

    assert np.isfinite(value)
    assert "rank-deficient" in caplog.text


def test_fid_needs_two_rows_per_set(real: np.ndarray) -> None:
    with pytest.raises(ValueError, match="fake_features"):
        fid(real, real[:1])


def test_mismatched_dims_name_both_arrays(real: np.ndarray) -> None:
    kid_of = functools.partial(kid, subset_size=None, subsets=5, seed=0)
    for metric in (fid, kid_of, precision_recall_knn):
        with pytest.raises(ValueError, match="real_features and fake_features"):
            metric(real, real[:, :5])


def test_precision_recall_are_one_for_identical_sets(real: np.ndarray) -> None:
    assert precision_recall_knn(real, real.copy()) == (1.0, 1.0)


def test_precision_recall_are_zero_for_far_apart_sets(real: np.ndarray) -> None:
    assert precision_recall_knn(real, real + 100.0) == (0.0, 0.0)


def test_collapsed_fakes_have_high_precision_and_low_recall(real: np.ndarray, same_distribution: np.ndarray) -> None:
    precision, recall = precision_recall_knn(real, 0.3 * same_distribution, k=3)

    assert precision > 0.9
    assert recall < 0.2


def test_precision_recall_reject_k_not_below_set_sizes(real: np.ndarray) -> None:
    with pytest.raises(ValueError, match="k must"):
        precision_recall_knn(real, real[:3], k=3)
