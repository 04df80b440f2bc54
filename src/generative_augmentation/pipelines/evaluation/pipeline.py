"""The evaluation pipeline: one namespaced template per arm of the study, then the across-arm analysis.

The arms are passed in by the registry from the active environment's ``study.arms``; each namespace reads its own
parameter subtree ``scenarios.<name>``, as the kedro-viz demo's modelling pipeline does per model type.
"""

from collections.abc import Mapping
from functools import partial, update_wrapper

from kedro.pipeline import Pipeline, node

from generative_augmentation.core.scenarios import ScenarioConfig

from .nodes import (
    analyse,
    collect_metrics,
    draw_samples,
    measure_generative_quality,
    plot_primary_metric,
    plot_ratio_curves,
    plot_recall_bars,
    probe_shortcut,
    score_on_test,
    train_classifiers,
    write_report,
)

SHARED_PARAMETERS = ("params:classifier", "params:evaluation", "params:augmentation", "params:image", "params:seed")


def shared_inputs(spec: ScenarioConfig) -> set[str]:
    """The datasets an arm's template reads from outside its namespace: the synthetic images when it draws them,
    the labeler when it gives them soft labels."""
    return (
        {"manifest", "real_images"}
        | ({"synthetic_images"} if spec.uses_synthetic else set())
        | ({"labeler"} if spec.teacher_weight > 0 else set())
    )


def scenario_template(name: str, spec: ScenarioConfig) -> Pipeline:
    """Train per replicate on ``training_manifest`` (``classifier.keep`` weights), score once on real test."""
    inputs = {
        "training_manifest": "training_manifest",
        "scenario": "params:scenario",
        "classifier": "params:classifier",
        "evaluation_parameters": "params:evaluation",
        "augmentation": "params:augmentation",
        "image": "params:image",
        "seed": "params:seed",
        **{dataset: dataset for dataset in sorted(shared_inputs(spec))},
    }
    return Pipeline(
        [
            node(
                update_wrapper(partial(train_classifiers, arm=name), train_classifiers),
                inputs,
                ["classifier", "training_history"],
                name="train_classifier",
            ),
            node(
                score_on_test,
                ["classifier", "manifest", "real_images", "params:image"],
                ["test_scores", "test_predictions", "confusion_matrix"],
                name="score_on_test",
            ),
        ]
    )


def create_pipeline(arms: Mapping[str, ScenarioConfig] | None = None, **kwargs) -> Pipeline:
    arms = arms or {"real": ScenarioConfig()}
    per_scenario = [
        Pipeline(
            scenario_template(name, spec),
            namespace=name,
            inputs=shared_inputs(spec),
            parameters={"params:scenario": f"params:scenarios.{name}", **{p: p for p in SHARED_PARAMETERS}},
        )
        for name, spec in arms.items()
    ]
    uses_synthetic = any(spec.uses_synthetic for spec in arms.values())
    arm_outputs = {
        f"{name}__{kind}": f"{name}.{dataset}"
        for name in arms
        for kind, dataset in (("predictions", "test_predictions"), ("history", "training_history"))
    }
    study = [
        node(
            analyse,
            {
                "manifest": "manifest",
                "study_parameters": "params:study",
                "definitions": "params:scenarios",
                "seed": "params:seed",
                **arm_outputs,
            },
            ["primary_contrasts", "scenario_estimates", "study_metrics"],
            name="analyse_study",
        ),
        node(
            collect_metrics,
            {
                "manifest": "manifest",
                "study_parameters": "params:study",
                "definitions": "params:scenarios",
                **{name: f"{name}.test_scores" for name in arms},
            },
            "scenario_metrics",
            name="collect_scenario_metrics",
        ),
        node(
            plot_primary_metric,
            ["scenario_metrics", "params:study"],
            "primary_metric_by_scenario",
            name="plot_primary_metric",
        ),
        node(plot_ratio_curves, ["scenario_estimates", "params:study"], "ratio_curves", name="plot_ratio_curves"),
        node(
            plot_recall_bars, ["scenario_estimates", "manifest", "params:study"], "recall_bars", name="plot_recall_bars"
        ),
    ]
    report_inputs = {
        "primary_contrasts": "primary_contrasts",
        "scenario_estimates": "scenario_estimates",
        "scenario_metrics": "scenario_metrics",
        "scenario_summary": "scenario_summary",
        "split_audit": "split_audit",
        "manifest": "manifest",
        "study_parameters": "params:study",
        "evaluation_parameters": "params:evaluation",
        "classifier_parameters": "params:classifier",
        "run_provenance": "run_provenance",
        **{name: f"{name}.test_predictions" for name in arms},
    }
    if uses_synthetic:
        study += [
            node(
                measure_generative_quality,
                [
                    "labeled_synthetic",
                    "synthetic_images",
                    "manifest",
                    "real_images",
                    "params:image",
                    "params:evaluation",
                    "params:seed",
                ],
                "generative_quality",
                name="generative_quality",
            ),
            node(
                probe_shortcut,
                [
                    "labeled_synthetic",
                    "synthetic_images",
                    "manifest",
                    "real_images",
                    "params:classifier",
                    "params:image",
                    "params:seed",
                ],
                "shortcut_probe",
                name="shortcut_probe",
            ),
            node(
                draw_samples,
                ["manifest", "real_images", "labeled_synthetic", "synthetic_images", "params:image", "params:seed"],
                "report_samples",
                name="report_sample_grid",
            ),
        ]
        report_inputs |= {
            "generative_quality": "generative_quality",
            "shortcut_probe_table": "shortcut_probe",
            "samples": "report_samples",
        }
    study.append(node(write_report, report_inputs, "report", name="build_report"))
    return sum(per_scenario, start=Pipeline([])) + Pipeline(study)
