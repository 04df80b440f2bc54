"""Nodes of the feature_clustering pipeline: embed the real images, cluster each class, map the clusters.

``embeddings`` holds one row per real image of every split; the clusters use the train rows only, and
``pseudo_labeling``'s memorisation guard reads the train and validation rows, so no image is embedded twice in a
run. ``feature_extractor`` records how the vectors were made, so later pipelines embed synthetic images in the
very same feature space.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from generative_augmentation.core.classifier import ClassifierConfig
from generative_augmentation.core.clustering import FeatureClusteringConfig, cluster_classes
from generative_augmentation.core.features import embed_manifest, embedding_matrix, fit_extractor
from generative_augmentation.core.images import ImageSpec
from generative_augmentation.core.manifest import split_rows
from generative_augmentation.core.plots import embedding_scatter
from generative_augmentation.core.reduction import tsne_map
from generative_augmentation.core.runtime import derive_seed


def embed_real_images(
    manifest: pd.DataFrame,
    real_images: dict,
    feature_clustering: dict[str, Any],
    classifier: dict[str, Any],
    image: dict[str, Any],
    seed: int,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Embed every real image; returns the embeddings and the extractor's record."""
    config = FeatureClusteringConfig.parse(feature_clustering)
    spec = ImageSpec.parse(image)
    extractor, record = fit_extractor(
        config.extractor, ClassifierConfig.parse(classifier), manifest, real_images, spec, seed
    )
    return embed_manifest(extractor, manifest, real_images, spec, config.extractor.batch_size), record


def cluster_train_images(
    embeddings: pd.DataFrame, manifest: pd.DataFrame, feature_clustering: dict[str, Any], seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """KMeans per class on the real train embeddings; the clusters, a per-cluster summary, MLflow metrics."""
    config = FeatureClusteringConfig.parse(feature_clustering)
    train = split_rows(manifest, "train")
    clusters, summary = cluster_classes(embedding_matrix(embeddings, train["image_id"]), train, config.clustering, seed)
    per_class = summary.groupby("class_name", sort=False).agg(k=("k", "first"), flagged=("flagged", "sum"))
    metrics = {f"k.{name}": row.k for name, row in per_class.iterrows()}
    metrics |= {f"flagged_clusters.{name}": row.flagged for name, row in per_class.iterrows()}
    metrics |= {"flagged_clusters": summary["flagged"].sum(), "clusters": len(summary)}
    return clusters, summary, {name: {"value": float(value), "step": 0} for name, value in metrics.items()}


def plot_cluster_maps(
    embeddings: pd.DataFrame, clusters: pd.DataFrame, feature_clustering: dict[str, Any], seed: int
) -> dict[str, Figure]:
    """One seeded t-SNE map per class, coloured by cluster, representatives ringed."""
    config = FeatureClusteringConfig.parse(feature_clustering)
    figures = {}
    for class_name, rows in tqdm(clusters.groupby("class_name", sort=False), desc="t-SNE maps", unit="class"):
        coords = tsne_map(
            embedding_matrix(embeddings, rows["image_id"]),
            derive_seed(seed, "feature_clustering", "tsne", class_name),
            config.tsne,
        )
        groups = [
            f"cluster {c}" + (" (flagged)" if f else "") for c, f in zip(rows["cluster"], rows["flagged"], strict=True)
        ]
        title = f"{class_name}: {len(rows)} train images, k={rows['cluster'].nunique()}"
        figures[f"{class_name}.png"] = embedding_scatter(
            coords, groups, title, highlight=rows["is_representative"].to_numpy(), highlight_label="representative"
        )
    return figures
