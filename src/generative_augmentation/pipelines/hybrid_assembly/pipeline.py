"""The hybrid_assembly pipeline: one namespaced assembly node per scenario of the study, then a summary.

The arms come from the active environment's parameters (``study.arms``), passed in by the registry; each
namespaced node reads its own parameter subtree ``scenarios.<name>``, as the kedro-viz demo's modelling pipeline
gives each model type its own ``<model>.model_options``.
"""

from collections.abc import Mapping
from functools import partial, update_wrapper

from kedro.pipeline import Pipeline, node

from generative_augmentation.core.scenarios import ScenarioConfig

from .nodes import assemble_training_manifest, summarise_scenarios


def scenario_template(name: str, spec: ScenarioConfig) -> Pipeline:
    """The assembly of the arm ``name``; its inputs follow its kind."""
    inputs = {"manifest": "manifest", "scenario": "params:scenario", "study": "params:study", "seed": "params:seed"}
    if spec.uses_synthetic:
        inputs["labeled_synthetic"] = "labeled_synthetic"
    if spec.uses_selection:
        inputs["selected_images"] = "selected_images"
    if spec.controls is not None:
        inputs["controlled"] = "params:controlled"
    assemble = update_wrapper(
        partial(assemble_training_manifest, arm=name, control_arm=spec.controls), assemble_training_manifest
    )
    return Pipeline([node(assemble, inputs, "training_manifest", name="assemble")])


def create_pipeline(arms: Mapping[str, ScenarioConfig] | None = None, **kwargs) -> Pipeline:
    arms = arms or {"real": ScenarioConfig()}
    per_scenario = [
        Pipeline(
            scenario_template(name, spec),
            namespace=name,
            inputs={"manifest", "labeled_synthetic", "selected_images"} & set(scenario_template(name, spec).inputs()),
            parameters={
                "params:scenario": f"params:scenarios.{name}",
                "params:study": "params:study",
                "params:seed": "params:seed",
            }
            | ({"params:controlled": f"params:scenarios.{spec.controls}"} if spec.controls else {}),
        )
        for name, spec in arms.items()
    ]
    summary = node(
        summarise_scenarios,
        {
            "study": "params:study",
            "definitions": "params:scenarios",
            **{name: f"{name}.training_manifest" for name in arms},
        },
        "scenario_summary",
        name="summarise_scenarios",
    )
    return sum(per_scenario, start=Pipeline([])) + Pipeline([summary])
