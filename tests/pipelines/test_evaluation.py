"""The evaluation pipeline: per scenario, replicates trained a fixed step budget, scored once on test; the study."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline
from kedro.runner import SequentialRunner
from kedro_datasets.pandas import CSVDataset

from generative_augmentation.core.classifier import (
    ClassifierConfig,
    classifier_from_record,
    predict_proba,
    train_on_real,
)
from generative_augmentation.core.evaluation import teacher_targets, training_arrays
from generative_augmentation.core.images import ImageSpec, array_to_pil
from generative_augmentation.core.scenarios import real_training_rows, study_scenarios
from generative_augmentation.pipelines.evaluation import create_pipeline
from generative_augmentation.pipelines.evaluation.nodes import (
    score_on_test,
    train_classifiers,
)
from tests.conftest import class_image, study_data

IMAGE = {"size": 16, "mode": "RGB"}
CLASSIFIER = {"steps": 20, "eval_every": 5, "batch_size": 16, "patience": 4}
EVALUATION = {
    "replicates": 3,
    "workers": 1,  # one process: starting loky's workers costs seconds (the test below runs them once)
    "report_title": "Tiny study",
    "quality": {"image_size": 32, "kid_subsets": 5, "nearest_k": 2},
}
AUGMENTATION = {"vertical_flip": False}
SCENARIOS = {
    "real": {"kind": "real"},
    "traditional": {"kind": "traditional"},
    "synthetic_x1": {"kind": "synthetic", "ratio": 1.0},
}
STUDY = {
    "arms": ["real", "traditional", "synthetic_x1"],
    "statistics": {"contrasts": [["best_synthetic", "real"], ["best_synthetic", "traditional"]], "resamples": 200},
}
NAMES = ["a", "b", "c"]


def tiny_study() -> tuple[pd.DataFrame, dict]:
    """The manifest and images of a tiny 3-class study."""
    return study_data({"train": [12, 9, 6], "val": [4, 4, 4], "test": [5, 5, 5]}, 16, NAMES)


def tiny_pool() -> tuple[pd.DataFrame, dict]:
    """Kept synthetic images of the two minority classes (labeled_synthetic's columns) and their PNGs."""
    rng = np.random.default_rng(5)
    rows, images = [], {}
    for label, name in ((1, "b"), (2, "c")):
        for index in range(12):
            image_id = f"syn_{name}_{index:03d}"
            images[f"{name}/{image_id}"] = array_to_pil(class_image(label, rng, 16))
            rows.append(
                {
                    "image_id": image_id,
                    "image_key": f"{name}/{image_id}",
                    "verdict": "keep",
                    "final_class": name,
                    "final_label": label,
                }
            )
    return pd.DataFrame(rows), images


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, dict]:
    return tiny_study()


@pytest.fixture(scope="module")
def synthetic() -> tuple[pd.DataFrame, dict]:
    return tiny_pool()


def test_train_and_score_every_replicate(data) -> None:
    manifest, images = data
    weights, history = train_classifiers(
        real_training_rows(manifest),
        manifest,
        images,
        SCENARIOS["real"],
        CLASSIFIER,
        EVALUATION,
        AUGMENTATION,
        IMAGE,
        0,
    )
    assert weights["config"]["replicates"] == [0, 1, 2] and set(history["replicate"]) == {0, 1, 2}
    assert {name.split(".")[0] for name in weights["state_dict"]} == {"replicate_0", "replicate_1", "replicate_2"}
    scores, predictions, figure = score_on_test(weights, manifest, images, IMAGE)
    assert set(scores["replicate"]) == {0, 1, 2} and set(scores["class_name"]) == {*NAMES, "macro"}
    assert {"f1", "balanced_accuracy", "auc", "recall", "precision", "accuracy"} <= set(scores["metric"])
    assert len(predictions) == 3 * 15 and np.allclose(predictions[["p_0", "p_1", "p_2"]].sum(1), 1, atol=1e-5)
    macro_f1 = scores.query("metric == 'f1' and class_name == 'macro'")["value"]
    assert (macro_f1 > 0.6).all()  # the classes are easy: a trained classifier, not chance
    assert figure.axes[0].get_title() == "Confusion matrix"


@pytest.mark.slow
def test_classifiers_trained_side_by_side_equal_those_trained_one_after_another(data) -> None:
    manifest, images = data
    train = real_training_rows(manifest)
    weights = [
        train_classifiers(
            train, manifest, images, SCENARIOS["real"], CLASSIFIER, {**EVALUATION, "workers": workers}, AUGMENTATION,
            IMAGE, 0,
        )[0]["state_dict"]
        for workers in (1, 2)
    ]  # fmt: skip
    assert weights[0].keys() == weights[1].keys() and len(weights[0]) > 0
    assert all(torch.equal(tensor, weights[1][name]) for name, tensor in weights[0].items())


def test_same_seed_same_scores(data) -> None:
    manifest, images = data
    train = real_training_rows(manifest)
    runs = [
        score_on_test(
            train_classifiers(
                train, manifest, images, SCENARIOS["real"], CLASSIFIER, EVALUATION, AUGMENTATION, IMAGE, 3
            )[0],
            manifest,
            images,
            IMAGE,
        )[0]
        for _ in range(2)
    ]
    pd.testing.assert_frame_equal(runs[0], runs[1])


def test_bad_evaluation_parameters_are_named_before_training(data) -> None:
    manifest, images = data
    train = real_training_rows(manifest)
    for values, message in (
        ({"replicates": 0}, "evaluation.replicates must be at least 1, got 0"),
        ({"seeds": [0, 1]}, r"Unknown parameter\(s\) evaluation.seeds"),
    ):
        with pytest.raises(ValueError, match=message):
            train_classifiers(train, manifest, images, SCENARIOS["real"], CLASSIFIER, values, AUGMENTATION, IMAGE, 0)


def test_training_arrays_read_real_duplicate_and_synthetic_rows_and_refuse_unknown_origins(data, synthetic) -> None:
    manifest, images = data
    table = pd.concat(
        [
            real_training_rows(manifest).iloc[:2],
            synthetic[0]
            .iloc[:1]
            .assign(origin="synthetic", label=1, class_name="b")[
                ["image_id", "label", "class_name", "origin", "image_key"]
            ],
        ]
    )
    arrays, labels = training_arrays(table, images, synthetic[1], ImageSpec.parse(IMAGE))
    assert arrays.shape == (3, 16, 16, 3) and labels.tolist() == [0, 0, 1]
    np.testing.assert_array_equal(arrays[2], np.asarray(synthetic[1][table["image_key"].iloc[2]]))
    with pytest.raises(ValueError, match=r"Unknown origin\(s\) \['gan'\]"):
        training_arrays(table.assign(origin="gan"), images, None, ImageSpec.parse(IMAGE))
    with pytest.raises(ValueError, match="synthetic rows but no synthetic images"):
        training_arrays(table, images, None, ImageSpec.parse(IMAGE))


TABLES = ("scenario_estimates", "primary_contrasts", "generative_quality", "shortcut_probe")


def evaluation_run(data, synthetic, folder: Path, classifier: dict = CLASSIFIER) -> tuple[Pipeline, DataCatalog]:
    """The evaluation pipeline of the tiny study and its catalog: in memory, but for the result tables, written as
    CSV files under ``folder``."""
    manifest, images = data
    labeled, synthetic_images = synthetic
    arms = study_scenarios(STUDY, SCENARIOS)
    train = real_training_rows(manifest)
    synthetic_rows = labeled[["image_id", "image_key"]].assign(
        label=labeled["final_label"], class_name=labeled["final_class"], origin="synthetic"
    )
    manifests = {
        "real": train,
        "traditional": train,
        "synthetic_x1": pd.concat([train, synthetic_rows], ignore_index=True),
    }
    catalog = DataCatalog(
        {
            "manifest": MemoryDataset(manifest),
            "real_images": MemoryDataset(images, copy_mode="assign"),
            "synthetic_images": MemoryDataset(synthetic_images, copy_mode="assign"),
            "labeled_synthetic": MemoryDataset(labeled),
            "split_audit": MemoryDataset(pd.DataFrame({"class_name": ["a"], "train": [12]})),
            "scenario_summary": MemoryDataset(
                pd.DataFrame({"scenario": list(arms), "train_size": [len(manifests[name]) for name in arms]})
            ),
            **{f"{name}.training_manifest": MemoryDataset(table) for name, table in manifests.items()},
            "params:classifier": MemoryDataset(classifier),
            "params:evaluation": MemoryDataset(EVALUATION),
            "params:runtime": MemoryDataset({"num_threads": 1}),
            "params:augmentation": MemoryDataset(AUGMENTATION),
            "params:image": MemoryDataset(IMAGE),
            "params:seed": MemoryDataset(0),
            "params:study": MemoryDataset(STUDY),
            "params:scenarios": MemoryDataset(SCENARIOS),
            **{f"params:scenarios.{name}": MemoryDataset(spec) for name, spec in SCENARIOS.items()},
            "run_provenance": MemoryDataset({"date": "2026-12-01", "commit": "abc1234"}),
            **{name: CSVDataset(filepath=str(folder / f"{name}.csv")) for name in TABLES},
        }
    )
    return create_pipeline(arms), catalog


def test_the_whole_evaluation_runs_through_kedro_with_a_synthetic_arm(data, synthetic, tmp_path) -> None:
    pipeline, catalog = evaluation_run(data, synthetic, tmp_path)
    arms = study_scenarios(STUDY, SCENARIOS)
    assert {"synthetic_x1.train_classifier", "traditional.score_on_test", "generative_quality", "build_report"} <= {
        node.name for node in pipeline.nodes
    }
    outputs = SequentialRunner().run(pipeline, catalog)
    estimates = catalog.load("scenario_estimates")
    assert set(estimates["scenario"]) == set(arms) and (estimates["units"] == 3).all()
    assert {"f1", "balanced_accuracy", "auc", "minority_recall", "recall.a", "recall.c"} <= set(estimates["metric"])
    primary = catalog.load("primary_contrasts")
    assert primary[["treatment", "control"]].values.tolist() == [
        ["synthetic_x1", "real"],
        ["synthetic_x1", "traditional"],
    ]
    assert set(primary["verdict"]) <= {"better", "worse", "no difference shown", "no verdict"}
    assert (primary["p_holm"] >= primary["p_value"]).all()
    quality = catalog.load("generative_quality")
    assert quality[["class_name", "set"]].values.tolist() == [
        ["b", "synthetic"],
        ["b", "real_train"],
        ["c", "synthetic"],
        ["c", "real_train"],
    ]
    assert (
        (quality["reference"] == "val").all() and quality["kid"].notna().all() and (quality["n_reference"] == 4).all()
    )
    probe = catalog.load("shortcut_probe")
    assert probe["class_name"].tolist() == ["b", "c"] and probe["auc"].between(0, 1).all()
    report = outputs["report"].load()
    assert "<h1>Tiny study</h1>" in report and "commit: abc1234" in report
    assert "each keeps its final weights and is scored once" in " ".join(report.split())  # classifier.keep
    sections = {part.split("</h2>")[0]: part for part in report.split("<h2>")[1:]}
    images = {heading: section.count("data:image/png;base64,") for heading, section in sections.items()}
    assert images == {
        "The pre-registered verdict": 1,  # the primary metric by arm
        "Estimates": 0,
        "Data": 0,
        "Real beside synthetic": 1,
        "Can synthetic images be told apart? (shortcut probe)": 0,
        "Per-class recall": 1,
        "Saturation curves": 1,
        "Generative quality": 0,
        "Confusion matrices (summed over replicates, row-normalised)": 3,  # one per arm
    }
    assert "No arm of this study draws synthetic images" not in report
    probe_section = sections["Can synthetic images be told apart? (shortcut probe)"]
    assert all(f"<td>{name}</td>" in probe_section for name in probe["class_name"])  # the probe's AUC per class
    real_f1 = estimates.query("scenario == 'real' and metric == 'f1'")["mean"].iloc[0]
    assert re.search(rf"<td>real</td><td>27</td><td>[0-9.]+</td><td>{real_f1:.3f} ", report)
    assert "k=2" in report and "95% interval" in report and "synthetic_x1 vs real" not in report


TAUGHT = {"kind": "synthetic", "ratio": 1.0, "teacher_weight": 0.5}


def test_soft_labels_come_from_the_labeler_for_the_synthetic_rows_alone(data, synthetic) -> None:
    manifest, images = data
    labeled, synthetic_images = synthetic
    labeler, _ = train_on_real(manifest, images, ClassifierConfig(**CLASSIFIER), ImageSpec.parse(IMAGE), 0, "labeler")
    rows = labeled[["image_id", "image_key"]].assign(
        label=labeled["final_label"], class_name=labeled["final_class"], origin="synthetic"
    )
    table = pd.concat([real_training_rows(manifest), rows], ignore_index=True)
    train = training_arrays(table, images, synthetic_images, ImageSpec.parse(IMAGE))
    is_synthetic = table["origin"].to_numpy() == "synthetic"
    targets = teacher_targets(labeler, train, is_synthetic, 0.5, NAMES, "taught")
    one_hot = np.eye(3)[train[1]]
    np.testing.assert_array_equal(targets[~is_synthetic], one_hot[~is_synthetic])  # real rows keep their labels
    teacher = predict_proba(classifier_from_record(labeler), train[0][is_synthetic])
    np.testing.assert_allclose(targets[is_synthetic], 0.5 * teacher + 0.5 * one_hot[is_synthetic], atol=1e-6)
    assert np.allclose(targets.sum(1), 1.0, atol=1e-5)

    arguments = (table, manifest, images, TAUGHT, CLASSIFIER, EVALUATION, AUGMENTATION, IMAGE, 0, synthetic_images)
    taught, _ = train_classifiers(*arguments, labeler=labeler, arm="taught")
    hard, _ = train_classifiers(*arguments[:3], SCENARIOS["synthetic_x1"], *arguments[4:], arm="hard")
    head = "replicate_0.head.weight"
    assert not torch.equal(taught["state_dict"][head], hard["state_dict"][head])  # the soft labels were trained on
    with pytest.raises(ValueError, match=r"sets scenarios.taught.teacher_weight, which needs a teacher"):
        train_classifiers(*arguments, arm="taught")
    renamed = {**labeler, "config": {**labeler["config"], "class_names": ["x", "y", "z"]}}
    with pytest.raises(ValueError, match=r"knows the classes \['x', 'y', 'z'\], the study \['a', 'b', 'c'\]"):
        train_classifiers(*arguments, labeler=renamed, arm="taught")


def test_an_arm_with_soft_labels_reads_the_labeler_and_the_others_do_not() -> None:
    arms = study_scenarios(
        {"arms": ["real", "taught"], "statistics": {"contrasts": [["taught", "real"]]}},
        {"real": {"kind": "real"}, "taught": TAUGHT},
    )
    pipeline = create_pipeline(arms)
    readers = [node.name for node in pipeline.nodes if "labeler" in node.inputs]
    assert readers == ["taught.train_classifier"] and "labeler" in pipeline.inputs()
