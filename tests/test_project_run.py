"""The project as a user runs it: a Kedro session over a copy of conf/ on a tiny MedMNIST-style file."""

import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import yaml
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from tests.conftest import write_npz

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A throw-away copy of the project's configuration with a tiny dataset in data/01_raw."""
    shutil.copytree(PROJECT / "conf", tmp_path / "conf", ignore=shutil.ignore_patterns("local"))
    (tmp_path / "conf" / "local").mkdir()
    (tmp_path / "src").mkdir()  # the package itself is installed; Kedro only checks the folder
    shutil.copy(PROJECT / "pyproject.toml", tmp_path / "pyproject.toml")
    write_npz(tmp_path / "data/01_raw/retinamnist.npz", {"train": [30, 12, 8], "val": [6, 4, 4], "test": [8, 5, 5]}, 16)
    scenarios = {"real": {"kind": "real"}, "traditional_x1": {"kind": "traditional", "ratio": 1.0}}
    overrides = tmp_path / "conf" / "local" / "parameters_test.yml"
    overrides.write_text(yaml.safe_dump({
        "dataset": {"classes": ["0", "1", "2"], "class_names": {"0": "zero", "1": "one", "2": "two"}},
        "image": {"size": 16, "mode": "RGB"},
        "classifier": {"architecture": "small_cnn", "epochs": 2, "batch_size": 16, "patience": 2},
        "evaluation": {"seeds": [0, 1], "confidence": 0.95, "report_title": "tiny"},
        "hybrid_assembly": {"scenarios": scenarios},
    }))  # fmt: skip
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_default_data_runs_through_preparation_assembly_and_evaluation(project: Path) -> None:
    bootstrap_project(project)
    with KedroSession.create(project_path=project) as session:
        session.run(pipeline_names=["data_preparation", "hybrid_assembly", "evaluation"])
    manifest = pd.read_parquet(project / "data/03_primary/manifest.parquet")
    assert manifest.groupby("split").size().to_dict() == {"test": 18, "train": 50, "val": 14}
    assert len(list((project / "data/03_primary/images").rglob("*.png"))) == 82
    metrics = pd.read_csv(next((project / "data/08_reporting/scenario_metrics.csv").glob("*/scenario_metrics.csv")))
    assert set(metrics["scenario"]) == {"real", "traditional_x1"} and set(metrics["seed"]) == {0, 1}
    weights = [p for p in (project / "data/06_models/classifiers").rglob("*.safetensors") if p.is_file()]
    assert len(weights) == 2
    report = next((project / "data/08_reporting/report.html").glob("*/report.html")).read_text()
    assert "traditional_x1" in report and "Verdict" in report
    with sqlite3.connect(project / "mlflow.db") as db:
        runs = db.execute("select name from runs").fetchall()
        logged = {row[0] for row in db.execute("select key from metrics")}
    assert len(runs) == 1 + 2 * 2  # the parent run and one nested run per scenario and seed
    assert {"real.test_f1", "test_f1", "test_balanced_accuracy"} <= logged
    assert {"time_data_preparation_s", "time_evaluation_s", "time_total_s", "peak_rss_mib"} <= logged


EVALUATION_OUTPUTS = (
    "data/06_models/classifiers",
    "data/07_model_output/test_predictions",
    "data/08_reporting/test_scores",
    "data/08_reporting/scenario_metrics.csv",
    "data/08_reporting/report.html",
)


def test_only_missing_outputs_reruns_evaluation_alone(project: Path) -> None:
    bootstrap_project(project)
    with KedroSession.create(project_path=project) as session:
        session.run(pipeline_names=["data_preparation", "hybrid_assembly", "evaluation"])
    upstream = [project / "data/03_primary/manifest.parquet", *(project / "data/05_model_input").rglob("*.parquet")]
    stamps = {path: path.stat().st_mtime_ns for path in upstream}
    for output in EVALUATION_OUTPUTS:
        shutil.rmtree(project / output)

    with KedroSession.create(project_path=project) as session:
        session.run(pipeline_names=["data_preparation", "hybrid_assembly", "evaluation"], only_missing_outputs=True)

    assert {path: path.stat().st_mtime_ns for path in upstream} == stamps  # nothing upstream was re-made
    assert all((project / output).exists() for output in EVALUATION_OUTPUTS)
    weights = [p for p in (project / "data/06_models/classifiers").rglob("*.safetensors") if p.is_file()]
    assert len(weights) == 2  # both scenarios retrained, once each
