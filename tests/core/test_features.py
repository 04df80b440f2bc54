"""Feature extractors and cosine nearest neighbours (EfficientNet-Lite0 runs offline on a few images)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_sample_image
from torchmetrics.image.fid import FrechetInceptionDistance

from generative_augmentation.core.classifier import ClassifierConfig, build_classifier
from generative_augmentation.core.features import (
    ClassifierPenultimateExtractor,
    EfficientNetLite0Extractor,
    FeatureExtractor,
    embedding_matrix,
    nearest,
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


def test_classifier_penultimate_extractor_uses_forward_features(images: np.ndarray) -> None:
    torch.manual_seed(0)
    model = build_classifier(ClassifierConfig(width=4), 3, 28, in_channels=1).eval()
    extractor = ClassifierPenultimateExtractor(model, device="cpu")

    from_rgb = extractor.embed(images, batch_size=4, progress=False)
    from_gray = extractor.embed(images[..., :1], progress=False)

    unit = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    luminance = (unit * torch.tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    with torch.no_grad():
        expected_rgb = model.forward_features(luminance).numpy()
        expected_gray = model.forward_features(unit[:, :1]).numpy()
    assert extractor.dim == 16
    assert from_rgb.shape == (6, 16)
    np.testing.assert_allclose(from_rgb, expected_rgb, atol=1e-5)
    np.testing.assert_allclose(from_gray, expected_gray, atol=1e-6)


def test_embed_rejects_images_with_two_channels(extractor: EfficientNetLite0Extractor) -> None:
    with pytest.raises(ValueError, match="images"):
        extractor.embed(np.zeros((2, 8, 8, 2), dtype=np.uint8), progress=False)


def test_nearest_matches_brute_force_in_both_geometries() -> None:
    rng = np.random.default_rng(1)
    query, reference = rng.normal(size=(23, 5)), rng.normal(size=(17, 5)) * 3.0

    distances, indices = nearest(query, reference, k=4)

    unit_query = query / np.linalg.norm(query, axis=1, keepdims=True)
    unit_reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    full = unit_query @ unit_reference.T
    expected_indices = np.argsort(-full, axis=1)[:, :4]
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(1 - distances, np.take_along_axis(full, expected_indices, axis=1), atol=1e-6)
    euclidean, closest = nearest(query, reference, k=1, metric="euclidean")
    brute = np.linalg.norm(query[:, None] - reference[None], axis=-1)
    np.testing.assert_array_equal(closest[:, 0], brute.argmin(1))
    np.testing.assert_allclose(euclidean[:, 0], brute.min(1), atol=1e-9)


def test_nearest_finds_each_row_itself_first() -> None:
    features = np.random.default_rng(2).normal(size=(10, 4))

    distances, indices = nearest(features, features * 7.0)

    np.testing.assert_array_equal(indices[:, 0], np.arange(10))
    np.testing.assert_allclose(distances[:, 0], 0.0, atol=1e-6)


def test_nearest_validates_k_dims_and_values() -> None:
    features = np.ones((3, 4))
    with pytest.raises(ValueError, match="k must"):
        nearest(features, features, k=4)
    with pytest.raises(ValueError, match="query and reference"):
        nearest(features, np.ones((3, 5)))
    with pytest.raises(ValueError, match="query contains NaN"):
        nearest(np.full((2, 4), np.nan), features)


def test_embedding_matrix_follows_the_requested_order_and_names_stale_ids() -> None:
    embeddings = pd.DataFrame(
        {"image_id": ["a", "b", "c"], "vector": [np.full(2, 1.0), np.full(2, 2.0), np.full(2, 3.0)]}
    )
    np.testing.assert_array_equal(embedding_matrix(embeddings, ["c", "a"]), [[3, 3], [1, 1]])
    with pytest.raises(ValueError, match=r"1 image\(s\) have no embedding, e.g. \['z'\].*rerun the feature_clustering"):
        embedding_matrix(embeddings, ["a", "z"])
