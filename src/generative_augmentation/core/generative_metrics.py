"""Generative quality metrics on precomputed feature arrays: KID, FID and k-NN precision / recall.

KID and FID are computed by torchmetrics' ``KernelInceptionDistance`` / ``FrechetInceptionDistance``
given an identity ``feature=`` module, so the (N, D) features pass straight into their statistics; their
default Inception network (a download, impossible offline) is never built. Features typically come from
``generative_augmentation.core.features``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import pairwise_distances_chunked
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from generative_augmentation.core.config import Config
from generative_augmentation.core.features import EfficientNetLite0Extractor, nearest
from generative_augmentation.core.images import ImageSpec, stack_images

logger = logging.getLogger(__name__)

DEFAULT_KID_SUBSET_SIZE = 1000


@dataclass(frozen=True)
class QualityConfig(Config):
    """Generative quality on offline ImageNet EfficientNet-Lite0 features: KID over ``kid_subsets`` subsets of up
    to ``kid_subset_size`` images, FID only where both sets have ``min_images_for_fid`` images, k-NN precision and
    recall with ``nearest_k`` neighbours."""

    where = "evaluation.quality"
    reference_split: Literal["val", "test"] = "val"  # real images the synthetic ones are compared with
    image_size: int = 96
    kid_subset_size: int = 100
    kid_subsets: int = 50
    min_images_for_fid: int = 2048
    nearest_k: int = 3

    def checks(self):
        yield from self.at_least("image_size", minimum=32)
        yield from self.at_least("kid_subset_size", "min_images_for_fid", minimum=2)
        yield from self.at_least("kid_subsets", "nearest_k")


def quality_table(
    real: pd.DataFrame,
    real_images: Mapping[str, Any],
    synthetic: pd.DataFrame,
    synthetic_images: Mapping[str, Any],
    image: ImageSpec,
    config: QualityConfig,
    seed: int,
) -> pd.DataFrame:
    """KID, FID (where both sets are large enough) and k-NN precision/recall per class of the ``synthetic`` images
    (``final_class``, ``image_key``) against the real images of ``config.reference_split`` in ``real`` (the
    manifest); real train against the same reference gives the floor a perfect generator would reach."""
    extractor = EfficientNetLite0Extractor(image_size=config.image_size)

    def features(partitions: Mapping[str, Any], keys: pd.Series) -> np.ndarray:
        return extractor.embed(stack_images(partitions, keys, image), progress=False)

    rows = []
    reference_split = config.reference_split
    for class_name in sorted(set(synthetic["final_class"])):
        of_class = real[real["class_name"] == class_name]
        reference = features(real_images, of_class.loc[of_class["split"] == reference_split, "image_key"])
        sets = (
            ("synthetic", synthetic.loc[synthetic["final_class"] == class_name, "image_key"], synthetic_images),
            ("real_train", of_class.loc[of_class["split"] == "train", "image_key"], real_images),
        )
        for name, keys, partitions in sets:
            row = {"class_name": class_name, "set": name, "reference": reference_split}
            rows.append(row | quality_row(reference, features(partitions, keys), config, seed))
            logger.info("Quality of %s %s: %s", name, class_name, rows[-1])
    return pd.DataFrame(rows)


def quality_row(reference: np.ndarray, other: np.ndarray, config: QualityConfig, seed: int) -> dict[str, float]:
    """One row of :func:`quality_table`: KID (mean, std), FID or NaN, precision, recall."""
    smallest = min(len(reference), len(other))
    row = {
        "n_images": len(other),
        "n_reference": len(reference),
        "kid": np.nan,
        "kid_std": np.nan,
        "fid": np.nan,
        "precision": np.nan,
        "recall": np.nan,
    }
    if smallest >= 2:
        subset = min(smallest, config.kid_subset_size)
        row["kid"], row["kid_std"] = kid(reference, other, subset_size=subset, subsets=config.kid_subsets, seed=seed)
    if smallest >= config.min_images_for_fid:
        row["fid"] = fid(reference, other)
    if smallest > config.nearest_k:
        row["precision"], row["recall"] = precision_recall_knn(reference, other, k=config.nearest_k)
    return row


class PrecomputedFeatures(nn.Module):
    """Identity ``feature=`` module: lets torchmetrics' image metrics consume (N, D) feature tensors."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = int(dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def kid(
    real_features: np.ndarray,
    fake_features: np.ndarray,
    *,
    subset_size: int | None,
    subsets: int,
    seed: int,
) -> tuple[float, float]:
    """Kernel Inception Distance: mean and std of the unbiased MMD² over random subsets.

    Polynomial kernel ``(x·y / D + 1)³`` (torchmetrics' defaults). Each of ``subsets`` draws takes
    ``subset_size`` rows of each set without replacement; ``subset_size=None`` uses
    ``min(n_real, n_fake, 1000)``. The draws are reproducible for a given ``seed`` and leave the global
    torch RNG untouched.
    """
    real, fake = _validated_pair(real_features, fake_features)
    smallest = min(len(real), len(fake))
    subset_size = min(smallest, DEFAULT_KID_SUBSET_SIZE) if subset_size is None else subset_size
    if not 2 <= subset_size <= smallest:
        raise ValueError(
            f"subset_size must be between 2 and the smaller set size ({len(real)} real, {len(fake)} fake), "
            f"got {subset_size}"
        )
    if subsets < 1:
        raise ValueError(f"subsets must be at least 1, got {subsets}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(
            feature=PrecomputedFeatures(real.shape[1]), subsets=int(subsets), subset_size=int(subset_size)
        )
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def fid(real_features: np.ndarray, fake_features: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the two feature sets (each needs at least 2 rows).

    With fewer rows than feature dimensions the covariances are rank-deficient: the value is still
    defined but biased upwards and noisy, so a warning is logged. Tiny negative round-off is clipped to 0.
    """
    real, fake = _validated_pair(real_features, fake_features)
    for name, features in (("real_features", real), ("fake_features", fake)):
        if len(features) < 2:
            raise ValueError(f"FID needs at least 2 rows in {name}, got {len(features)}")
        if len(features) <= features.shape[1]:
            logger.warning(
                "FID on %d rows of %s with %d dims: rank-deficient covariance, expect a biased value",
                len(features),
                name,
                features.shape[1],
            )
    metric = FrechetInceptionDistance(feature=PrecomputedFeatures(real.shape[1]))
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    return max(float(metric.compute()), 0.0)


def precision_recall_knn(real_features: np.ndarray, fake_features: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) with k-NN hypersphere manifolds.

    Each sample's radius is the Euclidean distance to its ``k``-th nearest neighbour within its own set.
    Precision: fraction of fake samples inside at least one real hypersphere. Recall: fraction of real
    samples inside at least one fake hypersphere. Distances are computed in memory-bounded chunks.
    """
    real, fake = _validated_pair(real_features, fake_features)
    if not 1 <= k < min(len(real), len(fake)):
        raise ValueError(f"k must be at least 1 and below both set sizes ({len(real)} real, {len(fake)} fake), got {k}")
    precision = _fraction_inside_manifold(fake, real, _kth_neighbour_distances(real, k))
    recall = _fraction_inside_manifold(real, fake, _kth_neighbour_distances(fake, k))
    return precision, recall


def _kth_neighbour_distances(features: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row to its k-th nearest other row (column 0 of the query is the row itself)."""
    distances, _ = nearest(features, features, k + 1, metric="euclidean")
    return distances[:, k]


def _fraction_inside_manifold(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> float:
    """Fraction of ``points`` within ``radii[j]`` of some ``centres[j]``."""
    inside_chunks = pairwise_distances_chunked(
        points, centres, reduce_func=lambda chunk, _start: (chunk <= radii[np.newaxis, :]).any(axis=1)
    )
    return float(np.concatenate(list(inside_chunks)).mean())


def _validated_pair(real_features: np.ndarray, fake_features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays as finite float64 (N, D) with the same D; errors name the offending array."""
    real = _as_feature_matrix(real_features, "real_features")
    fake = _as_feature_matrix(fake_features, "fake_features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real_features and fake_features differ in feature dim: {real.shape[1]} vs {fake.shape[1]}")
    return real, fake


def _as_feature_matrix(features: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D (N, D) array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return np.ascontiguousarray(array)
