"""Project hooks that need no Kedro session: run timing and per-scenario MLflow metrics."""

import pandas as pd
import pytest

from generative_augmentation.hooks import node_intervals, peak_rss_mib, scenario_seed_metrics, seconds_per_pipeline


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


def test_peak_memory_is_positive() -> None:
    assert peak_rss_mib() > 10


def test_scenario_seed_metrics_names_macro_and_class_rows_and_drops_nan() -> None:
    rows = pd.DataFrame({
        "metric": ["f1", "recall", "auc"], "class_name": ["macro", "glaucoma", "macro"],
        "value": [0.5, 0.25, float("nan")],
    })  # fmt: skip
    assert scenario_seed_metrics(rows) == {"test_f1": 0.5, "test_recall.glaucoma": 0.25}
