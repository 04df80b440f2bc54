"""The shortcut probe: can a small classifier tell real train images from synthetic ones, class by class?

An AUC near 1 means "looks synthetic" is a visible feature: a classifier trained on the mix can use it as a cue for
the classes that got synthetic images, instead of the disease. An AUC near 0.5 means the probe cannot tell them
apart. The probe is cross-fitted: each class's real and synthetic images (as many of each) are split in two halves;
a classifier trained on one half scores the other, and the other way round, so every image gets an out-of-fold score.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from generative_augmentation.core.classifier import ClassifierConfig, predict_proba, train_classifier
from generative_augmentation.core.runtime import derive_seed, numpy_rng, one_thread

logger = logging.getLogger(__name__)


def shortcut_probe(
    real: tuple[np.ndarray, np.ndarray],
    synthetic: tuple[np.ndarray, np.ndarray],
    class_names: list[str],
    config: ClassifierConfig,
    seed: int,
) -> pd.DataFrame:
    """Per class with synthetic images: the probe's out-of-fold AUC (real = 0, synthetic = 1) and the counts."""
    rng = numpy_rng(derive_seed(seed, "shortcut_probe"))
    (real_images, real_labels), (fake_images, fake_labels) = real, synthetic
    rows, images, targets, classes, folds = [], [], [], [], []
    for label in np.unique(fake_labels):
        count = min(int((real_labels == label).sum()), int((fake_labels == label).sum()))
        if count < 4:
            rows.append({"class_name": class_names[label], "n_per_kind": count, "auc": np.nan})
            continue
        for source, source_labels, target in ((real_images, real_labels, 0), (fake_images, fake_labels, 1)):
            chosen = rng.permutation(np.flatnonzero(source_labels == label))[:count]
            images.append(source[chosen])
            targets += [target] * count
            classes += [int(label)] * count
            folds += list(np.arange(count) % 2)
    if not images:
        return pd.DataFrame(rows, columns=["class_name", "n_per_kind", "auc"])
    images, targets, classes, folds = np.concatenate(images), np.array(targets), np.array(classes), np.array(folds)
    scores = np.zeros(len(targets))
    for fold in (0, 1):
        train, held_out = folds != fold, folds == fold
        with one_thread():
            model, _ = train_classifier(
                (images[train], targets[train]),
                (images[train], targets[train]),
                config,
                2,
                derive_seed(seed, "shortcut_probe", fold),
                progress=False,
                description=f"shortcut probe {fold}",
            )
        scores[held_out] = predict_proba(model, images[held_out])[:, 1]
    for label in np.unique(classes):
        members = classes == label
        rows.append(
            {
                "class_name": class_names[label],
                "n_per_kind": int(members.sum() // 2),
                "auc": float(roc_auc_score(targets[members], scores[members])),
            }
        )
        logger.info("Shortcut probe, %s: AUC %.3f", class_names[label], rows[-1]["auc"])
    return pd.DataFrame(rows).sort_values("class_name").reset_index(drop=True)
