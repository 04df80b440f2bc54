"""kedro-viz draws every study with its layers switched on and the upstream pipelines collapsed.

kedro-viz switches layers off when it finds a cycle among them, so every dataset a pipeline uses has a layer
(``metadata: kedro-viz: layer``, dataset-factory entries such as ``{scenario}.test_scores`` included) and no node
writes to an earlier layer of Kedro's data engineering convention than one it reads. The sessions are built as
``kedro viz run --env`` builds them: the registry takes the arms from the session's environment.
"""

from __future__ import annotations

from graphlib import CycleError, TopologicalSorter

import pytest
from kedro.framework.project import pipelines
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.pipeline import Pipeline

from generative_augmentation.pipeline_registry import PIPELINE_ORDER
from tests.test_project_run import make_project

LAYERS = ("raw", "intermediate", "primary", "feature", "model_input", "models", "model_output", "reporting")
UPSTREAM = ("data_preparation", "feature_clustering", "generation", "pseudo_labeling", "reduction")
ENVIRONMENTS = (None, "odir5k", "odir5k_7class", "brain_mri")  # None: the default environment


def is_parameter(name: str) -> bool:
    return name == "parameters" or name.startswith("params:")


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str | None, tuple[dict[str, Pipeline], dict, list]]:
    """Per environment: the registered pipelines, each dataset's layer (None without one) and the study's arms."""
    project = make_project(tmp_path_factory.mktemp("viz"))
    built = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)  # MLflow's store, opened by the session's hooks, stays in the copy
        bootstrap_project(project)
        for env in ENVIRONMENTS:
            with KedroSession.create(project_path=project, env=env) as session:
                context = session.load_context()
                registered = dict(pipelines)
                catalog = context.catalog  # resolves dataset-factory patterns on get
                names = {name for pipeline in registered.values() for name in pipeline.datasets()}
                layers = {}
                for name in sorted(name for name in names if not is_parameter(name)):
                    dataset = catalog.get(name)
                    metadata = (getattr(dataset, "metadata", None) or {}) if dataset is not None else {}
                    layers[name] = (metadata.get("kedro-viz") or {}).get("layer")
                arms = list(context.config_loader["parameters"]["study"]["arms"])
            built[env] = registered, layers, arms
    return built


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_dataset_of_every_pipeline_has_a_known_layer(studies: dict, env: str | None) -> None:
    _, layers, arms = studies[env]
    assert {f"{arm}.{output}" for arm in arms for output in ("training_manifest", "test_scores")} <= set(layers)
    assert not {name for name, layer in layers.items() if layer is None}, "datasets without a kedro-viz layer"
    assert not {f"{name}: {layer}" for name, layer in layers.items() if layer not in LAYERS}, "unknown layers"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_no_node_writes_to_an_earlier_layer_so_the_layers_have_no_cycle(studies: dict, env: str | None) -> None:
    registered, layers, _ = studies[env]
    edges = {
        (node.name, source, target)
        for pipeline in registered.values()
        for node in pipeline.nodes
        for source in node.inputs
        for target in node.outputs
        if layers.get(source) in LAYERS and layers.get(target) in LAYERS  # parameters and missing layers: above
    }
    backwards = sorted(
        f"{node}: {source} ({layers[source]}) -> {target} ({layers[target]})"
        for node, source, target in edges
        if LAYERS.index(layers[source]) > LAYERS.index(layers[target])
    )
    assert not backwards
    # kedro-viz's own condition, whatever the convention: the layers, each after those it is written from, sort.
    parents: dict[str, set[str]] = {layer: set() for layer in layers.values()}
    for _, source, target in edges:
        if layers[source] != layers[target]:
            parents[layers[target]].add(layers[source])
    try:
        list(TopologicalSorter(parents).static_order())
    except CycleError as error:
        pytest.fail(f"kedro-viz would switch layers off: a cycle among them, {error.args[1]}")


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_each_upstream_pipeline_is_one_namespace_and_keeps_its_dataset_names(studies: dict, env: str | None) -> None:
    registered, _, _ = studies[env]
    for name in UPSTREAM:
        assert {node.namespace for node in registered[name].nodes} == {name}  # kedro-viz collapses it into one box
        assert not [dataset for dataset in registered[name].datasets() if dataset.startswith(f"{name}.")]
    default = registered["__default__"]
    assert set(default.nodes) == {node for name in PIPELINE_ORDER for node in registered[name].nodes}
