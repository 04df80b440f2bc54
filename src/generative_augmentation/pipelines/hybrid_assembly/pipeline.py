"""The hybrid_assembly pipeline: one assembly node per configured scenario."""

from kedro.pipeline import Pipeline, node

from generative_augmentation.scenarios import USES_SYNTHETIC, configured_scenarios

from .nodes import assemble_scenario, scenario_table


def _with_spec(name: str, spec: dict):
    """``assemble_scenario`` with this scenario's spec bound (the node's inputs follow its kind)."""
    spec = {**spec, "name": name}

    def assemble(manifest, hybrid_assembly, seed, *tables):
        labeled = tables[0] if spec["kind"] in USES_SYNTHETIC else None
        selected = tables[1] if spec["kind"] == "reduced_synthetic" else None
        return assemble_scenario(manifest, spec, hybrid_assembly, seed, labeled, selected)

    assemble.__doc__ = assemble_scenario.__doc__
    return assemble


def _summary(scenarios: dict):
    def summarise_scenarios(**manifests):
        return scenario_table(scenarios, **manifests)

    return summarise_scenarios


def create_pipeline(**kwargs) -> Pipeline:
    scenarios = configured_scenarios()
    nodes = []
    for name, spec in scenarios.items():
        inputs = ["manifest", "params:hybrid_assembly", "params:seed"]
        if spec["kind"] in USES_SYNTHETIC:
            inputs.append("labeled_synthetic")
        if spec["kind"] == "reduced_synthetic":
            inputs.append("selected_images")
        nodes.append(node(_with_spec(name, spec), inputs, f"{name}.training_manifest", name="assemble", namespace=name))
    nodes.append(
        node(
            _summary(scenarios),
            {name: f"{name}.training_manifest" for name in scenarios},
            "scenario_summary",
            name="summarise_scenarios",
        )
    )
    return Pipeline(nodes)
