"""2-D maps of image features (openTSNE) and t-SNE-based selection of representative images."""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Hashable, Mapping

import numpy as np
from openTSNE import TSNE
from sklearn.cluster import KMeans
from sklearn.metrics import pairwise_distances

logger = logging.getLogger(__name__)

LARGEST_MINORITY = "largest_minority"
KMEANS_N_INIT = 10


def tsne_embedding(
    features: np.ndarray,
    seed: int,
    perplexity: float = 30.0,
    n_iter: int = 500,
    metric: str = "cosine",
) -> np.ndarray:
    """openTSNE 2-D embedding ``(N, 2)``, reproducible for a given ``seed`` (single-threaded, PCA init).

    ``perplexity`` is clipped to ``(N - 1) / 3`` so small sets still have enough neighbours; ``n_iter``
    counts the iterations after openTSNE's early-exaggeration phase. Needs at least 2 rows.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be a 2-D (N, D) array with N >= 2, got shape {features.shape}")
    if perplexity <= 0 or n_iter < 1:
        raise ValueError(f"perplexity must be > 0 and n_iter >= 1, got perplexity={perplexity}, n_iter={n_iter}")
    usable_perplexity = min(float(perplexity), (features.shape[0] - 1) / 3)
    if usable_perplexity < perplexity:
        logger.info("perplexity %.3g clipped to %.3g for %d rows", perplexity, usable_perplexity, len(features))
    tsne = TSNE(
        n_components=2,
        perplexity=usable_perplexity,
        n_iter=n_iter,
        metric=metric,
        random_state=seed,
        n_jobs=1,
        verbose=False,
    )
    return np.asarray(tsne.fit(features), dtype=np.float64)


def select_representatives_tsne(
    features: np.ndarray,
    target_count: int,
    seed: int,
    perplexity: float = 30.0,
) -> np.ndarray:
    """Pick ``target_count`` rows that cover the class: KMeans with that many clusters on the t-SNE map,
    then, per centroid, the nearest row not already taken. Returns the selected row indices, ascending.

    Asking for every row returns them all without running t-SNE.
    """
    n_rows = len(features)
    if isinstance(target_count, bool) or not 1 <= target_count <= n_rows:
        raise ValueError(f"target_count must be between 1 and N={n_rows}, got {target_count}")
    if target_count == n_rows:
        return np.arange(n_rows)
    coords = tsne_embedding(features, seed=seed, perplexity=perplexity)
    kmeans = KMeans(n_clusters=target_count, n_init=KMEANS_N_INIT, random_state=seed).fit(coords)
    return np.sort(_nearest_unused(pairwise_distances(kmeans.cluster_centers_, coords)))


def resolve_target_count(
    spec: int | float | str,
    class_counts: Mapping[Hashable, int],
    class_name: Hashable,
    dominant_classes: Collection[Hashable] = (),
) -> int:
    """How many images of ``class_name`` to keep, from a config ``spec``.

    - int ``n >= 1``: that many;
    - float in (0, 1]: that fraction of the class (rounded half up, at least 1);
    - ``"largest_minority"``: the size of the largest class not in ``dominant_classes``.

    The result is capped at the class size (logged), so it is always a valid ``target_count`` for
    ``select_representatives_tsne``.
    """
    if class_name not in class_counts:
        raise ValueError(f"class_name {class_name!r} is not in class_counts ({sorted(map(str, class_counts))})")
    class_size = int(class_counts[class_name])
    requested = _requested_count(spec, class_counts, class_size, dominant_classes)
    if requested > class_size:
        logger.info("Target %d for class %r capped at its size %d", requested, class_name, class_size)
    return min(requested, class_size)


def _requested_count(
    spec: int | float | str,
    class_counts: Mapping[Hashable, int],
    class_size: int,
    dominant_classes: Collection[Hashable],
) -> int:
    if isinstance(spec, str):
        if spec != LARGEST_MINORITY:
            raise ValueError(f"spec {spec!r} is not a count, a fraction in (0, 1] or {LARGEST_MINORITY!r}")
        return _largest_minority(class_counts, dominant_classes)
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        if spec < 1:
            raise ValueError(f"spec as a count must be at least 1, got {spec}")
        return int(spec)
    if isinstance(spec, (float, np.floating)):
        if not 0 < spec <= 1:
            raise ValueError(f"spec as a fraction must be in (0, 1], got {spec}")
        return max(1, math.floor(spec * class_size + 0.5))
    raise ValueError(f"spec {spec!r} is not a count, a fraction in (0, 1] or {LARGEST_MINORITY!r}")


def _largest_minority(class_counts: Mapping[Hashable, int], dominant_classes: Collection[Hashable]) -> int:
    if not dominant_classes:
        raise ValueError(f"spec {LARGEST_MINORITY!r} needs a non-empty dominant_classes")
    minority_sizes = [count for name, count in class_counts.items() if name not in dominant_classes]
    if not minority_sizes:
        raise ValueError(f"spec {LARGEST_MINORITY!r}: every class is in dominant_classes {list(dominant_classes)}")
    return int(max(minority_sizes))


def _nearest_unused(centre_to_row: np.ndarray) -> np.ndarray:
    """For each centre in turn, the nearest row not yet chosen (ties: lower row index)."""
    chosen: list[int] = []
    taken = np.zeros(centre_to_row.shape[1], dtype=bool)
    for distances in centre_to_row:
        for row in np.argsort(distances, kind="stable"):
            if not taken[row]:
                taken[row] = True
                chosen.append(int(row))
                break
    return np.asarray(chosen, dtype=np.int64)
