"""Per-class clustering of image features: pick k by silhouette, find representatives, flag loose clusters.

Features are L2-normalised first, so KMeans' Euclidean geometry matches cosine similarity; centroids and
distances live in that normalised space. Everything is deterministic for a given seed.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import silhouette_score
from sklearn.metrics.pairwise import cosine_similarity
from sklearn.preprocessing import normalize

from generative_augmentation.core.runtime import derive_seed

logger = logging.getLogger(__name__)

DEFAULT_K_RANGE = (2, 8)
KMEANS_N_INIT = 10
CLUSTER_COLUMNS = (
    "row_index",
    "label",
    "cluster",
    "is_representative",
    "cohesion",
    "flagged",
    "distance_to_centroid",
)


@dataclass(frozen=True)
class ClusterResult:
    """KMeans clustering of one class.

    ``assignments`` (N,) cluster per row; ``centroids`` (k, D) in L2-normalised space; ``distances`` (N,)
    Euclidean distance of each normalised row to its centroid; ``representatives[c]`` the rows of cluster
    ``c`` nearest its centroid, nearest first; ``cohesion`` / ``flagged`` (k,) per cluster;
    ``silhouette_scores`` the k -> score table when k was chosen automatically.
    """

    k: int
    assignments: np.ndarray
    centroids: np.ndarray
    distances: np.ndarray
    representatives: list[np.ndarray]
    cohesion: np.ndarray
    flagged: np.ndarray
    silhouette_scores: dict[int, float]

    @property
    def representative_indices(self) -> np.ndarray:
        """All representative rows, ascending."""
        return np.sort(np.concatenate(self.representatives)) if self.representatives else np.array([], int)


def choose_k_by_silhouette(
    features: np.ndarray,
    k_range: tuple[int, int] = DEFAULT_K_RANGE,
    seed: int = 0,
) -> tuple[int, dict[int, float]]:
    """The k in ``k_range`` (inclusive) with the highest cosine silhouette, and the score of every k tried.

    The range is clipped to ``n - 1`` for small classes; fewer than 3 images (or no k giving two distinct
    clusters, e.g. identical images) yields k = 1 with no scores. Ties go to the smaller k.
    """
    normalised = _normalised(features)
    low, high = _validated_k_range(k_range)
    n_rows = normalised.shape[0]
    if n_rows < 3:
        logger.info("Only %d image(s): silhouette is undefined, using k=1", n_rows)
        return 1, {}
    if high > n_rows - 1:
        high, low = n_rows - 1, min(low, n_rows - 1)
        logger.info("k_range %s clipped to (%d, %d) for %d images", tuple(k_range), low, high, n_rows)
    scores = {}
    for k in range(low, high + 1):
        labels = _fit_kmeans(normalised, k, seed).labels_
        if len(np.unique(labels)) < 2:
            logger.info("k=%d produced fewer than 2 distinct clusters; skipped", k)
            continue
        scores[k] = float(silhouette_score(normalised, labels, metric="cosine"))
    if not scores:
        logger.info("No k in %s separates the %d images; using k=1", tuple(k_range), n_rows)
        return 1, {}
    best_k = max(scores, key=lambda k: (scores[k], -k))
    return best_k, scores


def cluster_class(
    features: np.ndarray,
    k: int | None = None,
    k_range: tuple[int, int] = DEFAULT_K_RANGE,
    n_representatives: int = 5,
    cohesion_threshold: float = 0.5,
    seed: int = 0,
) -> ClusterResult:
    """Cluster one class's features with KMeans (``k`` given, or chosen by silhouette over ``k_range``).

    Each cluster's representatives are its ``n_representatives`` rows nearest the centroid; its cohesion is
    ``cohesion_score`` of those representatives and it is ``flagged`` when cohesion < ``cohesion_threshold``.
    """
    normalised = _normalised(features)
    if n_representatives < 1:
        raise ValueError(f"n_representatives must be at least 1, got {n_representatives}")
    scores: dict[int, float] = {}
    if k is None:
        k, scores = choose_k_by_silhouette(normalised, k_range, seed)
    elif not 1 <= k <= normalised.shape[0]:
        raise ValueError(f"k must be between 1 and the number of rows ({normalised.shape[0]}), got {k}")
    kmeans = _fit_kmeans(normalised, k, seed)
    assignments = kmeans.labels_.astype(np.int64)
    distances = np.linalg.norm(normalised - kmeans.cluster_centers_[assignments], axis=1)
    representatives = [_nearest_members(assignments, distances, c, n_representatives) for c in range(k)]
    cohesion = np.array([cohesion_score(normalised[rows]) for rows in representatives])
    return ClusterResult(
        k=k,
        assignments=assignments,
        centroids=kmeans.cluster_centers_,
        distances=distances,
        representatives=representatives,
        cohesion=cohesion,
        flagged=cohesion < cohesion_threshold,
        silhouette_scores=scores,
    )


def cluster_per_class(
    features: np.ndarray,
    labels: Sequence[Hashable] | np.ndarray,
    k: int | None = None,
    k_range: tuple[int, int] = DEFAULT_K_RANGE,
    n_representatives: int = 5,
    cohesion_threshold: float = 0.5,
    seed: int = 0,
) -> pd.DataFrame:
    """``cluster_class`` on every label's rows; one output row per input row, ordered by ``row_index``.

    Columns: ``CLUSTER_COLUMNS``. Each class uses ``derive_seed(seed, "cluster", label)``; a fixed ``k``
    larger than a class is clipped to the class size.
    """
    labels = np.asarray(labels)
    features = np.asarray(features)
    if labels.ndim != 1 or len(labels) != len(features):
        raise ValueError(f"labels must be 1-D with one entry per features row: {labels.shape} vs {features.shape}")
    frames = [
        _class_frame(features, labels, label, k, k_range, n_representatives, cohesion_threshold, seed)
        for label in pd.unique(labels)
    ]
    if not frames:
        return pd.DataFrame(columns=list(CLUSTER_COLUMNS))
    return pd.concat(frames).sort_values("row_index").reset_index(drop=True)


def cohesion_score(features: np.ndarray) -> float:
    """Mean minus (population) std of the pairwise cosine similarities among the rows (i < j).

    Defined as 1.0 for a single row (nothing to disagree with) and NaN for no rows.
    """
    if len(features) == 0:
        return float("nan")
    if len(features) == 1:
        return 1.0
    similarities = cosine_similarity(features)[np.triu_indices(len(features), k=1)]
    return float(similarities.mean() - similarities.std())


def _class_frame(
    features: np.ndarray,
    labels: np.ndarray,
    label: Hashable,
    k: int | None,
    k_range: tuple[int, int],
    n_representatives: int,
    cohesion_threshold: float,
    seed: int,
) -> pd.DataFrame:
    rows = np.flatnonzero(labels == label)
    if k is not None and k > len(rows):
        logger.info("Class %r has %d images: k=%d clipped to %d", label, len(rows), k, len(rows))
    class_k = None if k is None else min(k, len(rows))
    class_seed = derive_seed(seed, "cluster", label)
    result = cluster_class(features[rows], class_k, k_range, n_representatives, cohesion_threshold, class_seed)
    is_representative = np.zeros(len(rows), dtype=bool)
    is_representative[result.representative_indices] = True
    return pd.DataFrame(
        {
            "row_index": rows,
            "label": labels[rows],
            "cluster": result.assignments,
            "is_representative": is_representative,
            "cohesion": result.cohesion[result.assignments],
            "flagged": result.flagged[result.assignments],
            "distance_to_centroid": result.distances,
        }
    )


def _nearest_members(assignments: np.ndarray, distances: np.ndarray, cluster: int, count: int) -> np.ndarray:
    """The ``count`` members of ``cluster`` closest to its centroid, nearest first (ties: lower row first)."""
    members = np.flatnonzero(assignments == cluster)
    return members[np.argsort(distances[members], kind="stable")][:count]


def _fit_kmeans(normalised: np.ndarray, k: int, seed: int) -> KMeans:
    with warnings.catch_warnings():
        # Duplicate rows can leave fewer distinct clusters than k; callers check the labels themselves.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return KMeans(n_clusters=k, n_init=KMEANS_N_INIT, random_state=seed).fit(normalised)


def _validated_k_range(k_range: tuple[int, int]) -> tuple[int, int]:
    if len(k_range) != 2 or not 2 <= k_range[0] <= k_range[1]:
        raise ValueError(f"k_range must be (min, max) with 2 <= min <= max, got {k_range}")
    return int(k_range[0]), int(k_range[1])


def _normalised(features: np.ndarray) -> np.ndarray:
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"features must be a non-empty 2-D (N, D) array, got shape {array.shape}")
    return normalize(array)
