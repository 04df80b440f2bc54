"""Nodes of the reduction pipeline: a representative subset of each dominant class's real train images.

As the paper did for Diabetes and Normal: per dominant class, an openTSNE map of the feature vectors (seeded),
KMeans in that map with k = the target count, and, per centroid, the nearest image not already taken.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.cluster import KMeans
from sklearn.metrics import pairwise_distances
from tqdm.auto import tqdm

from generative_augmentation.core.plots import embedding_scatter
from generative_augmentation.core.reduction import KMEANS_N_INIT, _nearest_unused, _requested_count
from generative_augmentation.core.runtime import derive_seed
from generative_augmentation.pipelines.feature_clustering.nodes import class_map, embedding_matrix

logger = logging.getLogger(__name__)

SELECTED_COLUMNS = ["image_id", "image_key", "class_name", "label", "selected", "tsne_x", "tsne_y"]


def select_representatives(
    manifest: pd.DataFrame, embeddings: pd.DataFrame, reduction: dict[str, Any], seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """``selected_images``: every real train image of the dominant classes, with its t-SNE coordinates and
    whether it is kept; a per-class summary; and MLflow metrics. No dominant class gives empty tables."""
    train = manifest[manifest["split"] == "train"].reset_index(drop=True)
    counts = train.groupby("class_name").size()
    dominant = dominant_classes(counts, reduction)
    spec = reduction.get("target_count", "largest_minority")
    targets = {name: target_count(spec, counts, name, dominant) for name in dominant}  # fail before any t-SNE
    frames, summary = [], []
    for class_name, target in tqdm(targets.items(), desc="reduce dominant classes", unit="class"):
        rows = train[train["class_name"] == class_name]
        frame = _select_class(rows, embedding_matrix(embeddings, rows["image_id"]), target, reduction, seed)
        frames.append(frame)
        summary.append({"class_name": class_name, "train_images": len(rows), "target_count": target})
        logger.info("Class %s: %d of %d train images selected", class_name, target, len(rows))
    if not dominant:
        logger.warning("No dominant class (parameters reduction.dominant_classes / count_threshold): nothing reduced")
    selected = pd.concat(frames, ignore_index=True) if frames else _empty_selection()
    table = pd.DataFrame(summary, columns=["class_name", "train_images", "target_count"])
    table["dropped"] = table["train_images"] - table["target_count"]
    metrics = {
        f"{column}.{row.class_name}": getattr(row, column)
        for row in table.itertuples()
        for column in ("target_count", "dropped")
    }
    return selected[SELECTED_COLUMNS], table, {name: {"value": float(v), "step": 0} for name, v in metrics.items()}


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
    if not figures:
        figure = Figure(figsize=(6, 2), layout="constrained")
        figure.text(0.5, 0.5, "No dominant class: parameter reduction named none", ha="center", va="center")
        figures["no_dominant_class.png"] = figure
    return figures


def dominant_classes(counts: pd.Series, reduction: dict[str, Any]) -> list[str]:
    """The classes named in ``reduction.dominant_classes``, else those above ``reduction.count_threshold``."""
    named = [str(name) for name in reduction.get("dominant_classes") or []]
    threshold = reduction.get("count_threshold")
    if named and threshold is not None:
        raise ValueError("Give parameter reduction.dominant_classes or reduction.count_threshold, not both")
    if named:
        unknown = sorted(set(named) - set(counts.index))
        if unknown:
            raise ValueError(
                f"Class(es) {unknown} in parameter reduction.dominant_classes have no train images; "
                f"known: {sorted(counts.index)}"
            )
        return named
    if threshold is None:
        return []
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise ValueError(f"Parameter reduction.count_threshold must be null or an integer >= 1, got {threshold!r}")
    return [str(name) for name in counts.index if counts[name] > threshold]


def target_count(spec: Any, counts: pd.Series, class_name: str, dominant: list[str]) -> int:
    """The number of images of ``class_name`` to keep, from ``reduction.target_count``: a count, a fraction in
    (0, 1] of the class, or ``largest_minority`` (the size of the largest class that is not dominant)."""
    try:
        requested = _requested_count(spec, counts.to_dict(), int(counts[class_name]), dominant)
    except ValueError as error:
        raise ValueError(f"Parameter reduction.target_count: {error}") from error
    if requested > counts[class_name]:
        raise ValueError(
            f"Parameter reduction.target_count ({spec!r}: {requested} images) is larger than class {class_name!r}, "
            f"which has {counts[class_name]} train images"
        )
    return int(requested)


def _select_class(
    rows: pd.DataFrame, vectors: np.ndarray, target: int, reduction: dict[str, Any], seed: int
) -> pd.DataFrame:
    """t-SNE map of one class, KMeans with ``target`` clusters in it, the image nearest each centroid."""
    class_seed = derive_seed(seed, "reduction", rows["class_name"].iloc[0])
    coords = class_map(vectors, class_seed, reduction.get("tsne") or {})
    selected = np.zeros(len(rows), dtype=bool)
    if target == len(rows):
        selected[:] = True
    else:
        kmeans = KMeans(n_clusters=target, n_init=KMEANS_N_INIT, random_state=class_seed).fit(coords)
        selected[_nearest_unused(pairwise_distances(kmeans.cluster_centers_, coords))] = True
    frame = rows[["image_id", "image_key", "class_name", "label"]].reset_index(drop=True)
    return frame.assign(selected=selected, tsne_x=coords[:, 0], tsne_y=coords[:, 1])


def _empty_selection() -> pd.DataFrame:
    columns = {"image_id": str, "image_key": str, "class_name": str, "label": int, "selected": bool}
    frame = pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in columns.items()})
    return frame.assign(tsne_x=pd.Series(dtype=float), tsne_y=pd.Series(dtype=float))
