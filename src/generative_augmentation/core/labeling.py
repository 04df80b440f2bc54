"""Pseudo-labeling of synthetic images: a labeler's verdict, the memorisation guard, and the filter.

A labeler trained on real train images (selected on real validation images) gives each synthetic image a predicted
class and a confidence. The memorisation guard compares each synthetic image with its nearest real train and
validation images in the feature space of ``feature_clustering``. Its thresholds are calibrated on real images
that are not test images: a synthetic image copies a train image when it is more cosine-similar to its nearest
train image than ``train_percentile`` % of the real validation images are to theirs (closer than almost any unseen
real image gets); it copies a validation image, which would bias model selection, when it is more similar to its
nearest validation image than ``val_percentile`` % of the train images are to theirs. An image-to-image variation
is judged against every train image but the one it was made from (resembling its source is its point). Test images
never reach the guard: nothing upstream of the final score sees them.

Checks, in order; ``drop_reason`` names the first one an image fails: ``copies_val``, ``memorised_train``,
``disagrees`` (filter mode: the predicted class is not the intended one) and ``low_confidence``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from generative_augmentation.core.classifier import classifier_from_record, predict_proba
from generative_augmentation.core.config import Config
from generative_augmentation.core.features import nearest
from generative_augmentation.core.manifest import kept_synthetic

logger = logging.getLogger(__name__)

DROP_REASONS = ("copies_val", "memorised_train", "disagrees", "low_confidence")
STAGES = ("generated", "after_val_copy_guard", "after_memorisation_guard", "after_agreement", "after_confidence")
SIMILARITY_TOLERANCE = 1e-6  # float32 cosine of an exact copy can land a hair below the threshold


@dataclass(frozen=True)
class FilterConfig(Config):
    """``filter``: keep a guarded image the labeler puts in its intended class with ``confidence_threshold``;
    ``relabel``: keep a guarded, confident image under its predicted class (the paper's policy);
    ``guard_only``: keep every guarded image under its intended class (the labeler's verdict is recorded only)."""

    where = "pseudo_labeling.filter"
    mode: Literal["filter", "relabel", "guard_only"] = "filter"
    confidence_threshold: float = 0.5

    def checks(self):
        yield from self.within("confidence_threshold", 0, 1)


@dataclass(frozen=True)
class GuardConfig(Config):
    """Copy thresholds (cosine similarity): the percentiles of real nearest-neighbour similarities, or fixed."""

    where = "pseudo_labeling.memorisation"
    train_percentile: float = 99.0
    val_percentile: float = 99.0
    train_threshold: float | None = None
    val_threshold: float | None = None
    # The pixel check: a synthetic image is also a copy when, against one of its ``pixel_neighbours`` nearest real
    # images in feature space, the mean absolute difference of brightness-centred pixels, at the best alignment
    # within ``max_shift`` pixels, is below ``pixel_threshold`` grey levels (null: no pixel check). It catches
    # shifted, brightened or slightly noisy copies whose features fall just short of the cosine threshold.
    pixel_threshold: float | None = 6.0
    max_shift: int = 2
    pixel_neighbours: int = 3

    def checks(self):
        for split in ("train", "val"):
            yield from self.within(f"{split}_percentile", 0, 100)
            yield from self.within(f"{split}_threshold", 0, 1)
        yield from self.at_least("pixel_threshold", "max_shift", minimum=0)
        yield from self.at_least("pixel_neighbours")


@dataclass(frozen=True)
class PseudoLabelingConfig(Config):
    """The ``pseudo_labeling`` parameters; ``labeler`` overrides the ``classifier`` settings for the labeler."""

    where = "pseudo_labeling"
    labeler: dict[str, Any] = field(
        default_factory=lambda: {
            "width": 32,
            "batch_size": 64,
            "steps": 500,
            "eval_every": 20,
            "keep": "best_val",
            "patience": 6,
        }
    )
    filter: FilterConfig = field(default_factory=FilterConfig)
    memorisation: GuardConfig = field(default_factory=GuardConfig)
    embedding_batch_size: int = 64
    examples_per_row: int = 8

    def checks(self):
        yield from self.at_least("embedding_batch_size", "examples_per_row")


def check_pool(synthetic_manifest: pd.DataFrame, synthetic_images: Any, class_names: list[str]) -> None:
    """Refuse an empty pool, unknown intended classes, mismatched labels, and images missing from the folder."""
    if synthetic_manifest is None or len(synthetic_manifest) == 0:
        raise ValueError("No synthetic pool yet: synthetic_manifest is empty; run the generation pipeline first")
    unknown = sorted(set(synthetic_manifest["intended_class"]) - set(class_names))
    if unknown:
        raise ValueError(f"synthetic_manifest has intended classes {unknown} that are not real classes {class_names}")
    expected = synthetic_manifest["intended_class"].map({name: index for index, name in enumerate(class_names)})
    mismatched = synthetic_manifest.loc[expected != synthetic_manifest["label"], "image_id"].tolist()
    if mismatched:
        raise ValueError(
            f"{len(mismatched)} synthetic image(s) have a label that is not their intended class's label "
            f"(class order {class_names}), e.g. {mismatched[:3]}"
        )
    missing = [key for key in synthetic_manifest["image_key"] if key not in synthetic_images]
    if missing:
        raise ValueError(
            f"synthetic_manifest lists {len(missing)} image(s) missing from synthetic_images, e.g. {missing[:3]}: "
            "the pool and its manifest do not match; rerun the generation pipeline"
        )


def predict_labels(
    synthetic_manifest: pd.DataFrame, synthetic_arrays: np.ndarray, labeler: dict[str, Any]
) -> pd.DataFrame:
    """Predicted class, confidence (top probability) and agreement with the intended class, per synthetic image."""
    proba = predict_proba(classifier_from_record(labeler), synthetic_arrays)
    predicted = proba.argmax(axis=1)
    names = np.asarray(labeler["config"]["class_names"])
    return pd.DataFrame(
        {
            "image_id": synthetic_manifest["image_id"].to_numpy(),
            "predicted_label": predicted.astype(int),
            "predicted_class": names[predicted],
            "confidence": proba.max(axis=1).astype(float),
            "agrees": predicted == synthetic_manifest["label"].to_numpy(),
        }
    )


def labeler_validation(
    labeler: dict[str, Any], val_images: np.ndarray, val_labels: np.ndarray, threshold: float
) -> pd.DataFrame:
    """How far the filter can trust the labeler, measured on the real validation images, per class and as the
    macro mean: its precision and recall, and among the images it is at least ``threshold`` confident about (those
    the filter would keep), their number and the precision of their label. The labeler chose its best step on these
    images, so the figures lean optimistic; test images are not used."""
    proba = predict_proba(classifier_from_record(labeler), val_images)
    predicted, confident = proba.argmax(axis=1), proba.max(axis=1) >= threshold
    correct = predicted == val_labels
    rows = []
    for index, name in enumerate(labeler["config"]["class_names"]):
        as_class, of_class = predicted == index, val_labels == index
        kept = as_class & confident
        rows.append(
            {
                "class_name": name,
                "n_val": int(of_class.sum()),
                "precision": _share(correct, as_class),
                "recall": _share(correct, of_class),
                "n_confident": int(kept.sum()),
                "confident_precision": _share(correct, kept),
            }
        )
    table = pd.DataFrame(rows)
    macro = {"class_name": "macro mean", "n_val": int(table["n_val"].sum()), "n_confident": int(confident.sum())}
    macro |= {column: float(table[column].mean()) for column in ("precision", "recall", "confident_precision")}
    return pd.concat([table, pd.DataFrame([macro])], ignore_index=True).assign(confidence_threshold=threshold)


def _share(hits: np.ndarray, among: np.ndarray) -> float:
    """The share of ``among`` that are ``hits`` (NaN when ``among`` is empty)."""
    return float(hits[among].mean()) if among.any() else float("nan")


def guard(
    synthetic_ids: np.ndarray,
    synthetic: tuple[np.ndarray, np.ndarray],
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray, np.ndarray],
    config: GuardConfig,
    sources: np.ndarray | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Nearest real train and validation image of every synthetic image, the copy flags, and the guard's report.

    ``synthetic`` is (feature vectors, uint8 images); ``train`` and ``val`` are (image ids, feature vectors,
    uint8 images), all in the same order. ``sources``: per synthetic image, the id of the train image it was made
    from (image-to-image variations; empty otherwise). A variation is meant to resemble its source, so it is judged
    against every other train image; validation images, never a source, are checked in full.
    """
    vectors, images = synthetic
    columns: dict[str, Any] = {"image_id": synthetic_ids}
    report: dict[str, Any] = {"n_synthetic": len(synthetic_ids)}
    for split, (ids, reference, reference_images), other, flag in (
        ("train", train, val, "memorised_train"),
        ("val", val, train, "copies_val"),
    ):
        threshold, source = _threshold(config, split, other[1], reference)
        own = sources if split == "train" else None
        distances, neighbours = _nearest_but_own_source(vectors, reference, ids, config.pixel_neighbours, own)
        columns[f"nearest_{split}_similarity"] = 1 - distances[:, 0]
        columns[f"nearest_{split}_id"] = ids[neighbours[:, 0]]
        by_features = columns[f"nearest_{split}_similarity"] >= threshold - SIMILARITY_TOLERANCE
        by_pixels = np.zeros(len(synthetic_ids), dtype=bool)
        if config.pixel_threshold is not None:
            pixel = np.stack(
                [
                    pixel_distance(images, reference_images[neighbours[:, rank]], config.max_shift)
                    for rank in range(neighbours.shape[1])
                ],
                axis=1,
            )
            columns[f"nearest_{split}_pixel_distance"] = pixel.min(axis=1)
            by_pixels = columns[f"nearest_{split}_pixel_distance"] < config.pixel_threshold
        columns[flag] = by_features | by_pixels
        report |= {
            f"{split}_threshold": threshold,
            f"{split}_threshold_source": source,
            f"n_{flag}": int(columns[flag].sum()),
            f"n_{flag}_by_pixels_only": int((by_pixels & ~by_features).sum()),
        }
    table = pd.DataFrame(columns)
    report["pixel_threshold"] = config.pixel_threshold
    report["copies_val"] = (
        table.loc[table["copies_val"], ["image_id", "nearest_val_id", "nearest_val_similarity"]]
        .round(6)
        .to_dict("records")
    )
    if report["n_copies_val"]:
        logger.warning(
            "%d synthetic image(s) are near-copies of real validation images: dropped", report["n_copies_val"]
        )
    return table, report


def _nearest_but_own_source(
    vectors: np.ndarray, reference: np.ndarray, ids: np.ndarray, k: int, sources: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest reference rows of each vector (cosine distances, indices), leaving out each vector's own
    source image when ``sources`` names one."""
    if sources is None or not np.asarray(sources, dtype=bool).any():
        return nearest(vectors, reference, k=min(k, len(reference)))
    extra = min(k + 1, len(reference))
    distances, neighbours = nearest(vectors, reference, k=extra)
    distances = np.where(ids[neighbours] == np.asarray(sources, dtype=object)[:, None], np.inf, distances)
    order = np.argsort(distances, axis=1, kind="stable")[:, : max(extra - 1, 1)]
    return np.take_along_axis(distances, order, axis=1), np.take_along_axis(neighbours, order, axis=1)


def pixel_distance(images: np.ndarray, references: np.ndarray, max_shift: int) -> np.ndarray:
    """Per pair, the mean absolute difference of brightness-centred pixels at the best alignment within
    ``max_shift`` pixels (grey levels; the overlap of the shifted images is compared)."""
    first, second = images.astype(np.float32), references.astype(np.float32)
    height, width = first.shape[1:3]
    best = np.full(len(first), np.inf, dtype=np.float32)
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            a = first[:, max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)]
            b = second[:, max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)]
            difference = (a - b) - (a - b).mean(axis=(1, 2, 3), keepdims=True)  # a brightness step is not a change
            best = np.minimum(best, np.abs(difference).mean(axis=(1, 2, 3)))
    return best


def _threshold(config: GuardConfig, split: str, reference: np.ndarray, targets: np.ndarray) -> tuple[float, str]:
    """The fixed ``<split>_threshold``, or the ``<split>_percentile`` of the ``reference`` -> ``targets``
    nearest-neighbour similarities."""
    fixed = getattr(config, f"{split}_threshold")
    if fixed is not None:
        return float(fixed), "fixed"
    percentile = getattr(config, f"{split}_percentile")
    similarities = 1 - nearest(reference, targets)[0][:, 0]
    other = "val" if split == "train" else "train"
    return float(np.percentile(similarities, percentile)), (
        f"percentile {percentile:g} of {len(similarities)} real {other}->{split} nearest-neighbour cosine similarities"
    )


def apply_filter(
    synthetic_manifest: pd.DataFrame, predictions: pd.DataFrame, guarded: pd.DataFrame, config: FilterConfig
) -> pd.DataFrame:
    """The verdict on every synthetic image: ``verdict`` (keep/drop), ``drop_reason``, ``final_label`` and
    ``final_class`` (the predicted class in relabel mode, else the intended one)."""
    frame = synthetic_manifest.reset_index(drop=True).merge(predictions, on="image_id", how="left", validate="1:1")
    frame = frame.merge(guarded, on="image_id", how="left", validate="1:1")
    relabel, judged = config.mode == "relabel", config.mode != "guard_only"
    failures = {
        "copies_val": frame["copies_val"].to_numpy(bool),
        "memorised_train": frame["memorised_train"].to_numpy(bool),
        "disagrees": ~frame["agrees"].to_numpy(bool) & (config.mode == "filter"),
        "low_confidence": (frame["confidence"].to_numpy(float) < config.confidence_threshold) & judged,
    }
    reason = np.full(len(frame), "", dtype=object)
    for name in reversed(DROP_REASONS):  # the first failing check in DROP_REASONS order wins
        reason[failures[name]] = name
    frame["drop_reason"] = reason.astype(str)
    frame["verdict"] = np.where(frame["drop_reason"] == "", "keep", "drop")
    frame["final_label"] = (frame["predicted_label"] if relabel else frame["label"]).astype(int)
    frame["final_class"] = frame["predicted_class"] if relabel else frame["intended_class"]
    logger.info(
        "Pseudo-labeling (%s mode) keeps %d of %d synthetic images", config.mode, (reason == "").sum(), len(frame)
    )
    return frame


def stage_counts(labeled_synthetic: pd.DataFrame, class_names: list[str]) -> pd.DataFrame:
    """Images left per intended class after each check, and the kept images counted by final class too."""
    intended, reason = labeled_synthetic["intended_class"], labeled_synthetic["drop_reason"]
    table = pd.DataFrame(index=pd.Index(class_names, name="class_name"))
    for depth, stage in enumerate(STAGES):
        table[stage] = intended[~reason.isin(DROP_REASONS[:depth])].value_counts().reindex(class_names, fill_value=0)
    kept = kept_synthetic(labeled_synthetic)
    table["kept_by_final_class"] = kept["final_class"].value_counts().reindex(class_names, fill_value=0)
    table.loc["total"] = table.sum()
    return table.astype(int).reset_index()
