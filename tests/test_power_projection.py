"""scripts/power_projection.py: the test-image floor of a contrast's variance, on inputs with known answers."""

from __future__ import annotations

import numpy as np

from generative_augmentation.core.study import Predictions
from tests.conftest import load_script

CLASSES, IMAGES, REPLICATES = 3, 240, 16


def arm(predicted: np.ndarray, labels: np.ndarray) -> Predictions:
    probabilities = np.eye(CLASSES)[predicted]
    return Predictions(labels=(labels,), predicted=(predicted,), probabilities=(probabilities,))


def noisy(labels: np.ndarray, accuracy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(R, N) predictions: each classifier right on image i with probability accuracy[i], else a wrong class."""
    right = rng.random((REPLICATES, len(labels))) < accuracy
    return np.where(right, labels, (labels + 1 + rng.integers(0, CLASSES - 1, right.shape)) % CLASSES)


def test_a_fixed_per_image_effect_is_all_floor_and_pure_classifier_noise_has_none() -> None:
    projection = load_script("power_projection")
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(CLASSES), IMAGES // CLASSES)
    better = rng.random(IMAGES) < 0.3  # images the treatment gets right and the control does not
    control = np.where(better, (labels + 1) % CLASSES, labels)
    fixed = projection.contrast_variances(
        arm(np.tile(labels, (REPLICATES, 1)), labels), arm(np.tile(control, (REPLICATES, 1)), labels), resamples=400
    )
    assert fixed["rep"] == 0 and fixed["test"] > 0
    assert np.isclose(fixed["floor"], fixed["test"], rtol=1e-9)  # identical replicates: both halves see the same

    accuracy = rng.uniform(0.3, 0.9, IMAGES)  # the same chance per image in both arms: no true difference
    noise = projection.contrast_variances(
        arm(noisy(labels, accuracy, rng), labels), arm(noisy(labels, accuracy, rng), labels), resamples=400
    )
    assert noise["rep"] > 0 and noise["test"] > 0
    assert noise["floor"] < 0.2 * noise["test"]  # the test-image variance here is classifier noise, not a floor
