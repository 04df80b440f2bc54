"""Silhouette-chosen KMeans per class, representatives, cohesion and the per-class table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from generative_augmentation.core.clustering import (
    CLUSTERS_COLUMNS,
    ClusteringConfig,
    choose_k_by_silhouette,
    cluster_class,
    cluster_classes,
    cohesion_score,
)
from generative_augmentation.core.config import ConfigError


def _blobs(n_blobs: int, per_blob: int, seed: int = 0, dim: int = 12) -> np.ndarray:
    """Tight blobs around orthogonal directions, so they are well separated in cosine terms too."""
    rng = np.random.default_rng(seed)
    centres = 5.0 * np.eye(dim)[:n_blobs]
    return np.concatenate([centre + rng.normal(scale=0.3, size=(per_blob, dim)) for centre in centres])


def test_silhouette_picks_three_for_three_separated_blobs() -> None:
    k, scores = choose_k_by_silhouette(_blobs(3, 15), k_range=(2, 6), seed=0)

    assert k == 3
    assert sorted(scores) == [2, 3, 4, 5, 6]
    assert scores[3] == max(scores.values())


def test_silhouette_range_is_clipped_for_small_classes() -> None:
    assert choose_k_by_silhouette(_blobs(2, 2), k_range=(2, 8), seed=0)[1].keys() == {2, 3}
    assert choose_k_by_silhouette(_blobs(2, 1), k_range=(2, 8), seed=0) == (1, {})


def test_identical_images_give_one_cluster() -> None:
    assert choose_k_by_silhouette(np.ones((6, 4)), k_range=(2, 4), seed=0) == (1, {})


def test_cohesion_matches_hand_computation() -> None:
    # Pairwise cosines of e1, e2 and their bisector: 0, 1/√2, 1/√2 -> mean √2/3, population std 1/3.
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])

    assert cohesion_score(vectors) == pytest.approx((math.sqrt(2) - 1) / 3)
    assert cohesion_score(vectors[:1]) == 1.0
    assert cohesion_score(vectors[:2] * [3.0, 1.0]) == pytest.approx(0.0)


def test_clusters_are_flagged_below_the_cohesion_threshold() -> None:
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    cohesion = (math.sqrt(2) - 1) / 3

    loose = cluster_class(
        vectors, ClusteringConfig(k=1, n_representatives=3, cohesion_threshold=cohesion + 0.01), seed=0
    )
    tight = cluster_class(
        vectors, ClusteringConfig(k=1, n_representatives=3, cohesion_threshold=cohesion - 0.01), seed=0
    )

    assert loose.cohesion[0] == pytest.approx(cohesion)
    assert loose.flagged.tolist() == [True]
    assert tight.flagged.tolist() == [False]


def test_representatives_are_the_members_nearest_each_centroid() -> None:
    features = _blobs(3, 12, seed=1)

    result = cluster_class(features, ClusteringConfig(n_representatives=4, cohesion_threshold=0.5), seed=0)

    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    assert result.k == 3
    assert set(np.unique(result.assignments)) == {0, 1, 2}
    np.testing.assert_allclose(result.distances, np.linalg.norm(unit - result.centroids[result.assignments], axis=1))
    for cluster, representatives in enumerate(result.representatives):
        members = np.flatnonzero(result.assignments == cluster)
        others = np.setdiff1d(members, representatives)
        assert len(representatives) == 4
        assert set(representatives) <= set(members)
        assert np.all(np.diff(result.distances[representatives]) >= 0)
        assert result.distances[representatives].max() <= result.distances[others].min()
    assert not result.flagged.any()


def train_rows(labels: list[str]) -> pd.DataFrame:
    names = sorted(set(labels))
    return pd.DataFrame(
        {
            "image_id": [f"img_{i}" for i in range(len(labels))],
            "class_name": labels,
            "label": [names.index(name) for name in labels],
        }
    )


def test_cluster_classes_returns_one_deterministic_row_per_image_and_a_summary() -> None:
    features = np.concatenate([_blobs(2, 10, seed=2), _blobs(3, 8, seed=3)])
    train = train_rows(["grade 0"] * 20 + ["grade 1"] * 24)
    config = ClusteringConfig(n_representatives=2, k_range=(2, 6))

    table, summary = cluster_classes(features, train, config, seed=5, progress=False)
    again, _ = cluster_classes(features, train, config, seed=5, progress=False)

    pd.testing.assert_frame_equal(table, again)
    assert list(table.columns) == CLUSTERS_COLUMNS and table["image_id"].tolist() == train["image_id"].tolist()
    assert table.groupby("class_name")["cluster"].nunique().to_dict() == {"grade 0": 2, "grade 1": 3}
    assert table.groupby("class_name")["is_representative"].sum().to_dict() == {"grade 0": 4, "grade 1": 6}
    assert summary.groupby("class_name")["k"].first().to_dict() == {"grade 0": 2, "grade 1": 3}
    assert summary["size"].sum() == 44


def test_a_fixed_k_is_clipped_for_tiny_classes() -> None:
    table, _ = cluster_classes(
        _blobs(2, 5, seed=4), train_rows(["a"] * 8 + ["b"] * 2), ClusteringConfig(k=3, n_representatives=1), 0, False
    )
    assert table.groupby("class_name")["cluster"].nunique().to_dict() == {"a": 3, "b": 2}


@pytest.mark.parametrize(
    ("values", "parameter"),
    [
        ({"k_range": [1, 4]}, r"feature_clustering.clustering.k_range must be \[min, max\]"),
        ({"k": 0}, r"feature_clustering.clustering.k must be null"),
        ({"n_representatives": 0}, r"feature_clustering.clustering.n_representatives must be at least 1"),
        ({"cohesion_threshold": 1.5}, r"feature_clustering.clustering.cohesion_threshold must be in"),
    ],
)
def test_bad_clustering_parameters_are_named(values: dict, parameter: str) -> None:
    with pytest.raises(ConfigError, match=parameter):
        ClusteringConfig.parse(values)
