"""Per-class clustering of image features: pick k by silhouette, find representatives, flag loose clusters.

Features are L2-normalised first, so KMeans' Euclidean geometry matches cosine similarity; centroids and
distances live in that normalised space. Everything is deterministic for a given seed.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import silhouette_score
from sklearn.metrics.pairwise import cosine_similarity
from sklearn.preprocessing import normalize
from tqdm.auto import tqdm

from generative_augmentation.core.config import Config
from generative_augmentation.core.features import ExtractorConfig
from generative_augmentation.core.reduction import TsneConfig
from generative_augmentation.core.runtime import derive_seed

logger = logging.getLogger(__name__)

DEFAULT_K_RANGE = (2, 6)
KMEANS_N_INIT = 10
CLUSTERS_COLUMNS = [
    "image_id",
    "class_name",
    "label",
    "cluster",
    "is_representative",
    "cohesion",
    "flagged",
    "distance_to_centroid",
]


@dataclass(frozen=True)
class ClusteringConfig(Config):
    """KMeans per class: a fixed ``k`` (clipped to a small class's size) or k chosen by silhouette over
    ``k_range``; ``n_representatives`` images nearest each centroid; a cluster is flagged when the cohesion of its
    representatives (mean minus std of their pairwise cosine similarities) is below ``cohesion_threshold``."""

    where = "feature_clustering.clustering"
    k: int | None = None
    k_range: tuple[int, ...] = DEFAULT_K_RANGE
    n_representatives: int = 5
    cohesion_threshold: float = 0.85

    def checks(self):
        yield "k", self.k is None or self.k >= 1, f"must be null (choose by silhouette) or at least 1, got {self.k}"
        valid_range = len(self.k_range) == 2 and 2 <= self.k_range[0] <= self.k_range[1]
        yield "k_range", valid_range, f"must be [min, max] with 2 <= min <= max, got {list(self.k_range)}"
        yield from self.at_least("n_representatives")
        yield from self.within("cohesion_threshold", 0, 1)


@dataclass(frozen=True)
class FeatureClusteringConfig(Config):
    """The ``feature_clustering`` parameters: the feature extractor, the clustering, the t-SNE maps."""

    where = "feature_clustering"
    extractor: ExtractorConfig = field(default_factory=ExtractorConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    tsne: TsneConfig = field(default_factory=TsneConfig)


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
    low, high = int(k_range[0]), int(k_range[1])
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


def cluster_class(features: np.ndarray, config: ClusteringConfig, seed: int) -> ClusterResult:
    """Cluster one class's features with KMeans (``config.k``, clipped to the class size, or by silhouette).

    Each cluster's representatives are its ``n_representatives`` rows nearest the centroid; its cohesion is
    ``cohesion_score`` of those representatives and it is ``flagged`` when cohesion < ``cohesion_threshold``.
    """
    normalised = _normalised(features)
    scores: dict[int, float] = {}
    if config.k is None:
        k, scores = choose_k_by_silhouette(normalised, (config.k_range[0], config.k_range[1]), seed)
    else:
        k = min(config.k, normalised.shape[0])
        if k < config.k:
            logger.info("%d images: k=%d clipped to %d", normalised.shape[0], config.k, k)
    kmeans = _fit_kmeans(normalised, k, seed)
    assignments = kmeans.labels_.astype(np.int64)
    distances = np.linalg.norm(normalised - kmeans.cluster_centers_[assignments], axis=1)
    representatives = [_nearest_members(assignments, distances, c, config.n_representatives) for c in range(k)]
    cohesion = np.array([cohesion_score(normalised[rows]) for rows in representatives])
    return ClusterResult(
        k=k,
        assignments=assignments,
        centroids=kmeans.cluster_centers_,
        distances=distances,
        representatives=representatives,
        cohesion=cohesion,
        flagged=cohesion < config.cohesion_threshold,
        silhouette_scores=scores,
    )


def cluster_classes(
    vectors: np.ndarray, train: pd.DataFrame, config: ClusteringConfig, seed: int, progress: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``cluster_class`` on each class of the real ``train`` rows (``vectors`` in the same order).

    Returns one row per train image (:data:`CLUSTERS_COLUMNS`) and one row per cluster (k, silhouette, size,
    cohesion, flagged). Each class's KMeans is seeded from ``seed`` and the class name.
    """
    frames, summaries = [], []
    classes = train.drop_duplicates("label").sort_values("label")
    for label, class_name in tqdm(
        list(zip(classes["label"], classes["class_name"], strict=True)), desc="cluster classes", disable=not progress
    ):
        rows = np.flatnonzero(train["label"].to_numpy() == label)
        result = cluster_class(vectors[rows], config, derive_seed(seed, "feature_clustering", "kmeans", class_name))
        is_representative = np.zeros(len(rows), dtype=bool)
        is_representative[result.representative_indices] = True
        frames.append(
            pd.DataFrame(
                {
                    "image_id": train["image_id"].to_numpy()[rows],
                    "class_name": class_name,
                    "label": int(label),
                    "cluster": result.assignments.astype(int),
                    "is_representative": is_representative,
                    "cohesion": result.cohesion[result.assignments].astype(float),
                    "flagged": result.flagged[result.assignments].astype(bool),
                    "distance_to_centroid": result.distances,
                }
            )
        )
        summaries.append(
            pd.DataFrame(
                {
                    "class_name": class_name,
                    "label": int(label),
                    "k": result.k,
                    "silhouette": result.silhouette_scores.get(result.k, np.nan),
                    "cluster": np.arange(result.k),
                    "size": np.bincount(result.assignments, minlength=result.k),
                    "n_representatives": [len(members) for members in result.representatives],
                    "cohesion": result.cohesion,
                    "flagged": result.flagged,
                }
            )
        )
        logger.info("Class %s: k=%d, %d flagged cluster(s)", class_name, result.k, int(result.flagged.sum()))
    return pd.concat(frames, ignore_index=True)[CLUSTERS_COLUMNS], pd.concat(summaries, ignore_index=True)


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


def _nearest_members(assignments: np.ndarray, distances: np.ndarray, cluster: int, count: int) -> np.ndarray:
    """The ``count`` members of ``cluster`` closest to its centroid, nearest first (ties: lower row first)."""
    members = np.flatnonzero(assignments == cluster)
    return members[np.argsort(distances[members], kind="stable")][:count]


def _fit_kmeans(normalised: np.ndarray, k: int, seed: int) -> KMeans:
    with warnings.catch_warnings():
        # Duplicate rows can leave fewer distinct clusters than k; callers check the labels themselves.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return KMeans(n_clusters=k, n_init=KMEANS_N_INIT, random_state=seed).fit(normalised)


def _normalised(features: np.ndarray) -> np.ndarray:
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"features must be a non-empty 2-D (N, D) array, got shape {array.shape}")
    return normalize(array)
