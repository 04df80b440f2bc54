"""pseudo_labeling: labeler, memorisation guard and filter verdicts on a tiny real set and synthetic pool."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_datasets.pandas import ParquetDataset
from PIL import Image

from generative_augmentation.pipelines.feature_clustering.nodes import embed_real_images
from generative_augmentation.pipelines.pseudo_labeling import create_pipeline
from generative_augmentation.pipelines.pseudo_labeling.nodes import (
    DROP_REASONS,
    STAGES,
    apply_filter,
    count_stages,
    find_nearest_real,
    load_synthetic_pool,
    plot_examples,
    predict_labels,
    train_labeler,
)
from tests.conftest import class_image
from tests.pipelines.test_feature_clustering import CLASS_NAMES, IMAGE, SETTINGS, real_data

PSEUDO_LABELING = {
    "labeler": {"architecture": "small_cnn", "epochs": 4, "batch_size": 16, "patience": 4, "learning_rate": 0.003},
    "filter": {"mode": "filter", "confidence_threshold": 0.4},
    "memorisation": {"train_percentile": 99, "test_percentile": 99, "train_threshold": None, "test_threshold": None},
    "embedding_batch_size": 32,
    "examples_per_row": 4,
}
TRAIN_COPY, TEST_COPY = "syn_train_copy", "syn_test_copy"


def settings(**changes: dict) -> dict:
    updated = copy.deepcopy(PSEUDO_LABELING)
    for section, values in changes.items():
        updated[section].update(values)
    return updated


def synthetic_pool(manifest: pd.DataFrame, images: dict, per_class: int = 5) -> tuple[pd.DataFrame, dict]:
    """Fresh class images, plus one exact copy of a real train image and one of a real test image."""
    rng = np.random.default_rng(99)
    rows, pool = [], {}

    def add(image_id: str, label: int, image: Image.Image) -> None:
        key = f"{CLASS_NAMES[label]}/{image_id}"
        pool[key] = image
        rows.append(
            {"image_id": image_id, "intended_class": CLASS_NAMES[label], "label": label, "generator": "test",
             "seed": 0, "cluster": -1, "prompt": "", "path": "", "image_key": key}
        )  # fmt: skip

    for label in range(len(CLASS_NAMES)):
        for index in range(per_class):
            add(f"syn_{label}_{index}", label, Image.fromarray(class_image(label, rng, IMAGE["size"])))
    train_row = manifest[manifest["split"] == "train"].iloc[3]
    test_row = manifest[manifest["split"] == "test"].iloc[-1]
    add(TRAIN_COPY, int(train_row["label"]), images[train_row["image_key"]].copy())
    add(TEST_COPY, int(test_row["label"]), images[test_row["image_key"]].copy())
    return pd.DataFrame(rows), pool


@pytest.fixture(scope="module")
def world() -> dict:
    """Real data, its embeddings, a synthetic pool and a trained labeler, shared by the tests."""
    manifest, images = real_data()
    embeddings, extractor = embed_real_images(manifest, images, SETTINGS, IMAGE, seed=0)
    synthetic_manifest, synthetic_images = synthetic_pool(manifest, images)
    arrays = load_synthetic_pool(synthetic_manifest, synthetic_images, manifest, PSEUDO_LABELING, IMAGE)
    labeler, history = train_labeler(manifest, images, PSEUDO_LABELING, IMAGE, seed=0)
    return {
        "manifest": manifest, "images": images, "embeddings": embeddings, "extractor": extractor,
        "synthetic_manifest": synthetic_manifest, "synthetic_images": synthetic_images, "arrays": arrays,
        "labeler": labeler, "history": history,
    }  # fmt: skip


@pytest.fixture(scope="module")
def guarded(world) -> tuple[pd.DataFrame, dict]:
    return find_nearest_real(
        world["synthetic_manifest"], world["arrays"], world["manifest"], world["embeddings"], world["extractor"],
        PSEUDO_LABELING,
    )  # fmt: skip


def test_labeler_predicts_a_class_and_confidence_for_every_synthetic_image(world) -> None:
    predictions = predict_labels(world["synthetic_manifest"], world["arrays"], world["labeler"])

    assert world["arrays"].shape == (17, 16, 16, 3)
    assert len(world["history"]) >= 1 and world["labeler"]["config"]["class_names"] == CLASS_NAMES
    assert len(predictions) == 17
    assert predictions["confidence"].between(1 / 3, 1).all()
    assert set(predictions["predicted_class"]) <= set(CLASS_NAMES)
    names = np.asarray(CLASS_NAMES)[predictions["predicted_label"]]
    assert (predictions["predicted_class"] == names).all()
    assert (predictions["agrees"] == (predictions["predicted_label"] == world["synthetic_manifest"]["label"])).all()


def test_guard_flags_a_copy_of_a_train_image_and_reports_a_copy_of_a_test_image(world, guarded) -> None:
    nearest, report = guarded
    rows = nearest.set_index("image_id")

    assert rows.loc[TRAIN_COPY, "memorised_train"]
    assert rows.loc[TRAIN_COPY, "nearest_train_similarity"] == pytest.approx(1.0, abs=1e-5)
    assert rows.loc[TEST_COPY, "copies_test"]
    assert rows.loc[TEST_COPY, "nearest_test_id"] == world["manifest"].query("split == 'test'")["image_id"].iloc[-1]
    assert TEST_COPY in [copy["image_id"] for copy in report["copies_test"]]
    assert 0 < report["train_threshold"] < 1 and 0 < report["test_threshold"] < 1
    assert "percentile 99 of 13 real test->train" in report["train_threshold_source"]


def test_fixed_thresholds_replace_the_calibration(world) -> None:
    fixed = settings(memorisation={"train_threshold": 0.0, "test_threshold": 1.0})
    nearest, report = find_nearest_real(
        world["synthetic_manifest"], world["arrays"], world["manifest"], world["embeddings"], world["extractor"], fixed
    )
    assert report["train_threshold_source"] == "fixed" and nearest["memorised_train"].all()
    assert set(nearest.loc[nearest["copies_test"], "image_id"]) == {TEST_COPY}


def verdicts(world, guarded, mode: str, confidence_threshold: float = 0.4) -> pd.DataFrame:
    predictions = predict_labels(world["synthetic_manifest"], world["arrays"], world["labeler"])
    params = settings(filter={"mode": mode, "confidence_threshold": confidence_threshold})
    return apply_filter(world["synthetic_manifest"], predictions, guarded[0], params)


def test_filter_mode_keeps_agreeing_confident_unguarded_images_under_their_intended_class(world, guarded) -> None:
    labeled = verdicts(world, guarded, "filter").set_index("image_id")

    assert labeled.loc[TRAIN_COPY, "drop_reason"] == "memorised_train"
    assert labeled.loc[TEST_COPY, "drop_reason"] == "copies_test"
    kept = labeled[labeled["verdict"] == "keep"]
    assert kept["agrees"].all() and (kept["confidence"] >= 0.4).all()
    assert not (kept["memorised_train"] | kept["copies_test"]).any()
    assert (kept["drop_reason"] == "").all()
    assert set(labeled["drop_reason"]) <= {"", *DROP_REASONS}
    assert (labeled["final_label"] == labeled["label"]).all()
    assert (labeled["final_class"] == labeled["intended_class"]).all()
    assert (labeled.loc[labeled["verdict"] == "drop", "drop_reason"] != "").all()


def test_relabel_mode_takes_the_predicted_class(world, guarded) -> None:
    labeled = verdicts(world, guarded, "relabel", confidence_threshold=0.0)

    assert (labeled["final_label"] == labeled["predicted_label"]).all()
    assert (labeled["final_class"] == labeled["predicted_class"]).all()
    assert "disagrees" not in set(labeled["drop_reason"])
    guard = labeled["memorised_train"] | labeled["copies_test"]
    assert (labeled["verdict"] == np.where(guard, "drop", "keep")).all()  # threshold 0: only the guard drops
    assert {TRAIN_COPY, TEST_COPY} <= set(labeled.loc[guard, "image_id"])


def test_relabel_keeps_a_confident_disagreeing_image_under_its_predicted_class() -> None:
    synthetic_manifest = pd.DataFrame(
        {"image_id": ["a", "b"], "intended_class": ["zero", "one"], "label": [0, 1], "image_key": ["zero/a", "one/b"]}
    )
    predictions = pd.DataFrame(
        {"image_id": ["a", "b"], "predicted_label": [2, 1], "predicted_class": ["two", "one"],
         "confidence": [0.9, 0.2], "agrees": [False, True]}
    )  # fmt: skip
    nearest = pd.DataFrame(
        {"image_id": ["a", "b"], "nearest_train_similarity": [0.5, 0.5], "nearest_train_id": ["t1", "t2"],
         "nearest_test_similarity": [0.5, 0.5], "nearest_test_id": ["s1", "s2"],
         "memorised_train": [False, False], "copies_test": [False, False]}
    )  # fmt: skip
    relabel = apply_filter(synthetic_manifest, predictions, nearest, settings(filter={"mode": "relabel"}))
    plain = apply_filter(synthetic_manifest, predictions, nearest, settings(filter={"mode": "filter"}))

    assert relabel[["verdict", "drop_reason", "final_class"]].values.tolist() == [
        ["keep", "", "two"], ["drop", "low_confidence", "one"],
    ]  # fmt: skip
    assert relabel["final_label"].tolist() == [2, 1]
    assert plain["drop_reason"].tolist() == ["disagrees", "low_confidence"]
    assert plain["final_label"].tolist() == [0, 1]


def test_stage_counts_shrink_along_the_checks_and_end_at_the_kept_count(world, guarded) -> None:
    labeled = verdicts(world, guarded, "filter")
    table, metrics = count_stages(labeled, world["manifest"], guarded[1], world["labeler"])

    counts = table.set_index("class_name")
    assert counts.columns.tolist() == [*STAGES, "kept_by_final_class"]
    assert counts.loc["total", "generated"] == 17
    assert counts.loc["total", "after_test_copy_guard"] == 16
    assert (np.diff(counts[list(STAGES)].to_numpy(), axis=1) <= 0).all()
    assert counts.loc["total", "after_confidence"] == (labeled["verdict"] == "keep").sum()
    assert metrics["generated.total"] == {"value": 17.0, "step": 0}
    assert metrics["copies_test"]["value"] >= 1
    assert 0 <= metrics["labeler_val_macro_f1"]["value"] <= 1


def test_examples_grid_has_a_kept_and_a_dropped_row_per_class(world, guarded) -> None:
    labeled = verdicts(world, guarded, "filter")
    figure = plot_examples(labeled, world["arrays"], PSEUDO_LABELING)
    assert len(figure.axes) == 2 * len(CLASS_NAMES) * PSEUDO_LABELING["examples_per_row"]


@pytest.mark.parametrize(
    ("changes", "parameter"),
    [
        ({"filter": {"confidence_threshold": 1.5}}, "pseudo_labeling.filter.confidence_threshold"),
        ({"filter": {"confidence_threshold": -0.2}}, "pseudo_labeling.filter.confidence_threshold"),
        ({"memorisation": {"train_threshold": 1.01}}, "pseudo_labeling.memorisation.train_threshold"),
        ({"memorisation": {"test_threshold": -1}}, "pseudo_labeling.memorisation.test_threshold"),
        ({"memorisation": {"train_percentile": 101}}, "pseudo_labeling.memorisation.train_percentile"),
        ({"filter": {"mode": "vote"}}, "pseudo_labeling.filter.mode"),
    ],
)
def test_bad_parameters_are_named(world, changes: dict, parameter: str) -> None:
    with pytest.raises(ValueError, match=parameter):
        load_synthetic_pool(
            world["synthetic_manifest"], world["synthetic_images"], world["manifest"], settings(**changes), IMAGE
        )


def test_empty_synthetic_pool_is_refused(world) -> None:
    empty = world["synthetic_manifest"].iloc[:0]
    with pytest.raises(ValueError, match="No synthetic pool yet"):
        load_synthetic_pool(empty, {}, world["manifest"], PSEUDO_LABELING, IMAGE)


def test_manifest_that_does_not_match_the_pool_is_refused(world) -> None:
    pool = dict(world["synthetic_images"])
    pool.pop(world["synthetic_manifest"]["image_key"].iloc[0])
    with pytest.raises(ValueError, match="1 image\\(s\\) missing from synthetic_images"):
        load_synthetic_pool(world["synthetic_manifest"], pool, world["manifest"], PSEUDO_LABELING, IMAGE)
    wrong_label = world["synthetic_manifest"].assign(label=0)
    with pytest.raises(ValueError, match="not their intended class's label"):
        load_synthetic_pool(wrong_label, world["synthetic_images"], world["manifest"], PSEUDO_LABELING, IMAGE)


def run_pipeline(tmp_path: Path, world: dict, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pipeline through Kedro's SequentialRunner with an in-memory catalog; labeled_synthetic as parquet."""
    catalog = DataCatalog(
        {
            "manifest": MemoryDataset(world["manifest"]),
            "real_images": MemoryDataset(world["images"], copy_mode="assign"),
            "synthetic_manifest": MemoryDataset(world["synthetic_manifest"]),
            "synthetic_images": MemoryDataset(world["synthetic_images"], copy_mode="assign"),
            "embeddings": MemoryDataset(world["embeddings"]),
            "feature_extractor": MemoryDataset(world["extractor"], copy_mode="assign"),
            "params:pseudo_labeling": MemoryDataset(PSEUDO_LABELING),
            "params:image": MemoryDataset(IMAGE),
            "params:seed": MemoryDataset(seed),
            "labeled_synthetic": ParquetDataset(filepath=str(tmp_path / "labeled_synthetic.parquet")),
        }
    )
    outputs = SequentialRunner().run(create_pipeline(), catalog)
    expected = {"labeler_history", "pseudo_labeling_counts", "pseudo_labeling_metrics", "pseudo_labeling_examples"}
    assert set(outputs) == expected
    return catalog.load("labeled_synthetic"), outputs["pseudo_labeling_counts"].load()


def test_pipeline_runs_in_kedro_and_the_same_seed_gives_the_same_outputs(tmp_path: Path, world) -> None:
    first, counts = run_pipeline(tmp_path / "a", world, seed=5)
    again, counts_again = run_pipeline(tmp_path / "b", world, seed=5)

    contract = [
        "image_id", "image_key", "intended_class", "label", "predicted_label", "predicted_class", "confidence",
        "agrees", "nearest_train_similarity", "nearest_train_id", "nearest_test_similarity", "nearest_test_id",
        "verdict", "drop_reason", "final_label", "final_class",
    ]  # fmt: skip
    assert set(contract) <= set(first.columns)
    assert first["image_id"].tolist() == world["synthetic_manifest"]["image_id"].tolist()
    assert first.set_index("image_id").loc[TEST_COPY, "verdict"] == "drop"
    pd.testing.assert_frame_equal(first, again)
    pd.testing.assert_frame_equal(counts, counts_again)


def test_guard_only_mode_keeps_every_unguarded_image_under_its_intended_class(world, guarded) -> None:
    labeled = verdicts(world, guarded, "guard_only", confidence_threshold=0.99)

    guard = labeled["memorised_train"] | labeled["copies_test"]
    assert (labeled["verdict"] == np.where(guard, "drop", "keep")).all()
    assert set(labeled["drop_reason"]) <= {"", "memorised_train", "copies_test"}
    assert (labeled["final_label"] == labeled["label"]).all()
    assert {TRAIN_COPY, TEST_COPY} <= set(labeled.loc[guard, "image_id"])
