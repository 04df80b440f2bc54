"""openTSNE maps, the t-SNE selection of representatives, and how many images a dominant class keeps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from generative_augmentation.core.config import ConfigError
from generative_augmentation.core.reduction import ReductionConfig, TsneConfig, select_representatives, tsne_map

COUNTS = pd.Series({"normal": 100, "mild": 30, "severe": 45, "proliferative": 12})


def _blobs(n_blobs: int, per_blob: int, seed: int = 0, dim: int = 10) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = 6.0 * np.eye(dim)[:n_blobs]
    return np.concatenate([centre + rng.normal(scale=0.4, size=(per_blob, dim)) for centre in centres])


def test_tsne_is_reproducible_per_seed_and_keeps_blobs_apart() -> None:
    coords = tsne_map(_blobs(2, 20), 3, TsneConfig(perplexity=10))
    np.testing.assert_array_equal(coords, tsne_map(_blobs(2, 20), 3, TsneConfig(perplexity=10)))
    distances = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert coords.shape == (40, 2) and np.array_equal(distances.argmin(axis=1) // 20, np.arange(40) // 20)


def test_tsne_clips_perplexity_for_tiny_sets_and_places_a_single_image_at_the_origin() -> None:
    coords = tsne_map(np.random.default_rng(0).normal(size=(5, 4)), 0, TsneConfig())
    assert coords.shape == (5, 2) and np.isfinite(coords).all()
    np.testing.assert_array_equal(tsne_map(np.ones((1, 3)), 0, TsneConfig()), [[0.0, 0.0]])


def test_selection_takes_one_image_per_blob_and_is_deterministic() -> None:
    coords = tsne_map(_blobs(4, 15, seed=1), 0, TsneConfig(perplexity=10))
    selected = select_representatives(coords, 4, seed=0)
    assert selected.sum() == 4 and sorted(np.flatnonzero(selected) // 15) == [0, 1, 2, 3]
    np.testing.assert_array_equal(select_representatives(coords, 4, seed=0), selected)
    assert select_representatives(coords, len(coords), seed=0).all()
    with pytest.raises(ValueError, match="target_count must be between 1 and 60"):
        select_representatives(coords, 61, seed=0)


@pytest.mark.parametrize(
    ("spec", "class_name", "expected"),
    [
        (20, "normal", 20),
        (0.25, "normal", 25),
        (0.125, "proliferative", 2),  # 1.5 rounds half up
        (0.01, "proliferative", 1),  # never below one image
        (1.0, "mild", 30),
        ("largest_minority", "normal", 45),
    ],
)
def test_target_counts(spec: int | float | str, class_name: str, expected: int) -> None:
    assert (
        ReductionConfig(dominant_classes=["normal"], target_count=spec).target(COUNTS, class_name, ["normal"])
        == expected
    )


def test_a_target_above_the_class_size_is_refused_naming_the_class() -> None:
    config = ReductionConfig(dominant_classes=["proliferative"], target_count="largest_minority")
    with pytest.raises(
        ConfigError, match=r"reduction.target_count \('largest_minority': 100 images\).*'proliferative'"
    ):
        config.target(COUNTS, "proliferative", ["proliferative"])


def test_dominant_classes_by_name_or_threshold() -> None:
    assert ReductionConfig(dominant_classes=["severe"]).dominant(COUNTS) == ["severe"]
    assert ReductionConfig(count_threshold=40).dominant(COUNTS) == ["normal", "severe"]
    assert ReductionConfig().dominant(COUNTS) == []
    with pytest.raises(ConfigError, match=r"reduction.dominant_classes names \['absent'\]"):
        ReductionConfig(dominant_classes=["absent"]).dominant(COUNTS)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"target_count": 0}, "reduction.target_count must be a count"),
        ({"target_count": 1.5}, "reduction.target_count must be a count"),
        ({"target_count": "largest"}, "reduction.target_count must be a count"),
        ({"count_threshold": 0}, "reduction.count_threshold must be at least 1, got 0"),
        ({"dominant_classes": ["a"], "count_threshold": 3}, "are exclusive"),
        ({"tsne": {"perplexity": 0}}, "reduction.tsne.perplexity must be positive"),
    ],
)
def test_bad_reduction_parameters_are_named(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ReductionConfig.parse(values)
