"""Feature extractors and cosine nearest neighbours (EfficientNet-Lite0 runs offline on a few images)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_sample_image
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from generative_augmentation.core.features import (
    EfficientNetLite0Extractor,
    FeatureExtractor,
    build_extractor,
    cosine_nearest,
)
from generative_augmentation.core.generative_metrics import fid

IMAGENET_DAISY = 985


@pytest.fixture(scope="module")
def extractor() -> EfficientNetLite0Extractor:
    return EfficientNetLite0Extractor(image_size=64, device="cpu")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(6, 28, 28, 3), dtype=np.uint8)


def test_embeddings_are_1280_dim_float32(extractor: EfficientNetLite0Extractor, images: np.ndarray) -> None:
    features = extractor.embed(images, progress=False)

    assert isinstance(extractor, FeatureExtractor)
    assert extractor.dim == 1280
    assert features.shape == (6, 1280)
    assert features.dtype == np.float32
    assert np.isfinite(features).all()
    assert not np.allclose(features[0], features[1])


def test_embeddings_are_deterministic_and_batch_size_invariant(
    extractor: EfficientNetLite0Extractor, images: np.ndarray
) -> None:
    first = extractor.embed(images, batch_size=2, progress=False)
    second = extractor.embed(images, batch_size=2, progress=False)
    single_batch = extractor.embed(images, batch_size=64, progress=False)

    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, single_batch, atol=1e-4)


def test_grayscale_is_embedded_as_replicated_rgb(extractor: EfficientNetLite0Extractor, images: np.ndarray) -> None:
    gray = images[..., :1]

    with_channel = extractor.embed(gray, progress=False)
    without_channel = extractor.embed(gray[..., 0], progress=False)
    as_rgb = extractor.embed(np.repeat(gray, 3, axis=-1), progress=False)

    np.testing.assert_allclose(with_channel, as_rgb, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(with_channel, without_channel)


def test_imagenet_weights_are_loaded_and_recognise_a_daisy() -> None:
    """sklearn ships a daisy photo; the pretrained head on our pooled features must call it a daisy."""
    photo = load_sample_image("flower.jpg")
    height, width, _ = photo.shape
    left = (width - height) // 2
    square = photo[np.newaxis, :, left : left + height]
    extractor = EfficientNetLite0Extractor(image_size=224, device="cpu")

    features = torch.from_numpy(extractor.embed(square, progress=False))
    logits = extractor.backbone._fc(features)

    assert IMAGENET_DAISY in logits.topk(3).indices[0].tolist()


def test_forward_accepts_uint8_and_unit_float_tensors(
    extractor: EfficientNetLite0Extractor, images: np.ndarray
) -> None:
    as_uint8 = torch.from_numpy(images).permute(0, 3, 1, 2)

    with torch.no_grad():
        from_uint8 = extractor(as_uint8)
        from_float = extractor(as_uint8.float() / 255.0)

    torch.testing.assert_close(from_uint8, from_float)
    np.testing.assert_allclose(from_uint8.numpy(), extractor.embed(images, progress=False), atol=1e-5)


def test_extractor_plugs_into_torchmetrics_fid(extractor: EfficientNetLite0Extractor, images: np.ndarray) -> None:
    real, fake = images[:3], 255 - images[3:]
    metric = FrechetInceptionDistance(feature=extractor)
    metric.update(torch.from_numpy(real).permute(0, 3, 1, 2), real=True)
    metric.update(torch.from_numpy(fake).permute(0, 3, 1, 2), real=False)

    from_features = fid(extractor.embed(real, progress=False), extractor.embed(fake, progress=False))

    assert extractor.training is False
    assert float(metric.compute()) == pytest.approx(from_features, rel=1e-4)


class _TinyClassifier(nn.Module):
    """Follows the classifier contract: forward_features on [0, 1] images plus an int feature_dim."""

    def __init__(self, in_channels: int = 3, feature_dim: int | None = 8) -> None:
        super().__init__()
        self.in_channels = in_channels
        if feature_dim is not None:
            self.feature_dim = feature_dim
        self.conv = nn.Conv2d(in_channels, 8, kernel_size=3)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        assert images.dtype == torch.float32 and images.max() <= 1.0
        return self.conv(images).mean(dim=(2, 3))


def test_classifier_penultimate_extractor_uses_forward_features(images: np.ndarray) -> None:
    torch.manual_seed(0)
    model = _TinyClassifier(in_channels=1)
    extractor = build_extractor("classifier_penultimate", model=model, device="cpu")

    from_rgb = extractor.embed(images, batch_size=4, progress=False)
    from_gray = extractor.embed(images[..., :1], progress=False)

    unit = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    luminance = (unit * torch.tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    with torch.no_grad():
        expected_rgb = model.forward_features(luminance).numpy()
        expected_gray = model.forward_features(unit[:, :1]).numpy()
    assert extractor.dim == 8
    assert from_rgb.shape == (6, 8)
    np.testing.assert_allclose(from_rgb, expected_rgb, atol=1e-5)
    np.testing.assert_allclose(from_gray, expected_gray, atol=1e-6)


def test_classifier_penultimate_extractor_rejects_models_outside_the_contract() -> None:
    with pytest.raises(ValueError, match="forward_features"):
        build_extractor("classifier_penultimate", model=nn.Linear(3, 3))
    with pytest.raises(ValueError, match="feature_dim"):
        build_extractor("classifier_penultimate", model=_TinyClassifier(feature_dim=None))
    assert build_extractor("classifier_penultimate", model=_TinyClassifier(feature_dim=None), feature_dim=8).dim == 8


def test_unknown_extractor_name_lists_known_names() -> None:
    with pytest.raises(ValueError, match="classifier_penultimate.*efficientnet_lite0"):
        build_extractor("inception")


def test_embed_rejects_images_with_two_channels(extractor: EfficientNetLite0Extractor) -> None:
    with pytest.raises(ValueError, match="images"):
        extractor.embed(np.zeros((2, 8, 8, 2), dtype=np.uint8), progress=False)


def test_cosine_nearest_matches_brute_force_across_chunks() -> None:
    rng = np.random.default_rng(1)
    query, reference = rng.normal(size=(23, 5)), rng.normal(size=(17, 5)) * 3.0

    similarities, indices = cosine_nearest(query, reference, k=4, chunk_size=5)

    unit_query = query / np.linalg.norm(query, axis=1, keepdims=True)
    unit_reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    full = unit_query @ unit_reference.T
    expected_indices = np.argsort(-full, axis=1)[:, :4]
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(similarities, np.take_along_axis(full, expected_indices, axis=1), atol=1e-6)


def test_cosine_nearest_finds_each_row_itself_first() -> None:
    features = np.random.default_rng(2).normal(size=(10, 4))

    similarities, indices = cosine_nearest(features, features * 7.0)

    np.testing.assert_array_equal(indices[:, 0], np.arange(10))
    np.testing.assert_allclose(similarities[:, 0], 1.0, atol=1e-6)


def test_cosine_nearest_validates_k_and_dims() -> None:
    features = np.ones((3, 4))
    with pytest.raises(ValueError, match="k must"):
        cosine_nearest(features, features, k=4)
    with pytest.raises(ValueError, match="query and reference"):
        cosine_nearest(features, np.ones((3, 5)))
