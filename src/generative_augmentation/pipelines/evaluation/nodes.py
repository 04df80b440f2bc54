"""Nodes of the evaluation pipeline: per scenario, train a classifier per replicate, select on real validation
images, score once on real test images; across scenarios, the statistics, figures, generative quality and report.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from generative_augmentation.core import evaluation, study
from generative_augmentation.core.classifier import ClassifierConfig
from generative_augmentation.core.evaluation import EvaluationConfig
from generative_augmentation.core.generative_metrics import quality_table
from generative_augmentation.core.images import AugmentationConfig, ImageSpec, stack_images
from generative_augmentation.core.manifest import class_names, resolve_classes, split_arrays, split_rows, train_counts
from generative_augmentation.core.metrics import confusion
from generative_augmentation.core.plots import confusion_matrix_figure, ratio_curves, real_beside_synthetic, recall_bars
from generative_augmentation.core.report import ReportInputs, build_report
from generative_augmentation.core.runtime import numpy_rng
from generative_augmentation.core.scenarios import ScenarioConfig, StudyConfig, study_scenarios


def train_classifiers(
    training_manifest: pd.DataFrame,
    manifest: pd.DataFrame,
    real_images: dict,
    scenario: dict[str, Any],
    classifier: dict[str, Any],
    evaluation_parameters: dict[str, Any],
    augmentation: dict[str, Any],
    image: dict[str, Any],
    seed: int,
    synthetic_images: dict | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """One classifier per replicate on the scenario's training set, each keeping its best-on-validation weights."""
    spec, settings = ScenarioConfig.parse(scenario, "scenario"), EvaluationConfig.parse(evaluation_parameters)
    image_spec = ImageSpec.parse(image)
    train = evaluation.training_arrays(training_manifest, real_images, synthetic_images, image_spec)
    val = split_arrays(manifest, real_images, "val", image_spec)
    transforms = AugmentationConfig.parse(augmentation) if spec.augmented else None
    return evaluation.train_replicates(
        train, val, ClassifierConfig.parse(classifier), transforms, settings.replicate_seeds(seed),
        class_names(manifest), image_spec, f"{spec.kind} x{spec.ratio:g}",
    )  # fmt: skip


def score_on_test(
    classifier: dict[str, Any], manifest: pd.DataFrame, real_images: dict, image: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame, Figure]:
    """Every replicate scored once on the real test split: the metrics, the predictions, the confusion matrix."""
    test = split_arrays(manifest, real_images, "test", ImageSpec.parse(image))
    scores, predictions = evaluation.score_replicates(
        classifier, test, split_rows(manifest, "test")["image_id"].to_numpy()
    )
    names = classifier["config"]["class_names"]
    return scores, predictions, confusion_matrix_figure(confusion(predictions, len(names)), names)


def collect_metrics(
    manifest: pd.DataFrame, study_parameters: dict[str, Any], definitions: dict[str, Any], **test_scores: pd.DataFrame
) -> pd.DataFrame:
    """One row per (scenario, replicate, metric, class), with ``minority`` rows for the augmented classes."""
    arms = study_scenarios(study_parameters, definitions)
    return study.collect_metrics(arms, test_scores, _minority(manifest, study_parameters))


def summarise(scenario_metrics: pd.DataFrame, evaluation_parameters: dict[str, Any]) -> pd.DataFrame:
    """Mean and interval per scenario and metric, and the paired difference to ``real``."""
    return study.summarise(scenario_metrics, EvaluationConfig.parse(evaluation_parameters).confidence)


def plot_ratio_curves(scenario_statistics: pd.DataFrame, evaluation_parameters: dict[str, Any]) -> Figure:
    return ratio_curves(scenario_statistics, EvaluationConfig.parse(evaluation_parameters).confidence)


def plot_recall_bars(
    scenario_statistics: pd.DataFrame, manifest: pd.DataFrame, evaluation_parameters: dict[str, Any]
) -> Figure:
    return recall_bars(
        scenario_statistics, class_names(manifest), EvaluationConfig.parse(evaluation_parameters).confidence
    )


def measure_generative_quality(
    labeled_synthetic: pd.DataFrame,
    synthetic_images: dict,
    manifest: pd.DataFrame,
    real_images: dict,
    image: dict[str, Any],
    evaluation_parameters: dict[str, Any],
    seed: int,
) -> pd.DataFrame:
    """KID, FID, precision and recall of the kept synthetic images per class, against real reference images."""
    kept = labeled_synthetic[labeled_synthetic["verdict"] == "keep"]
    config = EvaluationConfig.parse(evaluation_parameters).quality
    return quality_table(manifest, real_images, kept, synthetic_images, ImageSpec.parse(image), config, seed)


def draw_samples(
    manifest: pd.DataFrame,
    real_images: dict,
    labeled_synthetic: pd.DataFrame,
    synthetic_images: dict,
    image: dict[str, Any],
    seed: int,
) -> Figure:
    """Random real train images beside random kept synthetic images, per class that has synthetic images."""
    spec, rng, per_row = ImageSpec.parse(image), numpy_rng(seed), 8
    kept = labeled_synthetic[labeled_synthetic["verdict"] == "keep"]
    train = split_rows(manifest, "train")
    real, fake = {}, {}
    for name, rows in kept.groupby("final_class"):
        real_keys = train.loc[train["class_name"] == name, "image_key"].to_numpy()
        real[name] = stack_images(real_images, rng.choice(real_keys, min(per_row, len(real_keys)), replace=False), spec)
        fake[name] = stack_images(
            synthetic_images, rng.choice(rows["image_key"].to_numpy(), min(per_row, len(rows)), replace=False), spec
        )
    return real_beside_synthetic(real, fake, "Real train (top) beside kept synthetic (bottom), per class", per_row)


def write_report(
    scenario_statistics: pd.DataFrame,
    scenario_summary: pd.DataFrame,
    split_audit: pd.DataFrame,
    manifest: pd.DataFrame,
    study_parameters: dict[str, Any],
    evaluation_parameters: dict[str, Any],
    generative_quality: pd.DataFrame | None = None,
    samples: Figure | None = None,
    **test_predictions: pd.DataFrame,
) -> str:
    """The self-contained HTML report (its figures drawn again from the statistics: figures do not load back)."""
    config, names = EvaluationConfig.parse(evaluation_parameters), class_names(manifest)
    figures = {
        "ratio_curves": ratio_curves(scenario_statistics, config.confidence),
        "recall_bars": recall_bars(scenario_statistics, names, config.confidence),
    }
    if samples is not None:
        figures["samples"] = samples
    confusions = {name: confusion(table, len(names)) for name, table in test_predictions.items()}
    return build_report(ReportInputs(
        title=config.report_title, summary=scenario_statistics, scenario_summary=scenario_summary,
        split_audit=split_audit, confusions=confusions, class_names=names,
        minority=_minority(manifest, study_parameters), confidence=config.confidence, figures=figures,
        quality=generative_quality, nearest_k=config.quality.nearest_k,
    ))  # fmt: skip


def _minority(manifest: pd.DataFrame, study_parameters: dict[str, Any]) -> list[str]:
    config = StudyConfig.parse(study_parameters)
    return resolve_classes(config.augment_classes, train_counts(manifest), config.parameter("augment_classes"))
