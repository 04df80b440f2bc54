"""Nodes of the feature_clustering pipeline: embed the real images, cluster each class, map the clusters.

``embeddings`` holds one row per real image of every split (``image_id``, ``split``, ``label``, ``class_name``
and ``vector``, a list of float32 of the extractor's width): the clusters use the train rows only, and
``pseudo_labeling``'s memorisation guard reads the train and test rows, so no image is embedded twice in a run.
``feature_extractor`` records how the vectors were made (and, for ``classifier_penultimate``, the trained
classifier's weights), so later pipelines embed synthetic images in the very same feature space.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from generative_augmentation.core.classifier import TrainingConfig, rebuild_classifier, train_classifier
from generative_augmentation.core.clustering import ClusterResult, cluster_class
from generative_augmentation.core.features import (
    EXTRACTORS,
    ClassifierPenultimateExtractor,
    EfficientNetLite0Extractor,
    TorchFeatureExtractor,
)
from generative_augmentation.core.images import channels_for, stack_partitions
from generative_augmentation.core.plots import embedding_scatter
from generative_augmentation.core.reduction import tsne_embedding
from generative_augmentation.core.runtime import derive_seed

logger = logging.getLogger(__name__)

EMBEDDING_COLUMNS = ["image_id", "split", "label", "class_name", "vector"]
CLUSTERS_COLUMNS = [
    "image_id", "class_name", "label", "cluster", "is_representative", "cohesion", "flagged", "distance_to_centroid",
]  # fmt: skip


def embed_real_images(
    manifest: pd.DataFrame,
    real_images: dict,
    feature_clustering: dict[str, Any],
    image: dict[str, Any],
    seed: int,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Embed every real image with the extractor named in ``feature_clustering.extractor.name``.

    ``efficientnet_lite0``: the frozen offline ImageNet network at ``extractor.image_size``.
    ``classifier_penultimate``: a classifier trained on real train (selected on real val) with the project's one
    training loop and the ``extractor.classifier`` settings; its penultimate layer gives the vectors.
    Returns the embeddings table and the extractor record (``{"state_dict", "config"}``).
    """
    settings = feature_clustering["extractor"]
    name = extractor_name(settings)
    size, mode = int(image["size"]), str(image["mode"])
    images = stack_partitions(real_images, manifest["image_key"], size, mode)
    if name == "classifier_penultimate":
        weights = _train_feature_classifier(settings, manifest, images, image, seed)
    else:
        weights = {"state_dict": {}, "config": _extractor_config(settings, image)}
    extractor = extractor_from_weights(weights)
    logger.info("Embedding %d real images with %s (%d-d)", len(images), name, extractor.dim)
    vectors = extractor.embed(images, batch_size=int(settings.get("batch_size", 64)), progress=True)
    table = manifest[["image_id", "split", "label", "class_name"]].reset_index(drop=True)
    table["vector"] = list(vectors)
    return table[EMBEDDING_COLUMNS], weights


def cluster_classes(
    embeddings: pd.DataFrame, manifest: pd.DataFrame, feature_clustering: dict[str, Any], seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """KMeans per class on the real train embeddings: k fixed or chosen by silhouette, representatives,
    cohesion (mean minus std of the representatives' pairwise cosine similarities) and loose-cluster flags.

    Returns ``clusters`` (one row per train image), a per-cluster summary and MLflow metrics.
    """
    settings = clustering_settings(feature_clustering.get("clustering") or {})
    train = _train_rows(manifest)
    vectors = embedding_matrix(embeddings, train["image_id"])
    frames, summaries = [], []
    for label, class_name in tqdm(_classes(train), desc="cluster classes", unit="class"):
        rows = np.flatnonzero(train["label"].to_numpy() == label)
        result = _cluster_one_class(vectors[rows], class_name, settings, seed)
        frames.append(_cluster_frame(train.iloc[rows], result))
        summaries.append(_cluster_summary(class_name, label, result))
        logger.info("Class %s: k=%d, %d flagged cluster(s)", class_name, result.k, int(result.flagged.sum()))
    clusters = pd.concat(frames, ignore_index=True)[CLUSTERS_COLUMNS]
    summary = pd.concat(summaries, ignore_index=True)
    return clusters, summary, _cluster_metrics(summary)


def plot_cluster_maps(
    embeddings: pd.DataFrame, clusters: pd.DataFrame, feature_clustering: dict[str, Any], seed: int
) -> dict[str, Figure]:
    """One t-SNE map per class (openTSNE, seeded), coloured by cluster, representatives ringed."""
    tsne = feature_clustering.get("tsne") or {}
    figures = {}
    for class_name, rows in tqdm(clusters.groupby("class_name", sort=False), desc="t-SNE maps", unit="class"):
        vectors = embedding_matrix(embeddings, rows["image_id"])
        coords = class_map(vectors, derive_seed(seed, "feature_clustering", "tsne", class_name), tsne)
        groups = [
            f"cluster {c}" + (" (flagged)" if f else "") for c, f in zip(rows["cluster"], rows["flagged"], strict=True)
        ]
        title = f"{class_name}: {len(rows)} train images, k={rows['cluster'].nunique()}"
        figures[f"{class_name}.png"] = embedding_scatter(
            coords, groups, title, highlight=rows["is_representative"].to_numpy(), highlight_label="representative"
        )
    return figures


def extractor_name(settings: dict[str, Any]) -> str:
    """The validated ``feature_clustering.extractor.name``."""
    name = settings.get("name")
    if name not in EXTRACTORS:
        raise ValueError(
            f"Unknown feature extractor {name!r} (parameter feature_clustering.extractor.name); "
            f"use one of {sorted(EXTRACTORS)}"
        )
    return str(name)


def extractor_from_weights(feature_extractor: dict[str, Any]) -> TorchFeatureExtractor:
    """Rebuild the extractor that made ``embeddings`` from its saved record (the ``feature_extractor`` dataset)."""
    config = feature_extractor["config"]
    name = extractor_name(config)
    if name == "efficientnet_lite0":
        return EfficientNetLite0Extractor(
            image_size=int(config["image_size"]), normalisation=config["normalisation"], device=config.get("device")
        )
    classifier, image = config["classifier"], config["image"]
    model = rebuild_classifier(classifier, int(config["num_classes"]), int(image["size"]), channels_for(image["mode"]))
    model.load_state_dict(feature_extractor["state_dict"])
    return ClassifierPenultimateExtractor(model, device=config.get("device"))


def embedding_matrix(embeddings: pd.DataFrame, image_ids: pd.Series | list[str]) -> np.ndarray:
    """The ``(N, D)`` float32 vectors of ``image_ids``, in that order; missing ids fail with a clear error."""
    index = pd.Index(embeddings["image_id"])
    positions = index.get_indexer(list(image_ids))
    missing = np.flatnonzero(positions < 0)
    if len(missing):
        example = list(pd.Series(list(image_ids)).iloc[missing[:3]])
        raise ValueError(
            f"{len(missing)} image(s) have no embedding, e.g. {example}: the embeddings are stale, "
            "rerun the feature_clustering pipeline"
        )
    vectors = embeddings["vector"].to_numpy()[positions]
    if len(vectors) == 0:
        return np.zeros((0, len(embeddings["vector"].iloc[0]) if len(embeddings) else 0), dtype=np.float32)
    return np.stack(vectors).astype(np.float32, copy=False)


def class_map(vectors: np.ndarray, seed: int, tsne: dict[str, Any]) -> np.ndarray:
    """2-D openTSNE map of one class's vectors (a single image sits at the origin)."""
    if len(vectors) < 2:
        return np.zeros((len(vectors), 2))
    return tsne_embedding(
        vectors, seed=seed, perplexity=float(tsne.get("perplexity", 30.0)), n_iter=int(tsne.get("n_iter", 500))
    )


def clustering_settings(clustering: dict[str, Any]) -> dict[str, Any]:
    """Validated ``feature_clustering.clustering`` settings with defaults filled in."""
    where = "feature_clustering.clustering"
    threshold = float(clustering.get("cohesion_threshold", 0.5))
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"Parameter {where}.cohesion_threshold must be in [0, 1], got {threshold}")
    k = clustering.get("k")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"Parameter {where}.k must be null (choose by silhouette) or an integer >= 1, got {k!r}")
    k_range = tuple(int(v) for v in clustering.get("k_range", (2, 8)))
    if len(k_range) != 2 or not 2 <= k_range[0] <= k_range[1]:
        raise ValueError(f"Parameter {where}.k_range must be [min, max] with 2 <= min <= max, got {list(k_range)}")
    representatives = int(clustering.get("n_representatives", 5))
    if representatives < 1:
        raise ValueError(f"Parameter {where}.n_representatives must be at least 1, got {representatives}")
    return {"k": k, "k_range": k_range, "n_representatives": representatives, "cohesion_threshold": threshold}


def _cluster_one_class(vectors: np.ndarray, class_name: str, settings: dict[str, Any], seed: int) -> ClusterResult:
    k = settings["k"]
    if k is not None and k > len(vectors):
        logger.info("Class %s has %d train images: k=%d clipped to %d", class_name, len(vectors), k, len(vectors))
        k = len(vectors)
    return cluster_class(
        vectors, k, settings["k_range"], settings["n_representatives"], settings["cohesion_threshold"],
        derive_seed(seed, "feature_clustering", "kmeans", class_name),
    )  # fmt: skip


def _cluster_frame(rows: pd.DataFrame, result: ClusterResult) -> pd.DataFrame:
    is_representative = np.zeros(len(rows), dtype=bool)
    is_representative[result.representative_indices] = True
    return pd.DataFrame(
        {
            "image_id": rows["image_id"].to_numpy(),
            "class_name": rows["class_name"].to_numpy(),
            "label": rows["label"].to_numpy(),
            "cluster": result.assignments.astype(int),
            "is_representative": is_representative,
            "cohesion": result.cohesion[result.assignments].astype(float),
            "flagged": result.flagged[result.assignments].astype(bool),
            "distance_to_centroid": result.distances.astype(float),
        }
    )


def _cluster_summary(class_name: str, label: int, result: ClusterResult) -> pd.DataFrame:
    sizes = np.bincount(result.assignments, minlength=result.k)
    return pd.DataFrame(
        {
            "class_name": class_name,
            "label": label,
            "k": result.k,
            "silhouette": result.silhouette_scores.get(result.k, np.nan),
            "cluster": np.arange(result.k),
            "size": sizes,
            "n_representatives": [len(rows) for rows in result.representatives],
            "cohesion": result.cohesion,
            "flagged": result.flagged,
        }
    )


def _cluster_metrics(summary: pd.DataFrame) -> dict[str, Any]:
    per_class = summary.groupby("class_name", sort=False).agg(k=("k", "first"), flagged=("flagged", "sum"))
    metrics = {f"k.{name}": int(row.k) for name, row in per_class.iterrows()}
    metrics |= {f"flagged_clusters.{name}": int(row.flagged) for name, row in per_class.iterrows()}
    metrics |= {"flagged_clusters": int(summary["flagged"].sum()), "clusters": len(summary)}
    return {name: {"value": float(value), "step": 0} for name, value in metrics.items()}


def _train_feature_classifier(
    settings: dict[str, Any], manifest: pd.DataFrame, images: np.ndarray, image: dict[str, Any], seed: int
) -> dict[str, Any]:
    """The real-only classifier behind ``classifier_penultimate``: trained on real train, selected on real val."""
    split, labels = manifest["split"].to_numpy(), manifest["label"].to_numpy()
    classifier = dict(settings.get("classifier") or {})
    config = TrainingConfig.from_dict({**classifier, "seed": derive_seed(seed, "feature_clustering", "classifier")})
    num_classes = int(manifest["label"].max()) + 1
    train, val = split == "train", split == "val"
    model, result = train_classifier((images[train], labels[train]), (images[val], labels[val]), config, num_classes)
    record = _extractor_config(settings, image) | {
        "classifier": classifier, "num_classes": num_classes,
        "best_epoch": result.best_epoch, "val_macro_f1": result.best_val_macro_f1,
    }  # fmt: skip
    return {"state_dict": model.state_dict(), "config": record}


def _extractor_config(settings: dict[str, Any], image: dict[str, Any]) -> dict[str, Any]:
    image_size = settings.get("image_size", 64)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise ValueError(
            f"Parameter feature_clustering.extractor.image_size must be an integer >= 32, got {image_size!r}"
        )
    return {
        "name": extractor_name(settings),
        "image_size": image_size,
        "normalisation": str(settings.get("normalisation", "inception")),
        "device": settings.get("device"),
        "image": {"size": int(image["size"]), "mode": str(image["mode"])},
    }


def _train_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    train = manifest[manifest["split"] == "train"].reset_index(drop=True)
    if train.empty:
        raise ValueError("The manifest has no train images: run data_preparation first")
    return train


def _classes(rows: pd.DataFrame) -> list[tuple[int, str]]:
    """(label, class_name) pairs present in ``rows``, in label order."""
    pairs = rows.drop_duplicates("label").sort_values("label")
    return [(int(label), str(name)) for label, name in zip(pairs["label"], pairs["class_name"], strict=True)]
