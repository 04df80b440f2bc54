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
from matplotlib.figure import Figure
from PIL import Image

from generative_augmentation.datasets import OptionalDataset
from generative_augmentation.pipelines.feature_clustering import create_pipeline
from generative_augmentation.pipelines.feature_clustering.nodes import (
    CLUSTERS_COLUMNS,
    EMBEDDING_COLUMNS,
    cluster_classes,
    embed_real_images,
    embedding_matrix,
    extractor_from_weights,
    plot_cluster_maps,
)
from tests.conftest import class_image

CLASS_NAMES = ["zero", "one", "two"]
COUNTS = {"train": [12, 9, 7], "val": [4, 4, 4], "test": [5, 4, 4]}
IMAGE = {"size": 16, "mode": "RGB"}
SETTINGS = {
    "extractor": {"name": "efficientnet_lite0", "image_size": 32, "batch_size": 32},
    "clustering": {"k": None, "k_range": [2, 3], "n_representatives": 2, "cohesion_threshold": 0.9},
    "tsne": {"perplexity": 5, "n_iter": 100},
}
PENULTIMATE = {
    "name": "classifier_penultimate",
    "classifier": {"architecture": "small_cnn", "epochs": 2, "batch_size": 16, "patience": 2},
}


def real_data(counts: dict[str, list[int]] = COUNTS, seed: int = 0) -> tuple[pd.DataFrame, dict[str, Image.Image]]:
    """A manifest like data_preparation's and its images keyed ``<split>/<class>/<image_id>``."""
    rng = np.random.default_rng(seed)
    rows, images = [], {}
    for split, per_class in counts.items():
        for label, count in enumerate(per_class):
            for index in range(count):
                image_id = f"{split}_{label}_{index:03d}"
                key = f"{split}/{CLASS_NAMES[label]}/{image_id}"
                images[key] = Image.fromarray(class_image(label, rng, IMAGE["size"]))
                rows.append(
                    {"image_id": image_id, "patient_id": image_id, "label": label, "class_code": str(label),
                     "class_name": CLASS_NAMES[label], "split": split, "image_key": key}
                )  # fmt: skip
    return pd.DataFrame(rows), images


def with_settings(**changes: dict) -> dict:
    """A deep copy of SETTINGS with some sections updated."""
    settings = copy.deepcopy(SETTINGS)
    for section, values in changes.items():
        settings[section].update(values)
    return settings


@pytest.fixture(scope="module")
def real() -> tuple[pd.DataFrame, dict[str, Image.Image]]:
    return real_data()


@pytest.fixture(scope="module")
def embedded(real) -> tuple[pd.DataFrame, dict]:
    manifest, images = real
    return embed_real_images(manifest, images, SETTINGS, IMAGE, seed=0)


def test_every_real_image_gets_one_efficientnet_vector(real, embedded) -> None:
    manifest, _ = real
    embeddings, weights = embedded

    assert embeddings.columns.tolist() == EMBEDDING_COLUMNS
    assert embeddings["image_id"].tolist() == manifest["image_id"].tolist()
    assert embedding_matrix(embeddings, manifest["image_id"]).shape == (len(manifest), 1280)
    assert weights["config"]["name"] == "efficientnet_lite0" and weights["state_dict"] == {}
    assert weights["config"]["image_size"] == 32


def test_clusters_cover_every_train_image_with_representatives_and_flags(real, embedded) -> None:
    manifest, _ = real
    clusters, summary, metrics = cluster_classes(embedded[0], manifest, SETTINGS, seed=0)

    train = manifest[manifest["split"] == "train"]
    assert clusters.columns.tolist() == CLUSTERS_COLUMNS
    assert sorted(clusters["image_id"]) == sorted(train["image_id"])
    assert clusters.groupby("class_name").size().to_dict() == {"zero": 12, "one": 9, "two": 7}
    assert summary["k"].between(2, 3).all()
    representatives = clusters[clusters["is_representative"]].groupby(["class_name", "cluster"]).size()
    assert (representatives <= 2).all() and (representatives >= 1).all()
    assert (clusters["flagged"] == (clusters["cohesion"] < 0.9)).all()
    assert metrics["clusters"]["value"] == len(summary)
    for (class_name, cluster), rows in clusters.groupby(["class_name", "cluster"]):
        nearest = rows.nsmallest(int(representatives[(class_name, cluster)]), "distance_to_centroid")
        assert nearest["is_representative"].all()


def test_fixed_k_is_used_and_clipped_to_the_class_size(real, embedded) -> None:
    manifest, _ = real
    settings = with_settings(clustering={"k": 4})
    clusters, _, _ = cluster_classes(embedded[0], manifest, settings, seed=0)
    assert clusters.groupby("class_name")["cluster"].nunique().to_dict() == {"zero": 4, "one": 4, "two": 4}

    two_left = manifest.drop(manifest.index[(manifest["split"] == "train") & (manifest["class_name"] == "two")][2:])
    clipped, summary, _ = cluster_classes(embedded[0], two_left, settings, seed=0)
    assert summary.groupby("class_name")["k"].first().to_dict() == {"zero": 4, "one": 4, "two": 2}
    assert (clipped["class_name"] == "two").sum() == 2


def test_cluster_maps_have_one_figure_per_class(real, embedded) -> None:
    manifest, _ = real
    clusters, _, _ = cluster_classes(embedded[0], manifest, SETTINGS, seed=0)

    figures = plot_cluster_maps(embedded[0], clusters, SETTINGS, seed=0)

    assert sorted(figures) == ["one.png", "two.png", "zero.png"]
    assert all(isinstance(figure, Figure) for figure in figures.values())


def test_classifier_penultimate_extractor_is_trained_and_rebuilt_from_its_record(real) -> None:
    manifest, images = real
    settings = with_settings(extractor=PENULTIMATE)

    embeddings, weights = embed_real_images(manifest, images, settings, IMAGE, seed=0)

    vectors = embedding_matrix(embeddings, manifest["image_id"])
    assert vectors.shape == (len(manifest), 128)
    assert weights["config"]["name"] == "classifier_penultimate" and weights["state_dict"]
    rebuilt = extractor_from_weights(weights)
    arrays = np.stack([np.asarray(images[key]) for key in manifest["image_key"]])
    np.testing.assert_allclose(rebuilt.embed(arrays, progress=False), vectors, atol=1e-5)


def test_unknown_extractor_name_is_named(real) -> None:
    manifest, images = real
    with pytest.raises(ValueError, match=r"'inception_v3' \(parameter feature_clustering.extractor.name\)"):
        embed_real_images(manifest, images, with_settings(extractor={"name": "inception_v3"}), IMAGE, seed=0)


def test_too_small_extractor_input_is_named(real) -> None:
    manifest, images = real
    with pytest.raises(ValueError, match="feature_clustering.extractor.image_size must be an integer >= 32"):
        embed_real_images(manifest, images, with_settings(extractor={"image_size": 16}), IMAGE, seed=0)


@pytest.mark.parametrize(
    ("clustering", "parameter"),
    [
        ({"cohesion_threshold": 1.5}, "feature_clustering.clustering.cohesion_threshold"),
        ({"cohesion_threshold": -0.1}, "feature_clustering.clustering.cohesion_threshold"),
        ({"k": 0}, "feature_clustering.clustering.k"),
        ({"k_range": [1, 4]}, "feature_clustering.clustering.k_range"),
        ({"n_representatives": 0}, "feature_clustering.clustering.n_representatives"),
    ],
)
def test_bad_clustering_parameters_are_named(real, embedded, clustering: dict, parameter: str) -> None:
    with pytest.raises(ValueError, match=parameter):
        cluster_classes(embedded[0], real[0], with_settings(clustering=clustering), seed=0)


def test_stale_embeddings_are_refused(real, embedded) -> None:
    manifest, _ = real
    with pytest.raises(ValueError, match="rerun the feature_clustering pipeline"):
        cluster_classes(embedded[0].iloc[5:], manifest, SETTINGS, seed=0)


def run_pipeline(tmp_path: Path, manifest: pd.DataFrame, images: dict, seed: int) -> dict[str, pd.DataFrame]:
    """The pipeline through Kedro's SequentialRunner; tables round-trip through parquet as in the catalog."""
    clusters_path = tmp_path / f"clusters_{seed}.parquet"
    catalog = DataCatalog(
        {
            "manifest": MemoryDataset(manifest),
            "real_images": MemoryDataset(images, copy_mode="assign"),
            "params:feature_clustering": MemoryDataset(SETTINGS),
            "params:image": MemoryDataset(IMAGE),
            "params:seed": MemoryDataset(seed),
            "embeddings": ParquetDataset(filepath=str(tmp_path / f"embeddings_{seed}.parquet")),
            "clusters": OptionalDataset({"type": "pandas.ParquetDataset", "filepath": str(clusters_path)}),
        }
    )
    assert catalog.load("clusters") is None  # what generation sees before this pipeline has run
    outputs = SequentialRunner().run(create_pipeline(), catalog)
    assert set(outputs) == {"feature_extractor", "cluster_summary", "feature_clustering_metrics", "cluster_maps"}
    return {name: catalog.load(name) for name in ("embeddings", "clusters")} | {
        "summary": outputs["cluster_summary"].load(),
        "maps": outputs["cluster_maps"].load(),
    }


def test_pipeline_runs_in_kedro_and_the_same_seed_gives_the_same_outputs(tmp_path: Path, real) -> None:
    manifest, images = real
    first = run_pipeline(tmp_path / "a", manifest, images, seed=7)
    again = run_pipeline(tmp_path / "b", manifest, images, seed=7)

    assert first["clusters"].columns.tolist() == CLUSTERS_COLUMNS
    assert len(first["clusters"]) == (manifest["split"] == "train").sum()
    assert len(first["maps"]) == 3
    vectors = embedding_matrix(first["embeddings"], manifest["image_id"])
    assert vectors.dtype == np.float32 and vectors.shape == (len(manifest), 1280)
    pd.testing.assert_frame_equal(first["clusters"], again["clusters"])
    pd.testing.assert_frame_equal(first["summary"], again["summary"])
    np.testing.assert_array_equal(vectors, embedding_matrix(again["embeddings"], manifest["image_id"]))
