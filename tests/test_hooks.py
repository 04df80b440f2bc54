"""Project hooks: run timing, per-scenario MLflow metrics, MLflow artifacts logged by type."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from matplotlib.figure import Figure

from generative_augmentation.core.runtime import peak_rss_mib
from generative_augmentation.hooks import (
    MlflowArtifactHooks,
    log_artifact,
    node_intervals,
    scenario_metrics,
    seconds_per_pipeline,
)


def test_node_intervals_cover_the_whole_run() -> None:
    starts = [("load", 10.0), ("train", 12.5), ("score", 20.0)]
    intervals = node_intervals(starts, run_started=9.0, run_ended=21.0)
    assert intervals == {"load": 3.5, "train": 7.5, "score": 1.0}
    assert sum(intervals.values()) == pytest.approx(21.0 - 9.0)


def test_seconds_per_pipeline_follows_the_registered_pipelines() -> None:
    from kedro.framework.project import pipelines
    from kedro.framework.startup import bootstrap_project

    from tests.test_project_run import PROJECT

    bootstrap_project(PROJECT)
    first_preparation = next(iter(pipelines["data_preparation"].nodes)).name
    first_evaluation = next(iter(pipelines["evaluation"].nodes)).name
    totals = seconds_per_pipeline({first_evaluation: 4.0, first_preparation: 1.0, "not_a_node": 0.5})
    assert totals == {"data_preparation": 1.0, "evaluation": 4.0, "other": 0.5}
    assert list(totals) == ["data_preparation", "evaluation", "other"]  # run order, not arrival order


def test_peak_memory_reads_the_kernels_high_water_mark_in_mib(monkeypatch: pytest.MonkeyPatch) -> None:
    import resource

    usage = SimpleNamespace(ru_maxrss=3 * 1024 * 1024)  # Linux reports KiB, macOS bytes
    monkeypatch.setattr(resource, "getrusage", lambda who: usage)
    monkeypatch.setattr(sys, "platform", "linux")
    assert peak_rss_mib() == 3072.0
    monkeypatch.setattr(sys, "platform", "darwin")
    assert peak_rss_mib() == 3.0


def test_scenario_metrics_name_macro_and_class_rows_and_drop_nan() -> None:
    rows = pd.DataFrame(
        {
            "metric": ["f1", "recall", "auc"],
            "class_name": ["macro", "glaucoma", "macro"],
            "value": [0.5, 0.25, float("nan")],
        }
    )
    assert scenario_metrics(rows) == {"test_f1": 0.5, "test_recall.glaucoma": 0.25}


def test_saved_objects_are_logged_to_mlflow_by_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # set_tracking_uri also exports MLFLOW_TRACKING_URI: both are undone after the test, for the runs of later tests
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    figure = Figure()
    figure.add_subplot().plot([0, 1], [1, 0])
    record = {"state_dict": {"w": __import__("torch").ones(2)}, "config": {"classifier": {"width": 4}}}
    with mlflow.start_run(
        experiment_id=mlflow.create_experiment("hooks", artifact_location=str(tmp_path / "artifacts"))
    ) as run:
        log_artifact(figure, "plots", "curve")
        log_artifact({"a.png": figure}, "plots", "maps")
        log_artifact(pd.DataFrame({"x": [1, 2]}), "reporting", "table")
        log_artifact("<html></html>", "reporting", "report")
        log_artifact({"threshold": 0.5}, "reporting", "guard")
        log_artifact(record, "models", "labeler")
        hooks = MlflowArtifactHooks()
        hooks.after_catalog_created(
            DataCatalog(
                {
                    "synthetic_x1.sample_grid": MemoryDataset(metadata={"mlflow_artifact_path": "samples"}),
                    "unlogged_table": MemoryDataset(),
                }
            )
        )
        hooks.after_dataset_saved("synthetic_x1.sample_grid", figure, None)  # namespaced: logged by its own name
        hooks.after_dataset_saved("unlogged_table", pd.DataFrame({"x": [1]}), None)  # no artifact path: not logged
    hooks.after_dataset_saved("synthetic_x1.sample_grid", figure, None)  # no active run: nothing to log to
    client = mlflow.tracking.MlflowClient()
    listed = {
        item.path
        for folder in ("plots", "reporting", "models", "samples", "")
        for item in client.list_artifacts(run.info.run_id, folder)
    }
    assert {
        "plots/curve.png",
        "plots/maps",
        "reporting/table.csv",
        "reporting/report.html",
        "reporting/guard.json",
        "models/labeler.safetensors",
        "samples/sample_grid.png",
    } <= listed
    assert not any("unlogged" in path for path in listed)
    assert len(client.list_artifacts(run.info.run_id, "samples")) == 1
    table = Path(client.download_artifacts(run.info.run_id, "reporting/table.csv", str(tmp_path)))
    assert table.read_text().splitlines() == ["x", "1", "2"]
