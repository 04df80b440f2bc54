"""The pipelines take their shape from the active environment's parameters, whatever ran before in the process."""

from __future__ import annotations

from pathlib import Path

import pytest
from kedro.framework.project import pipelines
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from tests.test_project_run import make_project


def arms_of(project: Path, env: str | None, runtime_params: dict | None = None) -> set[str]:
    """The scenario namespaces of the evaluation pipeline a session in ``env`` builds."""
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env, runtime_params=runtime_params) as session:
        session.load_context()
        return {node.namespace for node in pipelines["evaluation"].nodes if node.namespace}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("registry"))


def test_each_environment_builds_its_own_scenarios_in_any_order(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    base = {"real", "traditional", "synthetic_x1", "count_matched_x1"}
    assert arms_of(project, "odir5k_7class") == base | {"reduced_synthetic_x1"}
    assert arms_of(project, None) == base  # the default environment, retinamnist, keeps base's arms
    assert arms_of(project, "odir5k") == base | {"synthetic_x2", "count_matched_x2"}
    assert arms_of(project, "odir5k_7class") == base | {"reduced_synthetic_x1"}
    assert arms_of(project, "image_folder") == {"real", "traditional", "synthetic_x1", "count_matched_x1"}  # base's


def test_runtime_parameters_shape_the_pipelines_and_name_a_bad_arm(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    balanced = {"arms": ["real", "balanced"], "statistics": {"contrasts": [["balanced", "real"]]}}
    assert arms_of(project, None, {"study": balanced}) == {"real", "balanced"}
    with pytest.raises(ValueError, match=r"study.statistics.contrasts compares best_synthetic with its count_matched"):
        arms_of(project, None, {"study": {"arms": ["real", "balanced"]}})  # base's contrasts need a control
    with pytest.raises(ValueError, match=r"study.arms names \['nonsense'\], which are not defined under scenarios"):
        arms_of(project, None, {"study": {"arms": ["real", "nonsense"]}})


def test_each_namespaced_arm_reads_its_own_parameter_subtree(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    arms_of(project, "odir5k")
    train = next(node for node in pipelines["evaluation"].nodes if node.name == "synthetic_x2.train_classifier")
    assemble = next(node for node in pipelines["hybrid_assembly"].nodes if node.name == "count_matched_x1.assemble")
    assert "params:scenarios.synthetic_x2" in train.inputs and "synthetic_images" in train.inputs
    assert {"params:scenarios.count_matched_x1", "params:scenarios.synthetic_x1"} <= set(assemble.inputs)
    assert "labeled_synthetic" not in assemble.inputs  # a count-matched control only draws real images again
