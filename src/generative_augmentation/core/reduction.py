"""2-D maps of image features (openTSNE) and the t-SNE based selection of representative images of a dominant class.

As the paper did for Diabetes and Normal: per dominant class, a seeded openTSNE map of the feature vectors, KMeans
in that map with k = the number of images to keep, and, per centroid, the nearest image not already taken.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from openTSNE import TSNE
from sklearn.cluster import KMeans
from sklearn.metrics import pairwise_distances

from generative_augmentation.core.config import Config, ConfigError

logger = logging.getLogger(__name__)

LARGEST_MINORITY = "largest_minority"
KMEANS_N_INIT = 10


@dataclass(frozen=True)
class TsneConfig(Config):
    """openTSNE settings (perplexity is clipped to (N - 1) / 3 for small classes)."""

    where = "tsne"
    perplexity: float = 30.0
    n_iter: int = 500

    def checks(self):
        yield from self.positive("perplexity")
        yield from self.at_least("n_iter")


@dataclass(frozen=True)
class ReductionConfig(Config):
    """Which classes to thin (by name, or every class above ``count_threshold`` train images) and how many images
    each keeps: a count, a fraction in (0, 1] of the class (1 is a count, 1.0 the whole class), or
    ``largest_minority`` (the train size of the largest class that is not thinned)."""

    where = "reduction"
    dominant_classes: list[str] = field(default_factory=list)
    count_threshold: int | None = None
    target_count: int | float | str = LARGEST_MINORITY
    tsne: TsneConfig = field(default_factory=TsneConfig)

    def checks(self):
        yield (
            "dominant_classes",
            not (self.dominant_classes and self.count_threshold is not None),
            ("and reduction.count_threshold are exclusive: give one of them"),
        )
        yield from self.at_least("count_threshold")
        spec = self.target_count
        valid = (
            spec == LARGEST_MINORITY
            if isinstance(spec, str)
            else (spec >= 1 if isinstance(spec, int) else 0 < spec <= 1)
        )
        yield "target_count", valid, f"must be a count >= 1, a fraction in (0, 1] or {LARGEST_MINORITY!r}, got {spec!r}"

    def dominant(self, counts: pd.Series) -> list[str]:
        """The classes to thin: those named (each must have train images), else those above the threshold."""
        if self.dominant_classes:
            unknown = sorted(set(self.dominant_classes) - set(counts.index))
            if unknown:
                raise ConfigError(
                    f"Parameter {self.parameter('dominant_classes')} names {unknown}, which have no train images; "
                    f"known: {list(counts.index)}"
                )
            return list(self.dominant_classes)
        if self.count_threshold is None:
            return []
        return [str(name) for name in counts.index if counts[name] > self.count_threshold]

    def target(self, counts: pd.Series, class_name: str, dominant: list[str]) -> int:
        """How many images of ``class_name`` to keep; more than the class has is an error naming both."""
        spec, size = self.target_count, int(counts[class_name])
        if isinstance(spec, str):
            others = [int(count) for name, count in counts.items() if name not in dominant]
            if not others:
                raise ConfigError(
                    f"Parameter {self.parameter('target_count')} is {LARGEST_MINORITY!r} but every class is dominant"
                )
            requested = max(others)
        elif isinstance(spec, int):
            requested = spec
        else:
            requested = max(1, math.floor(spec * size + 0.5))
        if requested > size:
            raise ConfigError(
                f"Parameter {self.parameter('target_count')} ({spec!r}: {requested} images) is larger than class "
                f"{class_name!r}, which has {size} train images"
            )
        return requested


def tsne_map(features: np.ndarray, seed: int, config: TsneConfig) -> np.ndarray:
    """openTSNE 2-D embedding ``(N, 2)``, reproducible for ``seed`` (single-threaded, PCA init); fewer than two
    rows sit at the origin."""
    features = np.asarray(features, dtype=np.float64)
    if len(features) < 2:
        return np.zeros((len(features), 2))
    perplexity = min(config.perplexity, (len(features) - 1) / 3)
    if perplexity < config.perplexity:
        logger.info("perplexity %.3g clipped to %.3g for %d rows", config.perplexity, perplexity, len(features))
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        n_iter=config.n_iter,
        metric="cosine",
        random_state=seed,
        n_jobs=1,
        verbose=False,
    )
    return np.asarray(tsne.fit(features), dtype=np.float64)


def select_representatives(coords: np.ndarray, target_count: int, seed: int) -> np.ndarray:
    """A boolean mask of ``target_count`` rows covering the map: KMeans with that many clusters on ``coords``,
    then per centroid the nearest row not already taken. Asking for every row keeps them all."""
    selected = np.zeros(len(coords), dtype=bool)
    if not 1 <= target_count <= len(coords):
        raise ValueError(f"target_count must be between 1 and {len(coords)}, got {target_count}")
    if target_count == len(coords):
        selected[:] = True
        return selected
    kmeans = KMeans(n_clusters=target_count, n_init=KMEANS_N_INIT, random_state=seed).fit(coords)
    selected[_nearest_unused(pairwise_distances(kmeans.cluster_centers_, coords))] = True
    return selected


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
