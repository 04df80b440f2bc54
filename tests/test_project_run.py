"""The project as a user runs it: Kedro sessions over a copy of conf/ on a tiny MedMNIST-style file."""

from __future__ import annotations

import functools
import shutil
import sqlite3
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from PIL import Image

from tests.conftest import write_npz

PROJECT = Path(__file__).resolve().parents[1]
# The default environment (retinamnist) made tiny with runtime parameters, as `kedro run --params` would.
TINY = {
    "runtime": {"num_threads": 1},
    "dataset": {"classes": ["0", "1", "2"]},
    "image": {"size": 16},
    "classifier": {"width": 8, "steps": 10, "eval_every": 5, "batch_size": 32},
    "evaluation": {"replicates": 2, "workers": 1, "quality": {"image_size": 32, "kid_subsets": 5, "nearest_k": 2}},
    "feature_clustering": {"extractor": {"image_size": 32}, "clustering": {"k_range": [2, 3]}, "tsne": {"n_iter": 50}},
    "generation": {
        "ddpm": {"block_out_channels": [16, 32], "train_steps": 2, "num_train_timesteps": 50, "sampling": {"steps": 3}},
        "min_train_images_per_class": 2,
        "pool": {"multiple": 2.0},
        "report": {"images_per_row": 4},
    },
    "pseudo_labeling": {"labeler": {"width": 8, "steps": 20}},
    "reduction": {"tsne": {"n_iter": 50}},
    "study": {
        "arms": ["real", "synthetic_x1", "count_matched_x1", "reduced_synthetic_x1"],
        "statistics": {
            "contrasts": [
                ["synthetic_x1", "real"],
                ["synthetic_x1", "count_matched_x1"],
                ["reduced_synthetic_x1", "real"],
            ],
            "resamples": 200,
        },
    },
}


@functools.cache
def migrated_mlflow_store() -> bytes:
    """An empty MLflow sqlite store with its schema in place: creating one costs seconds of migrations."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    with tempfile.TemporaryDirectory() as folder:
        SqlAlchemyStore(f"sqlite:///{folder}/mlflow.db", f"{folder}/artifacts")
        return Path(folder, "mlflow.db").read_bytes()


def make_project(root: Path) -> Path:
    """A throw-away copy of the project's configuration with a tiny 3-class dataset in data/01_raw."""
    shutil.copytree(PROJECT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    (root / "src").mkdir()  # the package itself is installed; Kedro only checks the folder
    shutil.copy(PROJECT / "pyproject.toml", root / "pyproject.toml")
    counts = {"train": [30, 12, 10], "val": [6, 4, 4], "test": [8, 5, 5]}
    write_npz(root / "data/01_raw/retinamnist.npz", counts, 16)
    (root / "mlflow.db").write_bytes(migrated_mlflow_store())
    return root


def run(project: Path, pipelines: list[str] | None = None, **options) -> None:
    bootstrap_project(project)
    with KedroSession.create(project_path=project, runtime_params=TINY) as session:
        session.run(pipeline_names=pipelines, **options)


def latest(project: Path, dataset: str) -> Path:
    """The newest version of a versioned file dataset."""
    return sorted((project / dataset).glob("*/*"))[-1]


EVALUATION_OUTPUTS = (
    "data/06_models/classifiers",
    "data/07_model_output/test_predictions",
    "data/08_reporting/test_scores",
    "data/08_reporting/scenario_metrics.csv",
    "data/08_reporting/report.html",
)


@pytest.mark.slow
def test_the_whole_default_study_runs_and_the_same_seed_gives_the_same_outputs(
    finished_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    second = make_project(tmp_path / "second")
    monkeypatch.chdir(second)
    run(second)
    outputs = {}
    for name, project in (("first", finished_study), ("second", second)):
        outputs[name] = {
            "manifest": pd.read_parquet(project / "data/03_primary/manifest.parquet"),
            "pool": pd.read_parquet(project / "data/07_model_output/synthetic_manifest.parquet"),
            "pngs": {
                path.relative_to(project / "data/07_model_output/synthetic"): np.asarray(Image.open(path))
                for path in (project / "data/07_model_output/synthetic").rglob("*.png")
            },
            "metrics": pd.read_csv(latest(project, "data/08_reporting/scenario_metrics.csv")),
        }
    first, second = outputs["first"], outputs["second"]
    assert first["manifest"].groupby("split").size().to_dict() == {"test": 18, "train": 52, "val": 14}
    assert len(first["pool"]) > 0 and len(first["pngs"]) == len(first["pool"])
    assert set(first["metrics"]["scenario"]) == set(TINY["study"]["arms"])
    pd.testing.assert_frame_equal(first["manifest"], second["manifest"])
    pd.testing.assert_frame_equal(first["pool"], second["pool"])
    assert first["pngs"].keys() == second["pngs"].keys()
    assert all(np.array_equal(image, second["pngs"][key]) for key, image in first["pngs"].items())
    pd.testing.assert_frame_equal(first["metrics"], second["metrics"])
    with sqlite3.connect(finished_study / "mlflow.db") as db:
        (parent,) = db.execute(
            "select run_uuid from runs where name like 'retinamnist · all · %' order by start_time limit 1"
        ).fetchone()
        children = db.execute(
            "select count(*) from tags where key = 'mlflow.parentRunId' and value = ?", (parent,)
        ).fetchone()[0]
        logged = {row[0] for row in db.execute("select key from metrics")}
    assert children == 4 * 2  # one nested run per scenario and replicate under the run's parent
    assert {"test_f1", "test_balanced_accuracy", "time_total_s", "peak_rss_mib", "generation.pool_size"} <= logged


@pytest.mark.slow
def test_only_missing_outputs_reruns_evaluation_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = make_project(tmp_path)
    monkeypatch.chdir(project)
    study = {"arms": ["real", "traditional"], "statistics": {"contrasts": [["traditional", "real"]]}}
    monkeypatch.setitem(TINY, "study", study)  # no generation needed
    pipelines = ["data_preparation", "hybrid_assembly", "evaluation"]
    run(project, pipelines)
    upstream = [project / "data/03_primary/manifest.parquet", *(project / "data/05_model_input").rglob("*.parquet")]
    stamps = {path: path.stat().st_mtime_ns for path in upstream}
    for output in EVALUATION_OUTPUTS:
        shutil.rmtree(project / output)
    run(project, pipelines, only_missing_outputs=True)
    assert {path: path.stat().st_mtime_ns for path in upstream} == stamps  # nothing upstream was re-made
    assert all((project / output).exists() for output in EVALUATION_OUTPUTS)
    weights = [path for path in (project / "data/06_models/classifiers").rglob("*.safetensors") if path.is_file()]
    assert len(weights) == 2  # both scenarios retrained, once each
