"""openTSNE maps, t-SNE representative selection and target-count resolution."""

from __future__ import annotations

import numpy as np
import pytest

from generative_augmentation.core.reduction import (
    _nearest_unused,
    resolve_target_count,
    select_representatives_tsne,
    tsne_embedding,
)

COUNTS = {"normal": 100, "mild": 30, "severe": 45, "proliferative": 12}


def _blobs(n_blobs: int, per_blob: int, seed: int = 0, dim: int = 10) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = 6.0 * np.eye(dim)[:n_blobs]
    return np.concatenate([centre + rng.normal(scale=0.4, size=(per_blob, dim)) for centre in centres])


def test_tsne_is_reproducible_per_seed_and_keeps_blobs_apart() -> None:
    features = _blobs(2, 20)

    coords = tsne_embedding(features, seed=3, perplexity=10)
    again = tsne_embedding(features, seed=3, perplexity=10)

    np.testing.assert_array_equal(coords, again)
    assert coords.shape == (40, 2)
    distances = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    nearest = distances.argmin(axis=1)
    assert np.array_equal(nearest // 20, np.arange(40) // 20)


def test_tsne_clips_perplexity_for_tiny_sets() -> None:
    coords = tsne_embedding(np.random.default_rng(0).normal(size=(5, 4)), seed=0, perplexity=30)

    assert coords.shape == (5, 2)
    assert np.isfinite(coords).all()


def test_tsne_rejects_a_single_row() -> None:
    with pytest.raises(ValueError, match="N >= 2"):
        tsne_embedding(np.zeros((1, 3)), seed=0)


def test_selection_takes_one_image_per_blob() -> None:
    features = _blobs(4, 15, seed=1)

    selected = select_representatives_tsne(features, target_count=4, seed=0, perplexity=10)

    assert sorted(selected // 15) == [0, 1, 2, 3]


def test_selection_is_unique_sorted_and_deterministic() -> None:
    features = np.random.default_rng(2).normal(size=(60, 8))

    selected = select_representatives_tsne(features, target_count=25, seed=4)
    again = select_representatives_tsne(features, target_count=25, seed=4)

    np.testing.assert_array_equal(selected, again)
    assert len(selected) == len(np.unique(selected)) == 25
    assert np.all(np.diff(selected) > 0)


def test_selection_of_every_row_returns_them_all() -> None:
    np.testing.assert_array_equal(select_representatives_tsne(np.ones((6, 3)), 6, seed=0), np.arange(6))


@pytest.mark.parametrize("target_count", [0, 7])
def test_selection_rejects_counts_outside_one_to_n(target_count: int) -> None:
    with pytest.raises(ValueError, match=rf"target_count.*N=6.*got {target_count}"):
        select_representatives_tsne(np.ones((6, 3)), target_count, seed=0)


def test_centroids_sharing_a_nearest_image_get_the_next_nearest_unused_one() -> None:
    centre_to_row = np.array([[0.1, 0.2, 0.9], [0.1, 0.3, 0.8], [0.1, 0.4, 0.2]])

    np.testing.assert_array_equal(_nearest_unused(centre_to_row), [0, 1, 2])


@pytest.mark.parametrize(
    ("spec", "class_name", "expected"),
    [
        (20, "normal", 20),
        (500, "normal", 100),  # capped at the class size
        (0.25, "normal", 25),
        (0.25, "proliferative", 3),  # 3.0
        (0.125, "proliferative", 2),  # 1.5 rounds half up
        (0.01, "proliferative", 1),  # never below one image
        (1.0, "mild", 30),
        ("largest_minority", "normal", 45),
        ("largest_minority", "proliferative", 12),  # capped at the class size
    ],
)
def test_resolve_target_count(spec: int | float | str, class_name: str, expected: int) -> None:
    assert resolve_target_count(spec, COUNTS, class_name, dominant_classes={"normal"}) == expected


@pytest.mark.parametrize("spec", [0, -3, 0.0, 1.5, "largest", True, None])
def test_resolve_target_count_rejects_bad_specs(spec: object) -> None:
    with pytest.raises(ValueError, match="spec"):
        resolve_target_count(spec, COUNTS, "normal", dominant_classes={"normal"})


def test_resolve_target_count_rejects_unknown_classes_and_missing_minorities() -> None:
    with pytest.raises(ValueError, match="class_name"):
        resolve_target_count(10, COUNTS, "unknown")
    with pytest.raises(ValueError, match="dominant_classes"):
        resolve_target_count("largest_minority", COUNTS, "normal")
    with pytest.raises(ValueError, match="dominant_classes"):
        resolve_target_count("largest_minority", COUNTS, "normal", dominant_classes=set(COUNTS))
