"""Nodes of the evaluation pipeline: per arm, train a classifier per replicate, select on real validation images,
score once on real test images; across arms, the pre-registered contrasts, the estimates, the shortcut probe,
generative quality, figures and the report."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from generative_augmentation.core import evaluation, study
from generative_augmentation.core.classifier import ClassifierConfig
from generative_augmentation.core.evaluation import EvaluationConfig
from generative_augmentation.core.generative_metrics import quality_table
from generative_augmentation.core.images import AugmentationConfig, ImageSpec, stack_images
from generative_augmentation.core.manifest import class_names, kept_synthetic, split_arrays, split_rows
from generative_augmentation.core.metrics import confusion
from generative_augmentation.core.plots import (
    confusion_matrix_figure,
    metric_by_scenario,
    ratio_curves,
    real_beside_synthetic,
    recall_bars,
)
from generative_augmentation.core.probe import shortcut_probe
from generative_augmentation.core.report import ReportInputs, build_report
from generative_augmentation.core.runtime import derive_seed, numpy_rng
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
    labeler: dict[str, Any] | None = None,
    arm: str = "scenario",
) -> tuple[dict[str, Any], pd.DataFrame]:
    """One classifier per replicate on the arm's training set, each keeping its best-on-validation weights
    (``arm``: the arm's name, for the logs and progress bars; ``labeler``: the teacher of an arm with soft labels)."""
    spec, settings = ScenarioConfig.parse(scenario, f"scenarios.{arm}"), EvaluationConfig.parse(evaluation_parameters)
    image_spec = ImageSpec.parse(image)
    train = evaluation.training_arrays(training_manifest, real_images, synthetic_images, image_spec)
    val = split_arrays(manifest, real_images, "val", image_spec)
    transforms = AugmentationConfig.parse(augmentation) if spec.augmented else None
    return evaluation.train_replicates(
        train,
        val,
        ClassifierConfig.parse(classifier),
        transforms,
        settings.replicate_seeds(seed),
        class_names(manifest),
        image_spec,
        arm,
        workers=settings.worker_count(),
        synthetic=training_manifest["origin"].to_numpy() == "synthetic",
        recipe=spec,
        teacher=labeler,
    )


def score_on_test(
    classifier: dict[str, Any], manifest: pd.DataFrame, real_images: dict, image: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame, Figure]:
    """Every replicate scored once on the real test split: the metrics, the predictions, the confusion matrix."""
    test = split_arrays(manifest, real_images, "test", ImageSpec.parse(image))
    ids = split_rows(manifest, "test")["image_id"].to_numpy()
    scores, predictions = evaluation.score_replicates(classifier, test, ids)
    names = classifier["config"]["class_names"]
    return scores, predictions, confusion_matrix_figure(confusion(predictions, len(names)), names)


def analyse(
    manifest: pd.DataFrame,
    study_parameters: dict[str, Any],
    definitions: dict[str, Any],
    seed: int,
    **arm_outputs: pd.DataFrame,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The pre-registered primary contrasts (Holm-corrected verdicts), every arm's estimates with intervals, and
    the contrasts as MLflow metrics. ``arm_outputs``: ``<arm>__predictions`` and ``<arm>__history`` per arm."""
    config = StudyConfig.parse(study_parameters)
    arms = study_scenarios(config, definitions)
    names = class_names(manifest)
    minority = [names.index(name) for name in config.minority_class_names(manifest)]
    primary, estimates = study.analyse(
        {name: arm_outputs[f"{name}__predictions"] for name in arms},
        {name: arm_outputs[f"{name}__history"] for name in arms},
        arms,
        config.statistics,
        names,
        minority,
        derive_seed(seed, "bootstrap"),
    )
    mlflow_metrics = {
        f"primary.{row.treatment}_vs_{row.control}.{field}": {"value": float(getattr(row, field)), "step": 0}
        for row in primary.itertuples()
        for field in ("estimate", "low", "high", "p_holm")
        if np.isfinite(getattr(row, field))
    }
    return primary, estimates, mlflow_metrics


def collect_metrics(
    manifest: pd.DataFrame, study_parameters: dict[str, Any], definitions: dict[str, Any], **test_scores: pd.DataFrame
) -> pd.DataFrame:
    """One row per (arm, replicate, metric, class): the per-classifier scores, for MLflow and the tables."""
    arms = study_scenarios(study_parameters, definitions)
    frames = [
        table.assign(scenario=name, kind=arms[name].kind, ratio=arms[name].ratio) for name, table in test_scores.items()
    ]
    columns = ["scenario", "kind", "ratio", "replicate", "metric", "class_name", "value"]
    return pd.concat(frames, ignore_index=True)[columns]


def plot_primary_metric(scenario_metrics: pd.DataFrame, study_parameters: dict[str, Any]) -> Figure:
    """The primary metric of every classifier, by arm (one box per arm): the view that answers the question."""
    return _primary_metric_figure(scenario_metrics, StudyConfig.parse(study_parameters))


def _primary_metric_figure(scenario_metrics: pd.DataFrame, config: StudyConfig) -> Figure:
    metric = config.statistics.primary_metric
    return metric_by_scenario(scenario_metrics, "f1" if metric == "minority_recall" else metric)


def plot_ratio_curves(scenario_estimates: pd.DataFrame, study_parameters: dict[str, Any]) -> Figure:
    return ratio_curves(scenario_estimates, 1 - StudyConfig.parse(study_parameters).statistics.alpha)


def plot_recall_bars(
    scenario_estimates: pd.DataFrame, manifest: pd.DataFrame, study_parameters: dict[str, Any]
) -> Figure:
    return recall_bars(
        scenario_estimates, class_names(manifest), 1 - StudyConfig.parse(study_parameters).statistics.alpha
    )


def probe_shortcut(
    labeled_synthetic: pd.DataFrame,
    synthetic_images: dict,
    manifest: pd.DataFrame,
    real_images: dict,
    classifier: dict[str, Any],
    image: dict[str, Any],
    seed: int,
) -> pd.DataFrame:
    """Per class: how well a small classifier tells kept synthetic images from real train images (AUC)."""
    spec, names = ImageSpec.parse(image), class_names(manifest)
    kept = kept_synthetic(labeled_synthetic)
    real = split_arrays(manifest, real_images, "train", spec)
    fake = (stack_images(synthetic_images, kept["image_key"], spec), kept["final_label"].to_numpy(dtype=np.int64))
    return shortcut_probe(real, fake, names, ClassifierConfig.parse(classifier), seed)


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
    kept = kept_synthetic(labeled_synthetic)
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
    kept = kept_synthetic(labeled_synthetic)
    train = split_rows(manifest, "train")
    real, fake = {}, {}
    for name, rows in kept.groupby("final_class"):
        real_keys = train.loc[train["class_name"] == name, "image_key"].to_numpy()
        real[name] = stack_images(real_images, rng.choice(real_keys, min(per_row, len(real_keys)), replace=False), spec)
        chosen = rng.choice(rows["image_key"].to_numpy(), min(per_row, len(rows)), replace=False)
        fake[name] = stack_images(synthetic_images, chosen, spec)
    return real_beside_synthetic(real, fake, "Real train (top) beside kept synthetic (bottom), per class", per_row)


def write_report(
    primary_contrasts: pd.DataFrame,
    scenario_estimates: pd.DataFrame,
    scenario_metrics: pd.DataFrame,
    scenario_summary: pd.DataFrame,
    split_audit: pd.DataFrame,
    manifest: pd.DataFrame,
    study_parameters: dict[str, Any],
    evaluation_parameters: dict[str, Any],
    classifier_parameters: dict[str, Any],
    run_provenance: dict[str, Any],
    generative_quality: pd.DataFrame | None = None,
    shortcut_probe_table: pd.DataFrame | None = None,
    samples: Figure | None = None,
    **test_predictions: pd.DataFrame,
) -> str:
    """The self-contained HTML report (its figures drawn again from the tables: figures do not load back)."""
    config, names = StudyConfig.parse(study_parameters), class_names(manifest)
    level = 1 - config.statistics.alpha
    figures = {
        "primary_metric": _primary_metric_figure(scenario_metrics, config),
        "ratio_curves": ratio_curves(scenario_estimates, level),
        "recall_bars": recall_bars(scenario_estimates, names, level),
    }
    if samples is not None:
        figures["samples"] = samples
    settings = EvaluationConfig.parse(evaluation_parameters)
    confusions = {name: confusion(table, len(names)) for name, table in test_predictions.items()}
    return build_report(
        ReportInputs(
            title=settings.report_title,
            primary=primary_contrasts,
            estimates=scenario_estimates,
            scenario_summary=scenario_summary,
            split_audit=split_audit,
            confusions=confusions,
            class_names=names,
            minority=config.minority_class_names(manifest),
            statistics=config.statistics,
            figures=figures,
            quality=generative_quality,
            probe=shortcut_probe_table,
            nearest_k=settings.quality.nearest_k,
            provenance=run_provenance,
            replicates=settings.replicates,
            keep=ClassifierConfig.parse(classifier_parameters).keep,
        )
    )
