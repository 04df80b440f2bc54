"""reduction: t-SNE + KMeans selection of a representative subset of the dominant classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_datasets.pandas import ParquetDataset

from generative_augmentation.pipelines.reduction import create_pipeline
from generative_augmentation.pipelines.reduction.nodes import SELECTED_COLUMNS, plot_selection, select_dominant_subsets

CLASSES = {"normal": 40, "diabetes": 30, "glaucoma": 12, "cataract": 9}
REDUCTION = {
    "dominant_classes": ["normal", "diabetes"],
    "count_threshold": None,
    "target_count": "largest_minority",
    "tsne": {"perplexity": 8, "n_iter": 150},
}


def tiny_features(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A manifest (train rows per CLASSES, plus a few val/test rows) and blob-shaped embeddings for it."""
    rng = np.random.default_rng(seed)
    rows, vectors = [], []
    for label, (class_name, count) in enumerate(CLASSES.items()):
        for split, n in (("train", count), ("val", 2), ("test", 2)):
            for index in range(n):
                image_id = f"{split}_{class_name}_{index:03d}"
                rows.append(
                    {
                        "image_id": image_id,
                        "label": label,
                        "class_name": class_name,
                        "split": split,
                        "image_key": f"{split}/{class_name}/{image_id}",
                    }
                )
                blob = index % 4  # four sub-groups per class
                vectors.append(np.abs(rng.normal(0, 0.2, 16)) + 3 * np.eye(16)[(label * 4 + blob) % 16])
    manifest = pd.DataFrame(rows)
    embeddings = manifest[["image_id", "split", "label", "class_name"]].assign(
        vector=[v.astype(np.float32) for v in vectors]
    )
    return manifest, embeddings


def with_reduction(**changes) -> dict:
    return {**REDUCTION, **changes}


def test_largest_minority_keeps_that_many_images_of_each_dominant_class() -> None:
    manifest, embeddings = tiny_features()
    selected, summary, metrics = select_dominant_subsets(manifest, embeddings, REDUCTION, seed=0)

    assert selected.columns.tolist() == SELECTED_COLUMNS
    assert selected.groupby("class_name").size().to_dict() == {"normal": 40, "diabetes": 30}
    assert selected.groupby("class_name")["selected"].sum().to_dict() == {"normal": 12, "diabetes": 12}
    assert selected["image_id"].is_unique and selected["image_id"].str.startswith("train_").all()
    assert summary.set_index("class_name")["dropped"].to_dict() == {"normal": 28, "diabetes": 18}
    assert metrics["target_count.normal"] == {"value": 12.0, "step": 0}
    assert np.isfinite(selected[["tsne_x", "tsne_y"]].to_numpy()).all()


def test_selection_covers_the_sub_groups_of_a_class() -> None:
    manifest, embeddings = tiny_features()
    selected, _, _ = select_dominant_subsets(manifest, embeddings, with_reduction(target_count=4), seed=0)

    chosen = selected[selected["selected"] & (selected["class_name"] == "normal")]
    sub_groups = chosen["image_id"].str[-3:].astype(int) % 4
    assert sorted(sub_groups) == [0, 1, 2, 3]


def test_count_and_fraction_targets() -> None:
    manifest, embeddings = tiny_features()
    by_count, _, _ = select_dominant_subsets(manifest, embeddings, with_reduction(target_count=10), seed=0)
    by_fraction, _, _ = select_dominant_subsets(manifest, embeddings, with_reduction(target_count=0.5), seed=0)
    whole, _, _ = select_dominant_subsets(manifest, embeddings, with_reduction(target_count=30), seed=0)

    assert by_count.groupby("class_name")["selected"].sum().to_dict() == {"normal": 10, "diabetes": 10}
    assert by_fraction.groupby("class_name")["selected"].sum().to_dict() == {"normal": 20, "diabetes": 15}
    assert whole.loc[whole["class_name"] == "diabetes", "selected"].all()


def test_same_seed_same_selection() -> None:
    manifest, embeddings = tiny_features()
    first, _, _ = select_dominant_subsets(manifest, embeddings, REDUCTION, seed=3)
    again, _, _ = select_dominant_subsets(manifest, embeddings, REDUCTION, seed=3)
    pd.testing.assert_frame_equal(first, again)


def test_count_threshold_picks_the_classes_above_it() -> None:
    manifest, embeddings = tiny_features()
    selected, summary, _ = select_dominant_subsets(
        manifest, embeddings, with_reduction(dominant_classes=[], count_threshold=20), seed=0
    )
    assert summary["class_name"].tolist() == ["normal", "diabetes"] and set(selected["class_name"]) == {
        "normal",
        "diabetes",
    }


def test_target_count_larger_than_the_class_is_refused_naming_it() -> None:
    manifest, embeddings = tiny_features()
    with pytest.raises(ValueError, match=r"reduction.target_count \(35: 35 images\) is larger than class 'diabetes'"):
        select_dominant_subsets(manifest, embeddings, with_reduction(target_count=35), seed=0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"target_count": "half"}, "reduction.target_count must be a count >= 1, a fraction"),
        ({"target_count": 1.5}, "reduction.target_count must be a count >= 1, a fraction"),
        ({"target_count": 0}, "reduction.target_count must be a count >= 1, a fraction"),
        ({"dominant_classes": ["myopia"]}, r"reduction.dominant_classes names \['myopia'\]"),
        ({"count_threshold": 10}, "reduction.count_threshold are exclusive"),
        ({"dominant_classes": [], "count_threshold": 2.5}, "reduction.count_threshold must be an integer"),
    ],
)
def test_bad_parameters_are_named(changes: dict, message: str) -> None:
    manifest, embeddings = tiny_features()
    with pytest.raises(ValueError, match=message):
        select_dominant_subsets(manifest, embeddings, with_reduction(**changes), seed=0)


def test_no_dominant_class_gives_an_empty_selection_and_an_explanatory_plot() -> None:
    manifest, embeddings = tiny_features()
    selected, summary, metrics = select_dominant_subsets(
        manifest, embeddings, with_reduction(dominant_classes=[]), seed=0
    )
    assert selected.empty and selected.columns.tolist() == SELECTED_COLUMNS
    assert summary.empty and metrics == {}
    assert list(plot_selection(selected)) == ["no_dominant_class.png"]


def run_pipeline(tmp_path: Path, seed: int) -> tuple[pd.DataFrame, dict]:
    manifest, embeddings = tiny_features()
    catalog = DataCatalog(
        {
            "manifest": MemoryDataset(manifest),
            "embeddings": MemoryDataset(embeddings),
            "params:reduction": MemoryDataset(REDUCTION),
            "params:seed": MemoryDataset(seed),
            "selected_images": ParquetDataset(filepath=str(tmp_path / "selected_images.parquet")),
        }
    )
    outputs = SequentialRunner().run(create_pipeline(), catalog)
    assert set(outputs) == {"reduction_summary", "reduction_metrics", "reduction_maps"}
    return catalog.load("selected_images"), outputs["reduction_maps"].load()


def test_pipeline_runs_in_kedro_and_the_same_seed_gives_the_same_outputs(tmp_path: Path) -> None:
    first, maps = run_pipeline(tmp_path / "a", seed=11)
    again, _ = run_pipeline(tmp_path / "b", seed=11)

    assert sorted(maps) == ["diabetes.png", "normal.png"]
    assert first["selected"].dtype == bool and first["selected"].sum() == 24
    pd.testing.assert_frame_equal(first, again)
