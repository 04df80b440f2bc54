"""Nodes of the pseudo_labeling pipeline: label every synthetic image, guard against copies, filter.

A labeler trained on real train (selected on real val) gives each synthetic image a predicted class and a
confidence. The memorisation guard embeds the synthetic images in the feature space of ``feature_clustering``
and compares them with the real train and test images embedded there. Its thresholds are calibrated on real
data: a synthetic image is a copy of a train image when it is more cosine-similar to its nearest train image than
``train_percentile`` % of the real *test* images are to theirs (a high percentile of the similarities, i.e. a low
percentile of the distances: closer than almost any unseen real image gets); likewise a copy of a test image when
it is more similar to its nearest test image than ``test_percentile`` % of the real train images are to theirs.
Test copies are reported and always dropped.

Checks, in order; ``drop_reason`` names the first one an image fails: ``copies_test``, ``memorised_train``,
``disagrees`` (filter mode only: the predicted class differs from the intended one) and ``low_confidence``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from generative_augmentation.core.classifier import TrainingConfig, predict_proba, rebuild_classifier, train_classifier
from generative_augmentation.core.features import cosine_nearest
from generative_augmentation.core.images import channels_for, stack_partitions
from generative_augmentation.core.plots import image_grid
from generative_augmentation.core.runtime import derive_seed
from generative_augmentation.pipelines.evaluation.nodes import class_names_of, split_arrays
from generative_augmentation.pipelines.feature_clustering.nodes import embedding_matrix, extractor_from_weights

logger = logging.getLogger(__name__)

FILTER_MODES = ("filter", "relabel", "guard_only")
DROP_REASONS = ("copies_test", "memorised_train", "disagrees", "low_confidence")
STAGES = ("generated", "after_test_copy_guard", "after_memorisation_guard", "after_agreement", "after_confidence")
SIMILARITY_TOLERANCE = 1e-6  # float32 cosine of an exact copy can land a hair below the threshold


def load_synthetic_pool(
    synthetic_manifest: pd.DataFrame,
    synthetic_images: dict,
    manifest: pd.DataFrame,
    pseudo_labeling: dict[str, Any],
    image: dict[str, Any],
) -> np.ndarray:
    """The synthetic images as one ``(N, H, W, C)`` array in manifest order, at the working resolution.

    Fails early, before the labeler trains, on bad settings, an empty pool, or a manifest that does not match
    the images or the real classes.
    """
    check_settings(pseudo_labeling)
    if synthetic_manifest is None or len(synthetic_manifest) == 0:
        raise ValueError("No synthetic pool yet: synthetic_manifest is empty; run the generation pipeline first")
    _check_intended_classes(synthetic_manifest, class_names_of(manifest))
    missing = [key for key in synthetic_manifest["image_key"] if key not in synthetic_images]
    if missing:
        raise ValueError(
            f"synthetic_manifest lists {len(missing)} image(s) missing from synthetic_images, e.g. {missing[:3]}: "
            "the pool and its manifest do not match; rerun the generation pipeline"
        )
    logger.info("Loading %d synthetic images", len(synthetic_manifest))
    return stack_partitions(synthetic_images, synthetic_manifest["image_key"], int(image["size"]), image["mode"])


def train_labeler(
    manifest: pd.DataFrame, real_images: dict, pseudo_labeling: dict[str, Any], image: dict[str, Any], seed: int
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Train the labeler on real train, keep its best-on-real-val weights (the project's one training loop)."""
    labeler = dict(pseudo_labeling.get("labeler") or {})
    config = TrainingConfig.from_dict({**labeler, "seed": derive_seed(seed, "pseudo_labeling", "labeler")})
    num_classes = int(manifest["label"].max()) + 1
    train, val = split_arrays(manifest, real_images, "train", image), split_arrays(manifest, real_images, "val", image)
    model, result = train_classifier(train, val, config, num_classes)
    record = {
        "classifier": labeler, "num_classes": num_classes, "class_names": class_names_of(manifest),
        "image": {"size": int(image["size"]), "mode": str(image["mode"])},
        "best_epoch": result.best_epoch, "val_macro_f1": result.best_val_macro_f1,
    }  # fmt: skip
    return {"state_dict": model.state_dict(), "config": record}, pd.DataFrame(result.history)


def predict_labels(
    synthetic_manifest: pd.DataFrame, synthetic_arrays: np.ndarray, labeler: dict[str, Any]
) -> pd.DataFrame:
    """Predicted class, confidence (top probability) and agreement with the intended class, per synthetic image."""
    config = labeler["config"]
    model = rebuild_classifier(
        config["classifier"],
        int(config["num_classes"]),
        int(config["image"]["size"]),
        channels_for(config["image"]["mode"]),
    )
    model.load_state_dict(labeler["state_dict"])
    proba = predict_proba(model, synthetic_arrays)
    predicted = proba.argmax(axis=1)
    names = np.asarray(config["class_names"])
    return pd.DataFrame(
        {
            "image_id": synthetic_manifest["image_id"].to_numpy(),
            "predicted_label": predicted.astype(int),
            "predicted_class": names[predicted],
            "confidence": proba.max(axis=1).astype(float),
            "agrees": predicted == synthetic_manifest["label"].to_numpy(),
        }
    )


def find_nearest_real(
    synthetic_manifest: pd.DataFrame,
    synthetic_arrays: np.ndarray,
    manifest: pd.DataFrame,
    embeddings: pd.DataFrame,
    feature_extractor: dict[str, Any],
    pseudo_labeling: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Nearest real train and test image (cosine, in the feature space of ``embeddings``) of every synthetic
    image, with the calibrated copy flags; and the guard's report (thresholds, calibration, test copies)."""
    settings = check_settings(pseudo_labeling)["memorisation"]
    train_ids = manifest.loc[manifest["split"] == "train", "image_id"].to_numpy()
    test_ids = manifest.loc[manifest["split"] == "test", "image_id"].to_numpy()
    train, test = embedding_matrix(embeddings, train_ids), embedding_matrix(embeddings, test_ids)
    extractor = extractor_from_weights(feature_extractor)
    batch_size = int(pseudo_labeling.get("embedding_batch_size", 64))
    synthetic = extractor.embed(synthetic_arrays, batch_size=batch_size, progress=True)
    train_threshold, train_source = _threshold(settings, "train", reference_sims=cosine_nearest(test, train)[0])
    test_threshold, test_source = _threshold(settings, "test", reference_sims=cosine_nearest(train, test)[0])
    to_train, to_test = cosine_nearest(synthetic, train), cosine_nearest(synthetic, test)
    nearest = pd.DataFrame(
        {
            "image_id": synthetic_manifest["image_id"].to_numpy(),
            "nearest_train_similarity": to_train[0][:, 0].astype(float),
            "nearest_train_id": train_ids[to_train[1][:, 0]],
            "nearest_test_similarity": to_test[0][:, 0].astype(float),
            "nearest_test_id": test_ids[to_test[1][:, 0]],
        }
    )
    nearest["memorised_train"] = nearest["nearest_train_similarity"] >= train_threshold - SIMILARITY_TOLERANCE
    nearest["copies_test"] = nearest["nearest_test_similarity"] >= test_threshold - SIMILARITY_TOLERANCE
    report = _guard_report(
        nearest, synthetic_manifest, settings, (train_threshold, train_source), (test_threshold, test_source)
    )
    if report["n_copies_test"]:
        logger.warning("%d synthetic image(s) are near-copies of real TEST images: dropped", report["n_copies_test"])
    return nearest, report


def apply_filter(
    synthetic_manifest: pd.DataFrame, predictions: pd.DataFrame, nearest: pd.DataFrame, pseudo_labeling: dict[str, Any]
) -> pd.DataFrame:
    """The verdict on every synthetic image: ``labeled_synthetic``.

    Filter mode keeps an image that passes the guard, agrees with its intended class and has confidence at least
    ``filter.confidence_threshold``; its ``final_label`` is the intended label. Relabel mode (the paper's) keeps
    a guarded, confident image under its predicted class. Guard-only mode keeps every image that passes the
    memorisation and leakage guard under its intended class; the labeler's verdict is recorded, not applied (for
    a labeler too weak to judge, as on RetinaMNIST).
    """
    settings = check_settings(pseudo_labeling)["filter"]
    frame = synthetic_manifest.reset_index(drop=True).merge(predictions, on="image_id", how="left", validate="1:1")
    frame = frame.merge(nearest, on="image_id", how="left", validate="1:1")
    relabel, judged = settings["mode"] == "relabel", settings["mode"] != "guard_only"
    failures = {
        "copies_test": frame["copies_test"].to_numpy(bool),
        "memorised_train": frame["memorised_train"].to_numpy(bool),
        "disagrees": ~frame["agrees"].to_numpy(bool) & (settings["mode"] == "filter"),
        "low_confidence": (frame["confidence"].to_numpy(float) < settings["confidence_threshold"]) & judged,
    }
    reason = np.full(len(frame), "", dtype=object)
    for name in reversed(DROP_REASONS):  # the first failing check in DROP_REASONS order wins
        reason[failures[name]] = name
    frame["drop_reason"] = reason.astype(str)
    frame["verdict"] = np.where(frame["drop_reason"] == "", "keep", "drop")
    frame["final_label"] = (frame["predicted_label"] if relabel else frame["label"]).astype(int)
    frame["final_class"] = frame["predicted_class"] if relabel else frame["intended_class"]
    logger.info(
        "Pseudo-labeling (%s mode) keeps %d of %d synthetic images", settings["mode"], (reason == "").sum(), len(frame)
    )
    return frame


def count_stages(
    labeled_synthetic: pd.DataFrame, manifest: pd.DataFrame, guard: dict[str, Any], labeler: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Images left per intended class after each check, with the kept images counted by final class too;
    and the same counts (plus thresholds and the labeler's val macro-F1) as MLflow metrics."""
    classes = class_names_of(manifest)
    intended = labeled_synthetic["intended_class"]
    reason = labeled_synthetic["drop_reason"]
    table = pd.DataFrame(index=pd.Index(classes, name="class_name"))
    for depth, stage in enumerate(STAGES):
        survivors = ~reason.isin(DROP_REASONS[:depth])
        table[stage] = intended[survivors].value_counts().reindex(classes, fill_value=0)
    kept = labeled_synthetic[labeled_synthetic["verdict"] == "keep"]
    table["kept_by_final_class"] = kept["final_class"].value_counts().reindex(classes, fill_value=0)
    table.loc["total"] = table.sum()
    table = table.astype(int).reset_index()
    metrics = {
        f"{stage}.{row.class_name}": float(getattr(row, stage))
        for row in table.itertuples(index=False) for stage in (*STAGES, "kept_by_final_class")
    }  # fmt: skip
    metrics |= {
        "train_threshold": guard["train_threshold"], "test_threshold": guard["test_threshold"],
        "copies_test": guard["n_copies_test"], "memorised_train": guard["n_memorised_train"],
        "labeler_val_macro_f1": labeler["config"]["val_macro_f1"],
    }  # fmt: skip
    return table, {name: {"value": float(value), "step": 0} for name, value in metrics.items()}


def plot_examples(
    labeled_synthetic: pd.DataFrame, synthetic_arrays: np.ndarray, pseudo_labeling: dict[str, Any]
) -> Figure:
    """Kept and dropped examples of every intended class (dropped ones in check order, so copies come first);
    each row label counts the images and the drop reasons."""
    per_row = int(pseudo_labeling.get("examples_per_row", 8))
    intended, verdict = labeled_synthetic["intended_class"].to_numpy(), labeled_synthetic["verdict"].to_numpy()
    rows = {}
    for class_name in pd.unique(intended):
        kept = np.flatnonzero((intended == class_name) & (verdict == "keep"))
        dropped = np.flatnonzero((intended == class_name) & (verdict == "drop"))
        reason = labeled_synthetic["drop_reason"].iloc[dropped]
        dropped = dropped[np.argsort(reason.map(DROP_REASONS.index).to_numpy(), kind="stable")]  # guard drops first
        reasons = reason.value_counts()
        summary = ", ".join(f"{name} {count}" for name, count in reasons.items())
        rows[f"{class_name}\nkept ({len(kept)})"] = synthetic_arrays[kept[:per_row]]
        rows[f"{class_name}\ndropped ({len(dropped)})\n{summary}"] = synthetic_arrays[dropped[:per_row]]
    mode = check_settings(pseudo_labeling)["filter"]["mode"]
    return image_grid(rows, f"Synthetic images kept and dropped ({mode} mode)", max_per_row=per_row)


def check_settings(pseudo_labeling: dict[str, Any]) -> dict[str, Any]:
    """Validate the ``pseudo_labeling`` parameters; errors name the parameter."""
    filtering = pseudo_labeling.get("filter") or {}
    mode = filtering.get("mode", "filter")
    if mode not in FILTER_MODES:
        raise ValueError(f"Parameter pseudo_labeling.filter.mode must be one of {list(FILTER_MODES)}, got {mode!r}")
    confidence = _unit_interval(
        filtering.get("confidence_threshold", 0.5), "pseudo_labeling.filter.confidence_threshold"
    )
    memorisation = dict(pseudo_labeling.get("memorisation") or {})
    for split in ("train", "test"):
        name = f"pseudo_labeling.memorisation.{split}_percentile"
        percentile = float(memorisation.get(f"{split}_percentile", 99.0))
        if not 0.0 <= percentile <= 100.0:
            raise ValueError(f"Parameter {name} must be in [0, 100], got {percentile}")
        memorisation[f"{split}_percentile"] = percentile
        fixed = memorisation.get(f"{split}_threshold")
        if fixed is not None:
            memorisation[f"{split}_threshold"] = _unit_interval(
                fixed, f"pseudo_labeling.memorisation.{split}_threshold"
            )
    return {"filter": {"mode": mode, "confidence_threshold": confidence}, "memorisation": memorisation}


def _unit_interval(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"Parameter {name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _threshold(settings: dict[str, Any], split: str, reference_sims: np.ndarray) -> tuple[float, str]:
    """The fixed ``<split>_threshold`` when set, else the ``<split>_percentile`` of the reference similarities."""
    fixed = settings.get(f"{split}_threshold")
    if fixed is not None:
        return float(fixed), "fixed"
    percentile = settings[f"{split}_percentile"]
    return float(np.percentile(reference_sims[:, 0], percentile)), f"percentile {percentile:g} of {len(reference_sims)}"


def _guard_report(
    nearest: pd.DataFrame,
    synthetic_manifest: pd.DataFrame,
    settings: dict[str, Any],
    train: tuple[float, str],
    test: tuple[float, str],
) -> dict[str, Any]:
    copies = nearest[nearest["copies_test"]].merge(synthetic_manifest[["image_id", "intended_class"]], on="image_id")
    return {
        "train_threshold": train[0],
        "train_threshold_source": f"{train[1]} real test->train nearest-neighbour cosine similarities"
        if train[1] != "fixed" else "fixed",
        "test_threshold": test[0],
        "test_threshold_source": f"{test[1]} real train->test nearest-neighbour cosine similarities"
        if test[1] != "fixed" else "fixed",
        "train_percentile": settings["train_percentile"],
        "test_percentile": settings["test_percentile"],
        "n_synthetic": len(nearest),
        "n_memorised_train": int(nearest["memorised_train"].sum()),
        "n_copies_test": len(copies),
        "copies_test": [
            {"image_id": row.image_id, "intended_class": row.intended_class, "nearest_test_id": row.nearest_test_id,
             "similarity": round(float(row.nearest_test_similarity), 6)}
            for row in copies.itertuples(index=False)
        ],
    }  # fmt: skip


def _check_intended_classes(synthetic_manifest: pd.DataFrame, class_names: list[str]) -> None:
    """Every synthetic image's intended class is a real class, and its ``label`` is that class's label."""
    unknown = sorted(set(synthetic_manifest["intended_class"]) - set(class_names))
    if unknown:
        raise ValueError(f"synthetic_manifest has intended classes {unknown} that are not real classes {class_names}")
    expected = synthetic_manifest["intended_class"].map({name: i for i, name in enumerate(class_names)})
    mismatched = synthetic_manifest.loc[expected != synthetic_manifest["label"], "image_id"].tolist()
    if mismatched:
        raise ValueError(
            f"{len(mismatched)} synthetic image(s) have a label that is not their intended class's label "
            f"(class order {class_names}), e.g. {mismatched[:3]}"
        )
