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

from generative_augmentation.core.labeling import DROP_REASONS, STAGES
from generative_augmentation.pipelines.feature_clustering.nodes import embed_real_images
from generative_augmentation.pipelines.pseudo_labeling import create_pipeline
from generative_augmentation.pipelines.pseudo_labeling.nodes import (
    apply_filter,
    count_stages,
    find_nearest_real,
    load_synthetic_pool,
    plot_examples,
    predict_labels,
    train_labeler,
    validate_labeler,
)
from tests.conftest import class_image, study_data

CLASS_NAMES = ["zero", "one", "two"]
IMAGE = {"size": 16, "mode": "RGB"}
CLASSIFIER = {"steps": 60, "eval_every": 10, "batch_size": 16, "learning_rate": 0.003, "patience": 6}
FEATURES = {"extractor": {"image_size": 32, "batch_size": 32}}
PSEUDO_LABELING = {
    "labeler": {"width": 16},
    "filter": {"mode": "filter", "confidence_threshold": 0.4},
    "memorisation": {"train_percentile": 99, "val_percentile": 99},
    "embedding_batch_size": 32,
    "examples_per_row": 4,
}
TRAIN_COPY, VAL_COPY, TEST_COPY = "syn_train_copy", "syn_val_copy", "syn_test_copy"


def settings(**changes: dict) -> dict:
    updated = copy.deepcopy(PSEUDO_LABELING)
    for section, values in changes.items():
        updated[section].update(values)
    return updated


def synthetic_pool(manifest: pd.DataFrame, images: dict, per_class: int = 5) -> tuple[pd.DataFrame, dict]:
    """Fresh class images, plus exact copies of one real train, one validation and one test image."""
    rng = np.random.default_rng(99)
    rows, pool = [], {}

    def add(image_id: str, label: int, image: Image.Image) -> None:
        key = f"{CLASS_NAMES[label]}/{image_id}"
        pool[key] = image
        rows.append({"image_id": image_id, "intended_class": CLASS_NAMES[label], "label": label, "image_key": key})

    for label in range(len(CLASS_NAMES)):
        for index in range(per_class):
            add(f"syn_{label}_{index}", label, Image.fromarray(class_image(label, rng, IMAGE["size"])))
    for image_id, split, position in ((TRAIN_COPY, "train", 3), (VAL_COPY, "val", 1), (TEST_COPY, "test", -1)):
        row = manifest[manifest["split"] == split].iloc[position]
        add(image_id, int(row["label"]), images[row["image_key"]].copy())
    return pd.DataFrame(rows), pool


@pytest.fixture(scope="module")
def world() -> dict:
    """Real data, its embeddings, a synthetic pool and a trained labeler, shared by the tests."""
    manifest, images = study_data({"train": [12, 9, 7], "val": [4, 4, 4], "test": [5, 4, 4]}, 16, CLASS_NAMES)
    embeddings, extractor = embed_real_images(manifest, images, FEATURES, CLASSIFIER, IMAGE, seed=0)
    synthetic_manifest, synthetic_images = synthetic_pool(manifest, images)
    arrays = load_synthetic_pool(synthetic_manifest, synthetic_images, manifest, IMAGE)
    labeler, history = train_labeler(manifest, images, PSEUDO_LABELING, CLASSIFIER, IMAGE, seed=0)
    return {
        "manifest": manifest,
        "images": images,
        "embeddings": embeddings,
        "extractor": extractor,
        "synthetic_manifest": synthetic_manifest,
        "synthetic_images": synthetic_images,
        "arrays": arrays,
        "labeler": labeler,
        "history": history,
    }


def test_the_labeler_is_measured_on_validation_images_per_class_and_above_the_threshold(world) -> None:
    table = validate_labeler(world["labeler"], world["manifest"], world["images"], PSEUDO_LABELING, IMAGE)
    assert table["class_name"].tolist() == [*CLASS_NAMES, "macro mean"]
    assert table["n_val"].tolist() == [4, 4, 4, 12] and (table["confidence_threshold"] == 0.4).all()
    per_class = table.iloc[:3]
    assert per_class["precision"].between(0, 1).all() and per_class["recall"].between(0, 1).all()
    assert table.iloc[3]["recall"] == pytest.approx(per_class["recall"].mean())
    assert table.iloc[3]["recall"] >= 0.75  # the labeler learns these easy classes (a random one sits near 1/3)
    assert (per_class["n_confident"] <= 12).all() and table.iloc[3]["n_confident"] == per_class["n_confident"].sum()
    strict = validate_labeler(
        world["labeler"], world["manifest"], world["images"], settings(filter={"confidence_threshold": 1.0}), IMAGE
    )
    assert strict.iloc[3]["n_confident"] <= table.iloc[3]["n_confident"]


def nearest_real(world: dict, settings: dict, embeddings: pd.DataFrame | None = None, pool: tuple | None = None):
    synthetic_manifest, arrays = pool or (world["synthetic_manifest"], world["arrays"])
    return find_nearest_real(
        synthetic_manifest,
        arrays,
        world["manifest"],
        world["images"],
        world["embeddings"] if embeddings is None else embeddings,
        world["extractor"],
        settings,
        IMAGE,
    )


@pytest.fixture(scope="module")
def guarded(world) -> tuple[pd.DataFrame, dict]:
    return nearest_real(world, PSEUDO_LABELING)


def test_the_labeler_learns_the_classes_and_labels_every_synthetic_image(world) -> None:
    predictions = predict_labels(world["synthetic_manifest"], world["arrays"], world["labeler"])
    assert world["labeler"]["config"]["val_macro_f1"] >= 0.8  # a random labeler would sit near 1/3
    assert world["labeler"]["config"]["classifier"]["width"] == 16  # the override over params:classifier
    assert len(predictions) == 18 and predictions["confidence"].between(1 / 3, 1).all()
    names = np.asarray(CLASS_NAMES)[predictions["predicted_label"]]
    assert (predictions["predicted_class"] == names).all()
    assert predictions["agrees"].mean() >= 0.8  # fresh images of each class are put in their class


def test_the_guard_flags_copies_of_train_and_validation_images_and_never_looks_at_test(world, guarded) -> None:
    nearest, report = guarded
    rows = nearest.set_index("image_id")
    assert rows.loc[TRAIN_COPY, "memorised_train"]
    assert rows.loc[TRAIN_COPY, "nearest_train_similarity"] == pytest.approx(1.0, abs=1e-5)
    assert rows.loc[VAL_COPY, "copies_val"] and VAL_COPY in [copy["image_id"] for copy in report["copies_val"]]
    assert not rows.loc[TEST_COPY, ["memorised_train", "copies_val"]].any()  # test takes no part upstream
    test_ids = set(world["manifest"].loc[world["manifest"]["split"] == "test", "image_id"])
    assert not test_ids & (set(nearest["nearest_train_id"]) | set(nearest["nearest_val_id"]))
    assert "percentile 99 of 12 real val->train" in report["train_threshold_source"]
    without_test = world["embeddings"][world["embeddings"]["split"] != "test"]
    again, _ = nearest_real(world, PSEUDO_LABELING, embeddings=without_test)
    pd.testing.assert_frame_equal(again, nearest)  # the test embeddings are not even read


def test_a_variation_is_judged_against_every_train_image_but_its_own_source(world) -> None:
    manifest, images = world["manifest"], world["images"]
    train = manifest[manifest["split"] == "train"]
    source, other = train.iloc[0], train.iloc[5]
    pool = pd.DataFrame(
        {
            "image_id": ["variation_of_source", "copy_of_another"],
            "intended_class": [source["class_name"]] * 2,
            "label": [int(source["label"])] * 2,
            "source_image_id": [source["image_id"]] * 2,
        }
    )
    arrays = np.stack([np.asarray(images[source["image_key"]]), np.asarray(images[other["image_key"]])])
    strict = settings(memorisation={"train_threshold": 0.99})  # these toy classes are near-identical among themselves
    rows = nearest_real(world, strict, pool=(pool, arrays))[0].set_index("image_id")
    assert not rows.loc["variation_of_source", "memorised_train"]  # resembling its own source is the point
    assert rows.loc["variation_of_source", "nearest_train_id"] != source["image_id"]
    assert rows.loc["copy_of_another", "memorised_train"]  # a copy of another train image is still a copy
    plain = nearest_real(world, strict, pool=(pool.drop(columns="source_image_id"), arrays))[0]
    assert plain["memorised_train"].all()  # without its source named, the same image is a copy


def test_fixed_thresholds_replace_the_calibration(world) -> None:
    fixed = settings(memorisation={"train_threshold": 0.0, "val_threshold": 1.0})
    nearest, report = nearest_real(world, fixed)
    assert report["train_threshold_source"] == "fixed" and nearest["memorised_train"].all()
    assert set(nearest.loc[nearest["copies_val"], "image_id"]) == {VAL_COPY}


def jittered(image: np.ndarray, shift: int = 0, noise: float = 0.0, brighten: int = 0, seed: int = 0) -> np.ndarray:
    """A copy of ``image`` shifted by ``shift`` pixels (edge repeated), with Gaussian noise and a brightness step."""
    copy = np.roll(image.astype(np.float32), shift, axis=1)
    if shift:
        copy[:, :shift] = copy[:, shift : shift + 1]
    copy += np.random.default_rng(seed).normal(0, noise, copy.shape) + brighten
    return np.clip(np.round(copy), 0, 255).astype(np.uint8)


def test_the_pixel_check_catches_shifted_noisy_and_brightened_copies(world) -> None:
    manifest, images = world["manifest"], world["images"]
    train = np.asarray(images[manifest.query("split == 'train'")["image_key"].iloc[2]])
    val = np.asarray(images[manifest.query("split == 'val'")["image_key"].iloc[1]])
    cases = {
        "shift1_val": jittered(val, shift=1),
        "shift2_train": jittered(train, shift=2),
        "noise3_train": jittered(train, noise=3),
        "bright3_shift1_train": jittered(train, shift=1, brighten=3),
    }
    pool = pd.DataFrame({"image_id": list(cases), "label": 0, "intended_class": "zero", "image_key": list(cases)})
    arrays = np.stack(list(cases.values()))
    # The tiny classes are noise around one colour, so a copy's source need not be among its 3 nearest in features
    # (on real data it was the nearest in every case): compare the pixels of the 12 nearest.
    without_pixels = settings(memorisation={"pixel_threshold": None})
    plain, _ = nearest_real(world, without_pixels, pool=(pool, arrays))
    flagged, report = nearest_real(world, settings(memorisation={"pixel_neighbours": 12}), pool=(pool, arrays))
    rows = flagged.set_index("image_id")
    assert (
        rows.loc["shift1_val", "copies_val"]
        and rows.loc[["shift2_train", "noise3_train", "bright3_shift1_train"], "memorised_train"].all()
    )
    assert (rows["nearest_train_pixel_distance"].drop("shift1_val") < 3).all()
    caught_by_features = int(plain["memorised_train"].sum() + plain["copies_val"].sum())
    assert report["n_memorised_train_by_pixels_only"] + report["n_copies_val_by_pixels_only"] == 4 - caught_by_features


def test_the_pixel_distance_is_zero_for_a_shifted_brightened_copy_and_large_for_another_image() -> None:
    from generative_augmentation.core.labeling import pixel_distance

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, 12, 12, 3)).astype(np.uint8)
    copy = np.roll(image.astype(int), 1, axis=2) + 10
    distances = pixel_distance(np.clip(copy, 0, 255).astype(np.uint8)[:, :, 1:], image[:, :, :-1], max_shift=2)
    assert distances[0] < 1.5
    other = rng.integers(0, 256, (1, 12, 12, 3)).astype(np.uint8)
    assert pixel_distance(other, image, max_shift=2)[0] > 50


def verdicts(world, guarded, mode: str, confidence_threshold: float = 0.4) -> pd.DataFrame:
    predictions = predict_labels(world["synthetic_manifest"], world["arrays"], world["labeler"])
    return apply_filter(
        world["synthetic_manifest"],
        predictions,
        guarded[0],
        settings(filter={"mode": mode, "confidence_threshold": confidence_threshold}),
    )


def test_filter_mode_keeps_agreeing_confident_unguarded_images_under_their_intended_class(world, guarded) -> None:
    labeled = verdicts(world, guarded, "filter").set_index("image_id")
    assert labeled.loc[TRAIN_COPY, "drop_reason"] == "memorised_train"
    assert labeled.loc[VAL_COPY, "drop_reason"] == "copies_val"
    kept = labeled[labeled["verdict"] == "keep"]
    assert len(kept) >= 10 and kept["agrees"].all() and (kept["confidence"] >= 0.4).all()
    assert (kept["drop_reason"] == "").all() and set(labeled["drop_reason"]) <= {"", *DROP_REASONS}
    assert (labeled["final_class"] == labeled["intended_class"]).all()


def test_relabel_and_guard_only_modes(world, guarded) -> None:
    relabel = verdicts(world, guarded, "relabel", confidence_threshold=0.0)
    assert (relabel["final_label"] == relabel["predicted_label"]).all() and "disagrees" not in set(
        relabel["drop_reason"]
    )
    guard = relabel["memorised_train"] | relabel["copies_val"]
    assert (relabel["verdict"] == np.where(guard, "drop", "keep")).all()
    guard_only = verdicts(world, guarded, "guard_only", confidence_threshold=0.99)
    assert (guard_only["verdict"] == np.where(guard, "drop", "keep")).all()
    assert (guard_only["final_label"] == guard_only["label"]).all()


def test_relabel_keeps_a_confident_disagreeing_image_under_its_predicted_class() -> None:
    synthetic_manifest = pd.DataFrame(
        {"image_id": ["a", "b"], "intended_class": ["zero", "one"], "label": [0, 1], "image_key": ["zero/a", "one/b"]}
    )
    predictions = pd.DataFrame(
        {
            "image_id": ["a", "b"],
            "predicted_label": [2, 1],
            "predicted_class": ["two", "one"],
            "confidence": [0.9, 0.2],
            "agrees": [False, True],
        }
    )
    nearest = pd.DataFrame({"image_id": ["a", "b"], "memorised_train": [False, False], "copies_val": [False, False]})
    relabel = apply_filter(synthetic_manifest, predictions, nearest, settings(filter={"mode": "relabel"}))
    plain = apply_filter(synthetic_manifest, predictions, nearest, settings(filter={"mode": "filter"}))
    assert relabel[["verdict", "drop_reason", "final_class"]].values.tolist() == [
        ["keep", "", "two"],
        ["drop", "low_confidence", "one"],
    ]
    assert relabel["final_label"].tolist() == [2, 1] and plain["drop_reason"].tolist() == [
        "disagrees",
        "low_confidence",
    ]


def test_stage_counts_shrink_along_the_checks_and_end_at_the_kept_count(world, guarded) -> None:
    labeled = verdicts(world, guarded, "filter")
    table, metrics = count_stages(labeled, world["manifest"], guarded[1], world["labeler"])
    counts = table.set_index("class_name")
    assert counts.columns.tolist() == [*STAGES, "kept_by_final_class"]
    assert counts.loc["total", "generated"] == 18 and counts.loc["total", "after_val_copy_guard"] == 17
    assert (np.diff(counts[list(STAGES)].to_numpy(), axis=1) <= 0).all()
    assert counts.loc["total", "after_confidence"] == (labeled["verdict"] == "keep").sum()
    assert metrics["generated.total"] == {"value": 18.0, "step": 0} and metrics["copies_val"]["value"] == 1


def test_examples_grid_has_a_kept_and_a_dropped_row_per_class(world, guarded) -> None:
    figure = plot_examples(verdicts(world, guarded, "filter"), world["arrays"], PSEUDO_LABELING)
    assert len(figure.axes) == 2 * len(CLASS_NAMES) * PSEUDO_LABELING["examples_per_row"]
    labels = " | ".join(axis.get_ylabel() for axis in figure.axes if axis.get_ylabel())
    assert "memorised_train" in labels and "copies_val 1" in labels, repr(labels)


@pytest.mark.parametrize(
    ("changes", "parameter"),
    [
        ({"filter": {"confidence_threshold": 1.5}}, "pseudo_labeling.filter.confidence_threshold must be in"),
        (
            {"memorisation": {"train_threshold": 1.01}},
            "pseudo_labeling.memorisation.train_threshold must be in",
        ),
        ({"memorisation": {"val_percentile": 101}}, "pseudo_labeling.memorisation.val_percentile must be in"),
        (
            {"memorisation": {"test_percentile": 99}},
            r"Unknown parameter\(s\) pseudo_labeling.memorisation.test_percentile",
        ),
        ({"filter": {"mode": "vote"}}, "pseudo_labeling.filter.mode must be one of"),
    ],
)
def test_bad_parameters_are_named(world, guarded, changes: dict, parameter: str) -> None:
    predictions = predict_labels(world["synthetic_manifest"], world["arrays"], world["labeler"])
    with pytest.raises(ValueError, match=parameter):
        apply_filter(world["synthetic_manifest"], predictions, guarded[0], settings(**changes))


def test_an_empty_or_mismatched_pool_is_refused_before_the_labeler_trains(world) -> None:
    with pytest.raises(ValueError, match="No synthetic pool yet"):
        load_synthetic_pool(world["synthetic_manifest"].iloc[:0], {}, world["manifest"], IMAGE)
    pool = dict(world["synthetic_images"])
    pool.pop(world["synthetic_manifest"]["image_key"].iloc[0])
    with pytest.raises(ValueError, match=r"1 image\(s\) missing from synthetic_images"):
        load_synthetic_pool(world["synthetic_manifest"], pool, world["manifest"], IMAGE)
    with pytest.raises(ValueError, match="not their intended class's label"):
        load_synthetic_pool(
            world["synthetic_manifest"].assign(label=0), world["synthetic_images"], world["manifest"], IMAGE
        )


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
            "params:classifier": MemoryDataset(CLASSIFIER),
            "params:image": MemoryDataset(IMAGE),
            "params:seed": MemoryDataset(seed),
            "labeled_synthetic": ParquetDataset(filepath=str(tmp_path / "labeled_synthetic.parquet")),
        }
    )
    outputs = SequentialRunner().run(create_pipeline(), catalog)
    assert set(outputs) == {
        "labeler_history",
        "labeler_validation",
        "pseudo_labeling_counts",
        "pseudo_labeling_metrics",
        "pseudo_labeling_examples",
    }
    return catalog.load("labeled_synthetic"), outputs["pseudo_labeling_counts"].load()


def test_pipeline_runs_in_kedro_and_the_same_seed_gives_the_same_outputs(tmp_path: Path, world) -> None:
    first, counts = run_pipeline(tmp_path / "a", world, seed=5)
    again, counts_again = run_pipeline(tmp_path / "b", world, seed=5)
    contract = [
        "image_id",
        "image_key",
        "intended_class",
        "label",
        "predicted_label",
        "predicted_class",
        "confidence",
        "agrees",
        "nearest_train_similarity",
        "nearest_train_id",
        "nearest_val_similarity",
        "nearest_val_id",
        "verdict",
        "drop_reason",
        "final_label",
        "final_class",
    ]
    assert set(contract) <= set(first.columns)
    assert first["image_id"].tolist() == world["synthetic_manifest"]["image_id"].tolist()
    assert first.set_index("image_id").loc[VAL_COPY, "verdict"] == "drop"
    pd.testing.assert_frame_equal(first, again)
    pd.testing.assert_frame_equal(counts, counts_again)
