"""Nodes of the evaluation pipeline: train per seed, select on real val, score once on real test."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from generative_augmentation.core.classifier import TrainingConfig, predict_proba, rebuild_classifier, train_classifier
from generative_augmentation.core.images import augment_copy, channels_for, stack_partitions, traditional_augmentation
from generative_augmentation.core.metrics import classification_scores, confusion
from generative_augmentation.core.plots import confusion_matrix_figure
from generative_augmentation.core.runtime import derive_seed

logger = logging.getLogger(__name__)


def class_names_of(manifest: pd.DataFrame) -> list[str]:
    """Class names in label order."""
    return manifest.drop_duplicates("label").sort_values("label")["class_name"].tolist()


def split_arrays(manifest: pd.DataFrame, images: dict, split: str, image: dict) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one real split."""
    rows = manifest[manifest["split"] == split]
    arrays = stack_partitions(images, rows["image_key"], int(image["size"]), image["mode"])
    return arrays, rows["label"].to_numpy()


def training_arrays(
    training_manifest: pd.DataFrame, real_images: dict, synthetic_images: dict | None, image: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of a scenario's training manifest (real, synthetic and traditional copies)."""
    size, mode = int(image["size"]), image["mode"]
    arrays = np.zeros((len(training_manifest), size, size, channels_for(mode)), dtype=np.uint8)
    origin = training_manifest["origin"].to_numpy()
    for kind, source in (("real", real_images), ("traditional", real_images), ("synthetic", synthetic_images)):
        mask = origin == kind
        if mask.any():
            if source is None:
                raise ValueError(f"The training manifest has {kind} rows but no {kind} images were given")
            arrays[mask] = stack_partitions(source, training_manifest.loc[mask, "image_key"], size, mode)
    unknown = sorted(set(origin) - {"real", "traditional", "synthetic"})
    if unknown:
        raise ValueError(f"Unknown origin(s) {unknown} in the training manifest (column 'origin')")
    traditional = np.flatnonzero(origin == "traditional")
    if len(traditional):
        transform = traditional_augmentation(size)
        seeds = training_manifest["augment_seed"].to_numpy()
        for row in traditional:
            arrays[row] = augment_copy(arrays[row], transform, int(seeds[row]))
    return arrays, training_manifest["label"].to_numpy()


def train_scenario(
    training_manifest: pd.DataFrame,
    manifest: pd.DataFrame,
    real_images: dict,
    classifier: dict[str, Any],
    evaluation: dict[str, Any],
    image: dict[str, Any],
    synthetic_images: dict | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Train one classifier per seed on the scenario's training set; keep each seed's best-on-val weights."""
    seeds = [int(s) for s in evaluation.get("seeds") or []]
    if not seeds:
        raise ValueError("Parameter evaluation.seeds is empty: give at least one seed")
    num_classes = int(manifest["label"].max()) + 1
    train = training_arrays(training_manifest, real_images, synthetic_images, image)
    val = split_arrays(manifest, real_images, "val", image)
    state, histories, selection = {}, [], {}
    for seed in seeds:
        config = TrainingConfig.from_dict({**classifier, "seed": derive_seed(seed, "classifier")})
        _, result = train_classifier(train, val, config, num_classes)
        state.update({f"seed_{seed}.{name}": tensor for name, tensor in result.state_dict.items()})
        histories.append(pd.DataFrame(result.history).assign(seed=seed))
        selection[str(seed)] = {"best_epoch": result.best_epoch, "val_macro_f1": result.best_val_macro_f1}
    config = {
        "classifier": classifier, "seeds": seeds, "num_classes": num_classes, "image": image,
        "class_names": class_names_of(manifest), "train_size": len(train[1]), "selection": selection,
    }  # fmt: skip
    return {"state_dict": state, "config": config}, pd.concat(histories, ignore_index=True)


def seed_model(weights: dict[str, Any], seed: int) -> torch.nn.Module:
    """Rebuild the classifier of one seed from a scenario's saved weights."""
    config, prefix = weights["config"], f"seed_{seed}."
    classifier = config["classifier"]
    model = rebuild_classifier(
        classifier, config["num_classes"], int(config["image"]["size"]), channels_for(config["image"]["mode"])
    )
    model.load_state_dict({k[len(prefix) :]: v for k, v in weights["state_dict"].items() if k.startswith(prefix)})
    return model


def score_scenario(
    weights: dict[str, Any], manifest: pd.DataFrame, real_images: dict, image: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, Any], Figure, pd.DataFrame]:
    """Score every seed once on the real test split.

    Returns the long metrics table (seed, metric, class, value), MLflow metrics (mean over seeds), the
    confusion matrix summed over seeds, and the test predictions.
    """
    test_images, test_labels = split_arrays(manifest, real_images, "test", image)
    class_names = weights["config"]["class_names"]
    rows, matrix, predictions = [], np.zeros((len(class_names),) * 2, dtype=int), []
    test_ids = manifest.loc[manifest["split"] == "test", "image_id"].to_numpy()
    for seed in weights["config"]["seeds"]:
        proba = predict_proba(seed_model(weights, seed), test_images)
        matrix += confusion(test_labels, proba, len(class_names))
        rows += [
            {"seed": seed, **_split_metric_name(name), "value": v}
            for name, v in classification_scores(test_labels, proba, class_names).items()
        ]
        predictions.append(
            pd.DataFrame(
                {
                    "image_id": test_ids,
                    "seed": seed,
                    "label": test_labels,
                    "predicted": proba.argmax(1),
                    "confidence": proba.max(1),
                }
            )
        )
    table = pd.DataFrame(rows)
    means = table.groupby(["metric", "class_name"])["value"].mean()
    mlflow_metrics = {
        (f"test_{metric}" if cls == "macro" else f"test_{metric}.{cls}"): {"value": float(v), "step": 0}
        for (metric, cls), v in means.items() if np.isfinite(v)
    }  # fmt: skip
    figure = confusion_matrix_figure(matrix, class_names, normalise=True)
    return table, mlflow_metrics, figure, pd.concat(predictions, ignore_index=True)


def _split_metric_name(name: str) -> dict[str, str]:
    """``recall.grade_1`` → metric ``recall``, class ``grade_1``; ``macro_f1`` → ``f1``, ``macro``."""
    if "." in name:
        metric, class_name = name.split(".", 1)
        return {"metric": metric, "class_name": class_name}
    metric = {"auc_ovr": "auc"}.get(name, name.removeprefix("macro_"))
    return {"metric": metric, "class_name": "macro"}
