"""feature_clustering: real embeddings, per-class clusters and maps, on a tiny generated image set."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_datasets.pandas import ParquetDataset
from matplotlib.collections import PathCollection

from generative_augmentation.core.clustering import CLUSTERS_COLUMNS
from generative_augmentation.core.features import EMBEDDING_COLUMNS, embedding_matrix, extractor_from_record
from generative_augmentation.datasets import OptionalDataset
from generative_augmentation.pipelines.feature_clustering import create_pipeline
from generative_augmentation.pipelines.feature_clustering.nodes import (
    cluster_train_images,
    embed_real_images,
    plot_cluster_maps,
)
from tests.conftest import study_data

CLASS_NAMES = ["zero", "one", "two"]
IMAGE = {"size": 16, "mode": "RGB"}
CLASSIFIER = {"steps": 30, "eval_every": 10, "batch_size": 16}
SETTINGS = {
    "extractor": {"name": "efficientnet_lite0", "image_size": 32, "batch_size": 32},
    "clustering": {"k": None, "k_range": [2, 3], "n_representatives": 2, "cohesion_threshold": 0.9},
    "tsne": {"perplexity": 5, "n_iter": 100},
}


def with_settings(**changes: dict) -> dict:
    settings = copy.deepcopy(SETTINGS)
    for section, values in changes.items():
        settings[section].update(values)
    return settings


@pytest.fixture(scope="module")
def real() -> tuple[pd.DataFrame, dict]:
    return study_data({"train": [12, 9, 7], "val": [4, 4, 4], "test": [5, 4, 4]}, 16, CLASS_NAMES)


@pytest.fixture(scope="module")
def embedded(real) -> tuple[pd.DataFrame, dict]:
    return embed_real_images(*real, SETTINGS, CLASSIFIER, IMAGE, seed=0)


def test_every_real_image_gets_one_efficientnet_vector(real, embedded) -> None:
    manifest, _ = real
    embeddings, record = embedded
    assert embeddings.columns.tolist() == EMBEDDING_COLUMNS
    assert embeddings["image_id"].tolist() == manifest["image_id"].tolist()
    assert embedding_matrix(embeddings, manifest["image_id"]).shape == (len(manifest), 1280)
    assert record["config"]["extractor"]["name"] == "efficientnet_lite0" and record["state_dict"] == {}


def test_clusters_cover_every_train_image_with_representatives_and_flags(real, embedded) -> None:
    manifest, _ = real
    clusters, summary, metrics = cluster_train_images(embedded[0], manifest, SETTINGS, seed=0)
    assert clusters.columns.tolist() == CLUSTERS_COLUMNS
    assert sorted(clusters["image_id"]) == sorted(manifest.loc[manifest["split"] == "train", "image_id"])
    assert clusters.groupby("class_name").size().to_dict() == {"zero": 12, "one": 9, "two": 7}
    assert summary["k"].between(2, 3).all()
    representatives = clusters[clusters["is_representative"]].groupby(["class_name", "cluster"]).size()
    assert (representatives <= 2).all() and (representatives >= 1).all()
    assert (clusters["flagged"] == (clusters["cohesion"] < 0.9)).all()
    assert metrics["clusters"]["value"] == len(summary)
    for (class_name, cluster), rows in clusters.groupby(["class_name", "cluster"]):
        assert rows.nsmallest(int(representatives[(class_name, cluster)]), "distance_to_centroid")[
            "is_representative"
        ].all()


def test_cluster_maps_draw_each_train_image_once_with_its_representatives_ringed(real, embedded) -> None:
    clusters, _, _ = cluster_train_images(embedded[0], real[0], SETTINGS, seed=0)
    figures = plot_cluster_maps(embedded[0], clusters, SETTINGS, seed=0)
    assert sorted(figures) == ["one.png", "two.png", "zero.png"]
    for name, count in (("zero", 12), ("one", 9), ("two", 7)):
        collections = [item for item in figures[f"{name}.png"].axes[0].collections if isinstance(item, PathCollection)]
        faded = sum(len(item.get_offsets()) for item in collections if item.get_alpha() is not None)
        ringed = sum(len(item.get_offsets()) for item in collections if item.get_alpha() is None)
        rows = clusters[clusters["class_name"] == name]
        assert faded + ringed == count and ringed == rows["is_representative"].sum()


def test_classifier_penultimate_extractor_is_trained_and_rebuilt_from_its_record(real) -> None:
    manifest, images = real
    settings = with_settings(extractor={"name": "classifier_penultimate", "classifier_overrides": {"width": 8}})
    embeddings, record = embed_real_images(manifest, images, settings, CLASSIFIER, IMAGE, seed=0)
    vectors = embedding_matrix(embeddings, manifest["image_id"])
    assert vectors.shape == (len(manifest), 32)  # 4 x width 8
    assert record["config"]["extractor"]["name"] == "classifier_penultimate" and record["config"]["val_macro_f1"] > 0.5
    arrays = np.stack([np.asarray(images[key]) for key in manifest["image_key"]])
    np.testing.assert_allclose(extractor_from_record(record).embed(arrays, progress=False), vectors, atol=1e-5)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"extractor": {"name": "inception_v3"}}, r"feature_clustering.extractor.name must be one of"),
        ({"extractor": {"image_size": 16}}, r"feature_clustering.extractor.image_size must be at least 32"),
        (
            {"extractor": {"name": "classifier_penultimate", "classifier_overrides": {"epochs": 3}}},
            r"Unknown parameter\(s\) feature_clustering.extractor.classifier_overrides.epochs",
        ),
        ({"clustering": {"cohesion_threshold": 1.5}}, r"feature_clustering.clustering.cohesion_threshold must be in"),
    ],
)
def test_bad_parameters_are_named(real, changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        embed_real_images(*real, with_settings(**changes), CLASSIFIER, IMAGE, seed=0)


def test_stale_embeddings_are_refused(real, embedded) -> None:
    with pytest.raises(ValueError, match="rerun the feature_clustering pipeline"):
        cluster_train_images(embedded[0].iloc[5:], real[0], SETTINGS, seed=0)


def run_pipeline(tmp_path: Path, manifest: pd.DataFrame, images: dict, seed: int) -> dict:
    """The pipeline through Kedro's SequentialRunner; tables round-trip through parquet as in the catalog."""
    catalog = DataCatalog(
        {
            "manifest": MemoryDataset(manifest),
            "real_images": MemoryDataset(images, copy_mode="assign"),
            "params:feature_clustering": MemoryDataset(SETTINGS),
            "params:classifier": MemoryDataset(CLASSIFIER),
            "params:image": MemoryDataset(IMAGE),
            "params:seed": MemoryDataset(seed),
            "embeddings": ParquetDataset(filepath=str(tmp_path / "embeddings.parquet")),
            "clusters": OptionalDataset(
                {"type": "pandas.ParquetDataset", "filepath": str(tmp_path / "clusters.parquet")}
            ),
        }
    )
    assert catalog.load("clusters") is None  # what generation sees before this pipeline has run
    outputs = SequentialRunner().run(create_pipeline(), catalog)
    assert set(outputs) == {"feature_extractor", "cluster_summary", "feature_clustering_metrics", "cluster_maps"}
    return {
        "embeddings": catalog.load("embeddings"),
        "clusters": catalog.load("clusters"),
        "summary": outputs["cluster_summary"].load(),
    }


def test_pipeline_runs_in_kedro_and_the_same_seed_gives_the_same_outputs(tmp_path: Path, real) -> None:
    manifest, images = real
    first, again = (
        run_pipeline(tmp_path / "a", manifest, images, seed=7),
        run_pipeline(tmp_path / "b", manifest, images, seed=7),
    )
    assert len(first["clusters"]) == (manifest["split"] == "train").sum()
    vectors = embedding_matrix(first["embeddings"], manifest["image_id"])
    assert vectors.dtype == np.float32 and vectors.shape == (len(manifest), 1280)
    pd.testing.assert_frame_equal(first["clusters"], again["clusters"])
    pd.testing.assert_frame_equal(first["summary"], again["summary"])
    np.testing.assert_array_equal(vectors, embedding_matrix(again["embeddings"], manifest["image_id"]))
