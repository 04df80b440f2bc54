"""The evaluation pipeline: one template per scenario (namespace = scenario), then the across-scenario study."""

from typing import Any

import pandas as pd
from kedro.pipeline import Pipeline, node

from generative_augmentation.scenarios import USES_SYNTHETIC, configured_scenarios

from .nodes import class_names_of, score_scenario, train_scenario
from .report import build_report, sample_grid
from .study import (
    collect_scenario_metrics,
    generative_quality,
    ratio_curves,
    recall_bars,
    summarise_scenarios,
    summed_confusions,
)

SHARED_INPUTS = {"manifest", "real_images"}
SHARED_PARAMETERS = {"params:classifier", "params:evaluation", "params:image"}


def scenario_template(uses_synthetic: bool) -> Pipeline:
    """Train per seed on ``training_manifest``, select on real val, score once on real test."""
    inputs = ["training_manifest", "manifest", "real_images", "params:classifier", "params:evaluation", "params:image"]
    return Pipeline(
        [
            node(
                train_scenario,
                inputs + (["synthetic_images"] if uses_synthetic else []),
                ["classifier", "training_history"],
                name="train_classifier",
            ),
            node(
                score_scenario,
                ["classifier", "manifest", "real_images", "params:image"],
                ["test_scores", "mlflow_metrics", "confusion_matrix", "test_predictions"],
                name="score_on_test",
            ),
        ]
    )


def _collector(scenarios: dict[str, dict[str, Any]]):
    def collect_scenario_metrics_node(manifest: pd.DataFrame, **test_scores: pd.DataFrame) -> pd.DataFrame:
        return collect_scenario_metrics(scenarios, manifest, **test_scores)

    collect_scenario_metrics_node.__doc__ = collect_scenario_metrics.__doc__
    return collect_scenario_metrics_node


def report_node(
    summary, scenario_summary, split_audit, manifest, title, quality=None, samples=None, **test_predictions
) -> str:
    """The HTML report (figures redrawn from the statistics and each scenario's saved test predictions)."""
    class_names = class_names_of(manifest)
    confusions = summed_confusions(len(class_names), **test_predictions)
    curves, bars = ratio_curves(summary), recall_bars(summary, manifest)
    return build_report(
        summary, scenario_summary, quality, split_audit, curves, bars, samples, confusions, class_names, title
    )


def create_pipeline(**kwargs) -> Pipeline:
    scenarios = configured_scenarios()
    uses_synthetic = any(spec["kind"] in USES_SYNTHETIC for spec in scenarios.values())
    per_scenario = sum(
        (
            Pipeline(
                scenario_template(spec["kind"] in USES_SYNTHETIC),
                namespace=name,
                inputs=SHARED_INPUTS | ({"synthetic_images"} if spec["kind"] in USES_SYNTHETIC else set()),
                parameters=SHARED_PARAMETERS,
            )
            for name, spec in scenarios.items()
        ),
        start=Pipeline([]),
    )
    study = [
        node(
            _collector(scenarios),
            {"manifest": "manifest", **{name: f"{name}.test_scores" for name in scenarios}},
            "scenario_metrics",
            name="collect_scenario_metrics",
        ),
        node(summarise_scenarios, ["scenario_metrics", "params:evaluation"], "scenario_statistics", name="statistics"),
        node(ratio_curves, "scenario_statistics", "ratio_curves", name="plot_ratio_curves"),
        node(recall_bars, ["scenario_statistics", "manifest"], "recall_bars", name="plot_recall_bars"),
    ]
    if uses_synthetic:
        study += [
            node(
                generative_quality,
                [
                    "labeled_synthetic",
                    "synthetic_images",
                    "manifest",
                    "real_images",
                    "params:image",
                    "params:evaluation.quality",
                    "params:seed",
                ],
                "generative_quality",
                name="generative_quality",
            ),  # fmt: skip
            node(
                sample_grid,
                ["manifest", "real_images", "labeled_synthetic", "synthetic_images", "params:image", "params:seed"],
                "report_samples",
                name="report_sample_grid",
            ),
        ]
    synthetic_inputs = {"quality": "generative_quality", "samples": "report_samples"} if uses_synthetic else {}
    study.append(
        node(
            report_node,
            {
                "summary": "scenario_statistics",
                "scenario_summary": "scenario_summary",
                "split_audit": "split_audit",
                "manifest": "manifest",
                "title": "params:evaluation.report_title",
                **synthetic_inputs,
                **{name: f"{name}.test_predictions" for name in scenarios},
            },
            "report",
            name="build_report",
        )  # fmt: skip
    )
    return per_scenario + Pipeline(study)
