"""Image embeddings and nearest-neighbour search.

Two extractors map uint8 images (N, H, W, C) to float32 features (N, D): the frozen offline ImageNet
EfficientNet-Lite0, and a trained classifier's penultimate layer. Each is also an ``nn.Module`` whose ``forward``
maps a (B, C, H, W) tensor (uint8, or float in [0, 1]) to (B, D), so it can be passed as ``feature=`` to
torchmetrics' FID / KID. :func:`nearest` is the one k-nearest-neighbour search (scikit-learn's), in cosine or
Euclidean geometry.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.neighbors import NearestNeighbors
from torch import nn
from tqdm.auto import tqdm

from generative_augmentation.core.classifier import (
    EFFICIENTNET_LITE0_DIM,
    ClassifierConfig,
    ImageClassifier,
    classifier_from_record,
    load_efficientnet_lite0,
    train_on_real,
)
from generative_augmentation.core.config import Config
from generative_augmentation.core.images import ImageSpec, match_channels, stack_images, unit_float
from generative_augmentation.core.runtime import derive_seed, pick_device

EMBEDDING_COLUMNS = ["image_id", "split", "label", "class_name", "vector"]

logger = logging.getLogger(__name__)

# The Lite checkpoints were converted from TensorFlow, where the edge models were trained with "inception-style"
# scaling (x - 127) / 128 rather than the ImageNet mean / std; values are for inputs in [0, 1].
NORMALISATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "inception": ((127.0 / 255,) * 3, (128.0 / 255,) * 3),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclass(frozen=True)
class ExtractorConfig(Config):
    """Which features: the frozen ImageNet ``efficientnet_lite0`` at ``image_size``, or ``classifier_penultimate``
    (a classifier trained on real train images, with the ``classifier`` settings plus ``classifier_overrides``)."""

    where = "feature_clustering.extractor"
    name: Literal["efficientnet_lite0", "classifier_penultimate"] = "efficientnet_lite0"
    image_size: int = 64
    normalisation: Literal["inception", "imagenet"] = "inception"
    batch_size: int = 64
    device: str | None = None
    classifier_overrides: dict[str, Any] | None = None

    def checks(self):
        yield from self.at_least("image_size", minimum=32)
        yield from self.at_least("batch_size")


class FeatureExtractor(nn.Module):
    """Shared batching, input conversion and eval mode; subclasses implement ``features``."""

    def __init__(self, feature_dim: int, device: str | torch.device | None = None) -> None:
        super().__init__()
        self.num_features = int(feature_dim)  # the attribute name torchmetrics looks for
        self.device = pick_device(str(device) if device is not None else None)

    @property
    def dim(self) -> int:
        return self.num_features

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Stay in eval mode: a frozen extractor inside a torchmetrics metric must not switch to training."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) uint8 or [0, 1] float images -> (B, D) features."""
        return self.features(unit_float(images))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed(self, images: np.ndarray, batch_size: int = 64, progress: bool = True) -> np.ndarray:
        """(N, H, W, C) uint8 images ((N, H, W) is grayscale) -> (N, D) float32 features."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[..., np.newaxis]
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"images must be (N, H, W, C) with C in (1, 3), got shape {images.shape}")
        self.to(self.device).eval()
        chunks = []
        with torch.inference_mode():
            for start in tqdm(range(0, len(images), batch_size), desc=type(self).__name__, disable=not progress):
                batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).permute(0, 3, 1, 2)
                chunks.append(self(batch.to(self.device)).float().cpu())
        return torch.cat(chunks).numpy() if chunks else np.zeros((0, self.dim), dtype=np.float32)


class EfficientNetLite0Extractor(FeatureExtractor):
    """Frozen ImageNet EfficientNet-Lite0: the global-average-pooled 1280-d head output.

    Grayscale is repeated to three channels, images are resized (bilinear, antialiased) to ``image_size`` and
    normalised as the checkpoint expects.
    """

    def __init__(self, image_size: int = 64, normalisation: str = "inception", device: str | None = None) -> None:
        super().__init__(EFFICIENTNET_LITE0_DIM, device)
        self.image_size = int(image_size)
        self.backbone = load_efficientnet_lite0(self.image_size).eval().requires_grad_(False)
        mean, std = NORMALISATIONS[normalisation]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.to(self.device).eval()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = _resize(match_channels(images, 3), self.image_size)
        return F.adaptive_avg_pool2d(self.backbone.extract_features((x - self.mean) / self.std), 1).flatten(1)


class ClassifierPenultimateExtractor(FeatureExtractor):
    """A trained :class:`ImageClassifier`'s penultimate layer (it resizes and normalises inside)."""

    def __init__(self, model: ImageClassifier, device: str | None = None) -> None:
        super().__init__(model.head.in_features, device)
        self.model = model
        self.to(self.device).eval()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(match_channels(images, self.model.in_channels))


def extractor_from_record(record: Mapping[str, Any]) -> FeatureExtractor:
    """The extractor that made a set of embeddings, from its saved record (``feature_extractor`` dataset)."""
    config = ExtractorConfig.parse(record["config"]["extractor"])
    if config.name == "efficientnet_lite0":
        return EfficientNetLite0Extractor(config.image_size, config.normalisation, config.device)
    return ClassifierPenultimateExtractor(classifier_from_record(record), config.device)


def fit_extractor(
    config: ExtractorConfig,
    classifier: ClassifierConfig,
    manifest: pd.DataFrame,
    real_images: Mapping[str, Any],
    image: ImageSpec,
    seed: int,
) -> tuple[FeatureExtractor, dict[str, Any]]:
    """The configured extractor and its record; ``classifier_penultimate`` first trains its classifier on real
    train images with the ``classifier`` settings plus the overrides (its ``keep`` decides final or best-on-val)."""
    if config.name == "efficientnet_lite0":
        record: dict[str, Any] = {"state_dict": {}, "config": {"extractor": config.to_dict()}}
    else:
        settings = ClassifierConfig.parse(
            config.classifier_overrides, config.parameter("classifier_overrides"), base=classifier
        )
        record, _ = train_on_real(
            manifest, real_images, settings, image, derive_seed(seed, "feature_extractor"), "feature classifier"
        )
        record["config"]["extractor"] = config.to_dict()
    return extractor_from_record(record), record


def embed_manifest(
    extractor: FeatureExtractor,
    manifest: pd.DataFrame,
    real_images: Mapping[str, Any],
    image: ImageSpec,
    batch_size: int,
) -> pd.DataFrame:
    """One row per real image of every split: ``image_id``, ``split``, ``label``, ``class_name``, ``vector``."""
    vectors = extractor.embed(stack_images(real_images, manifest["image_key"], image), batch_size=batch_size)
    table = manifest[["image_id", "split", "label", "class_name"]].reset_index(drop=True)
    table["vector"] = list(vectors)
    logger.info("Embedded %d real images (%d-d)", len(table), extractor.dim)
    return table[EMBEDDING_COLUMNS]


def embedding_matrix(embeddings: pd.DataFrame, image_ids: pd.Series | list[str] | np.ndarray) -> np.ndarray:
    """The (N, D) float32 vectors of ``image_ids``, in that order; ids without a vector fail with a clear error."""
    ids = list(image_ids)
    positions = pd.Index(embeddings["image_id"]).get_indexer(ids)
    missing = np.flatnonzero(positions < 0)
    if len(missing):
        example = [ids[index] for index in missing[:3]]
        raise ValueError(
            f"{len(missing)} image(s) have no embedding, e.g. {example}: the embeddings are stale, rerun the "
            "feature_clustering pipeline"
        )
    if not ids:
        return np.zeros((0, len(embeddings["vector"].iloc[0]) if len(embeddings) else 0), dtype=np.float32)
    return np.stack(embeddings["vector"].to_numpy()[positions]).astype(np.float32, copy=False)


def nearest(
    query: np.ndarray, reference: np.ndarray, k: int = 1, metric: Literal["cosine", "euclidean"] = "cosine"
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest ``reference`` rows of every ``query`` row, nearest first: ``(distances, indices)``.

    Cosine distance is 1 - cosine similarity. scikit-learn's brute-force search works in memory-bounded chunks.
    """
    query, reference = _feature_matrix(query, "query"), _feature_matrix(reference, "reference")
    if query.shape[1] != reference.shape[1]:
        raise ValueError(f"query and reference feature dims differ: {query.shape[1]} vs {reference.shape[1]}")
    if not 1 <= k <= len(reference):
        raise ValueError(f"k must be between 1 and the reference row count ({len(reference)}), got {k}")
    search = NearestNeighbors(n_neighbors=k, metric=metric, algorithm="brute").fit(reference)
    distances, indices = search.kneighbors(query)
    return distances, indices


def _feature_matrix(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D (N, D) array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
