"""Nodes of the reduction pipeline: a representative subset of each dominant class's real train images."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from generative_augmentation.core.features import embedding_matrix
from generative_augmentation.core.manifest import split_rows, train_counts
from generative_augmentation.core.plots import embedding_scatter, message_figure
from generative_augmentation.core.reduction import ReductionConfig, select_representatives, tsne_map
from generative_augmentation.core.runtime import derive_seed

logger = logging.getLogger(__name__)

SELECTED_COLUMNS = ["image_id", "image_key", "class_name", "label", "selected", "tsne_x", "tsne_y"]


def select_dominant_subsets(
    manifest: pd.DataFrame, embeddings: pd.DataFrame, reduction: dict[str, Any], seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Every real train image of the dominant classes with its t-SNE coordinates and whether it is kept; a
    per-class summary; MLflow metrics. No dominant class gives empty tables."""
    config = ReductionConfig.parse(reduction)
    train, counts = split_rows(manifest, "train"), train_counts(manifest)
    dominant = config.dominant(counts)
    targets = {name: config.target(counts, name, dominant) for name in dominant}  # fail before any t-SNE
    frames = []
    for class_name, target in tqdm(targets.items(), desc="reduce dominant classes", unit="class"):
        rows = train[train["class_name"] == class_name].reset_index(drop=True)
        class_seed = derive_seed(seed, "reduction", class_name)
        coords = tsne_map(embedding_matrix(embeddings, rows["image_id"]), class_seed, config.tsne)
        selected = select_representatives(coords, target, class_seed)
        frames.append(
            rows[["image_id", "image_key", "class_name", "label"]].assign(
                selected=selected, tsne_x=coords[:, 0], tsne_y=coords[:, 1]
            )
        )
        logger.info("Class %s: %d of %d train images selected", class_name, target, len(rows))
    if not dominant:
        logger.info("No dominant class (parameters reduction.dominant_classes / count_threshold): nothing reduced")
    selected = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame({column: pd.Series(dtype=object) for column in SELECTED_COLUMNS})
    )
    table = pd.DataFrame(
        {
            "class_name": list(targets),
            "train_images": [int(counts[name]) for name in targets],
            "target_count": list(targets.values()),
        }
    )
    table["dropped"] = table["train_images"] - table["target_count"]
    metrics = {
        f"{column}.{row.class_name}": getattr(row, column)
        for row in table.itertuples()
        for column in ("target_count", "dropped")
    }
    return (
        selected[SELECTED_COLUMNS],
        table,
        {name: {"value": float(value), "step": 0} for name, value in metrics.items()},
    )


def plot_selection(selected_images: pd.DataFrame) -> dict[str, Figure]:
    """One t-SNE map per reduced class, selected images ringed and dropped ones faded."""
    figures = {}
    for class_name, rows in selected_images.groupby("class_name", sort=False):
        chosen = rows["selected"].to_numpy(bool)
        figures[f"{class_name}.png"] = embedding_scatter(
            rows[["tsne_x", "tsne_y"]].to_numpy(),
            rows["class_name"].to_numpy(),
            f"{class_name}: {chosen.sum()} of {len(rows)} selected (ringed), rest dropped",
            highlight=chosen,
        )
    return figures or {"no_dominant_class.png": message_figure("No dominant class: parameter reduction named none")}
