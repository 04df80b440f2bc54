"""Nodes of the pseudo_labeling pipeline: label every synthetic image, guard against copies, filter.

The rules live in :mod:`core.labeling`; these nodes parse the parameters, call it and return.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from generative_augmentation.core import labeling
from generative_augmentation.core.classifier import ClassifierConfig, train_on_real
from generative_augmentation.core.features import embedding_matrix, extractor_from_record
from generative_augmentation.core.images import ImageSpec, stack_images
from generative_augmentation.core.labeling import PseudoLabelingConfig
from generative_augmentation.core.manifest import class_names, split_arrays, split_rows
from generative_augmentation.core.plots import image_grid
from generative_augmentation.core.runtime import derive_seed


def load_synthetic_pool(
    synthetic_manifest: pd.DataFrame, synthetic_images: dict, manifest: pd.DataFrame, image: dict[str, Any]
) -> np.ndarray:
    """The synthetic images as one (N, H, W, C) array in manifest order; a pool that does not match its manifest
    or the real classes fails here, before the labeler trains."""
    labeling.check_pool(synthetic_manifest, synthetic_images, class_names(manifest))
    return stack_images(synthetic_images, synthetic_manifest["image_key"], ImageSpec.parse(image))


def train_labeler(
    manifest: pd.DataFrame,
    real_images: dict,
    pseudo_labeling: dict[str, Any],
    classifier: dict[str, Any],
    image: dict[str, Any],
    seed: int,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """The labeler: the ``classifier`` settings with ``pseudo_labeling.labeler``'s overrides, trained on real
    train and selected on real validation images."""
    config = PseudoLabelingConfig.parse(pseudo_labeling)
    settings = ClassifierConfig.parse(
        config.labeler, config.parameter("labeler"), base=ClassifierConfig.parse(classifier)
    )
    record, history = train_on_real(
        manifest, real_images, settings, ImageSpec.parse(image), derive_seed(seed, "labeler"), "labeler"
    )
    return record, pd.DataFrame(history)


def validate_labeler(
    labeler: dict[str, Any], manifest: pd.DataFrame, real_images: dict, pseudo_labeling: dict[str, Any], image: dict
) -> pd.DataFrame:
    """The labeler's precision and recall on the real validation images, overall and above the filter's threshold."""
    config = PseudoLabelingConfig.parse(pseudo_labeling)
    images, labels = split_arrays(manifest, real_images, "val", ImageSpec.parse(image))
    return labeling.labeler_validation(labeler, images, labels, config.filter.confidence_threshold)


def predict_labels(
    synthetic_manifest: pd.DataFrame, synthetic_arrays: np.ndarray, labeler: dict[str, Any]
) -> pd.DataFrame:
    """Predicted class, confidence and agreement with the intended class, per synthetic image."""
    return labeling.predict_labels(synthetic_manifest, synthetic_arrays, labeler)


def find_nearest_real(
    synthetic_manifest: pd.DataFrame,
    synthetic_arrays: np.ndarray,
    manifest: pd.DataFrame,
    real_images: dict,
    embeddings: pd.DataFrame,
    feature_extractor: dict[str, Any],
    pseudo_labeling: dict[str, Any],
    image: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Nearest real train and validation image of every synthetic image (features, then pixels), with the
    calibrated copy flags, and the guard's report. Test images take no part."""
    config, spec = PseudoLabelingConfig.parse(pseudo_labeling), ImageSpec.parse(image)
    synthetic = extractor_from_record(feature_extractor).embed(synthetic_arrays, batch_size=config.embedding_batch_size)
    references = {}
    for split in ("train", "val"):
        rows = split_rows(manifest, split)
        ids = rows["image_id"].to_numpy()
        references[split] = (ids, embedding_matrix(embeddings, ids), stack_images(real_images, rows["image_key"], spec))
    ids = synthetic_manifest["image_id"].to_numpy()
    sources = (
        synthetic_manifest["source_image_id"].fillna("").to_numpy(dtype=object)
        if "source_image_id" in synthetic_manifest
        else None
    )
    return labeling.guard(
        ids, (synthetic, synthetic_arrays), references["train"], references["val"], config.memorisation, sources
    )


def apply_filter(
    synthetic_manifest: pd.DataFrame, predictions: pd.DataFrame, nearest: pd.DataFrame, pseudo_labeling: dict[str, Any]
) -> pd.DataFrame:
    """The verdict on every synthetic image: ``labeled_synthetic``."""
    return labeling.apply_filter(
        synthetic_manifest, predictions, nearest, PseudoLabelingConfig.parse(pseudo_labeling).filter
    )


def count_stages(
    labeled_synthetic: pd.DataFrame, manifest: pd.DataFrame, guard: dict[str, Any], labeler: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Images left per intended class after each check; the same counts, the thresholds and the labeler's
    validation macro-F1 as MLflow metrics."""
    table = labeling.stage_counts(labeled_synthetic, class_names(manifest))
    stages = [column for column in table.columns if column != "class_name"]
    metrics = {
        f"{stage}.{row.class_name}": getattr(row, stage) for row in table.itertuples(index=False) for stage in stages
    }
    metrics |= {
        "train_threshold": guard["train_threshold"],
        "val_threshold": guard["val_threshold"],
        "copies_val": guard["n_copies_val"],
        "memorised_train": guard["n_memorised_train"],
        "labeler_val_macro_f1": labeler["config"]["val_macro_f1"],
    }
    return table, {name: {"value": float(value), "step": 0} for name, value in metrics.items()}


def plot_examples(
    labeled_synthetic: pd.DataFrame, synthetic_arrays: np.ndarray, pseudo_labeling: dict[str, Any]
) -> Figure:
    """Kept and dropped examples of every intended class (guard drops first); row labels count the reasons."""
    config = PseudoLabelingConfig.parse(pseudo_labeling)
    per_row = config.examples_per_row
    intended, verdict = labeled_synthetic["intended_class"].to_numpy(), labeled_synthetic["verdict"].to_numpy()
    rows = {}
    for class_name in pd.unique(intended):
        kept = np.flatnonzero((intended == class_name) & (verdict == "keep"))
        dropped = np.flatnonzero((intended == class_name) & (verdict == "drop"))
        reason = labeled_synthetic["drop_reason"].iloc[dropped]
        dropped = dropped[np.argsort(reason.map(labeling.DROP_REASONS.index).to_numpy(), kind="stable")]
        summary = ", ".join(f"{name} {count}" for name, count in reason.value_counts().items())
        rows[f"{class_name}\nkept ({len(kept)})"] = synthetic_arrays[kept[:per_row]]
        rows[f"{class_name}\ndropped ({len(dropped)})\n{summary}"] = synthetic_arrays[dropped[:per_row]]
    return image_grid(rows, f"Synthetic images kept and dropped ({config.filter.mode} mode)", max_per_row=per_row)
