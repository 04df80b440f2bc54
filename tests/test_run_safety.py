"""Runs that do not hurt each other: checked parameters, one run per data folder, killed runs marked and linked,
named runs with provenance, and an MLflow store that follows a moved project."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
from kedro.framework.cli.utils import _split_params
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from generative_augmentation.core.config import ConfigError
from generative_augmentation.run_safety import RUN_LOCK, acquire_lock, release_lock, relocate_mlflow_store
from generative_augmentation.validation import check_parameters
from tests.test_configuration import parameters
from tests.test_project_run import TINY, make_project

QUICK = {**TINY, "study": {"arms": ["real", "traditional"], "statistics": {"contrasts": [["traditional", "real"]]}}}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(make_project(tmp_path / "project"))
    bootstrap_project(tmp_path / "project")
    return tmp_path / "project"


def run(project: Path, runtime_params: dict, env: str | None = None, **options) -> None:
    with KedroSession.create(project_path=project, env=env, runtime_params=runtime_params) as session:
        session.run(**options)


def test_a_bad_parameter_stops_the_run_before_any_node(project: Path) -> None:
    with pytest.raises(ConfigError, match=r"Parameter image.size must be in \[4, 1024\], got 0"):
        run(project, {**QUICK, "image": {"size": 0}})
    with pytest.raises(ConfigError, match=r"Parameter evaluation.replicates must be at least 1, got 0"):
        run(project, {**QUICK, "evaluation": {"replicates": 0}})
    assert not (project / "data/03_primary/manifest.parquet").exists()


# `kedro run --params=<these>` on the default environment, and the start of the message the run stops with.
COMMAND_LINE = [
    ("image.size=0", r"Parameter image.size must be in \[4, 1024\], got 0$"),
    ("image.size=-8", r"Parameter image.size must be in \[4, 1024\], got -8$"),
    ("image.size=100000", r"Parameter image.size must be in \[4, 1024\], got 100000$"),
    ("image.size=large", r"Parameter image.size must be an integer, got 'large'$"),
    ("image.size=28.5", r"Parameter image.size must be an integer, got 28.5$"),
    ("image.size=", r"Parameter image.size is empty \(null\); give an integer$"),
    ("evaluation.replicates=", r"Parameter evaluation.replicates is empty \(null\); give an integer$"),
    ("evaluation.replicates=0", r"Parameter evaluation.replicates must be at least 1, got 0$"),
    ("seed=", r"Parameter seed is empty \(null\); give a non-negative integer$"),
    ("seed=-1", r"Parameter seed must be a non-negative integer, got -1$"),
    ("classifier.steps=0", r"Parameter classifier.steps must be at least 1, got 0$"),
    ("classifier.batch_size=0", r"Parameter classifier.batch_size must be at least 1, got 0$"),
    ("generation.ddpm.sampling.steps=0", r"Parameter generation.ddpm.sampling.steps must be at least 1, got 0$"),
    ("generation.ddpm.sampling.batch_size=0", r"Parameter generation.ddpm.sampling.batch_size must be at least 1"),
    ("generation.ddpm.sampling.guidance_scale=-1", r"Parameter generation.ddpm.sampling.guidance_scale must be at"),
    (
        "generation.generator=vae",
        r"Parameter generation.generator must be one of "
        r"\['ddpm', 'gan', 'per_group', 'progressive_gan', 'stable_diffusion'\], got 'vae'$",
    ),
    ("split.cross_split_duplicates=keep", r"Parameter split.cross_split_duplicates must be one of \['fail', 'drop_"),
    ("study.statistics.contrasts=[]", r"Parameter study.statistics.contrasts is empty"),
]


@pytest.mark.parametrize(("params", "message"), COMMAND_LINE, ids=[params for params, _ in COMMAND_LINE])
def test_a_bad_value_given_on_the_command_line_is_named(params: str, message: str) -> None:
    runtime_params = _split_params(None, None, params)  # what `kedro run --params=<params>` hands the session
    with pytest.raises(ConfigError, match=message):
        check_parameters(parameters("retinamnist", runtime_params))


def test_an_unknown_environment_is_named(project: Path) -> None:
    with pytest.raises(ValueError, match=r"Unknown environment 'odir5' .*Environments: \[.*'odir5k'"):
        KedroSession.create(project_path=project, env="odir5").load_context()


def test_a_second_run_in_the_same_data_folder_is_refused(project: Path) -> None:
    held = acquire_lock(project / "data" / RUN_LOCK, blocking=False)  # as a run in another process holds it
    try:
        with pytest.raises(RuntimeError, match=r"Another kedro run is using .*data \(pid \d+"):
            run(project, QUICK, pipeline_names=["data_preparation"])
    finally:
        release_lock(held)
    run(project, QUICK, pipeline_names=["data_preparation"])  # free again: the run goes
    assert (project / "data/03_primary/manifest.parquet").is_file()


def statuses(project: Path) -> list[tuple[str, str, str | None]]:
    with sqlite3.connect(project / "mlflow.db") as db:
        rows = db.execute(
            "select run_uuid, status, name from runs where name not like '%replicate%' order by start_time"
        ).fetchall()
        tags = dict(db.execute("select run_uuid, value from tags where key = 'resumed_from'").fetchall())
    return [(run_id, status, tags.get(run_id)) for run_id, status, _ in rows]


@pytest.mark.slow
def test_a_terminated_run_is_marked_killed_and_the_resumed_run_links_to_it(project: Path) -> None:
    slow = {**QUICK, "classifier": {**QUICK["classifier"], "steps": 100000, "eval_every": 100000}}
    script = (
        "from kedro.framework.session import KedroSession\n"
        "from kedro.framework.startup import bootstrap_project\n"
        f"bootstrap_project({str(project)!r})\n"
        f"session = KedroSession.create(project_path={str(project)!r}, runtime_params={slow!r})\n"
        "session.run(pipeline_names=['data_preparation', 'hybrid_assembly', 'evaluation'])\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    training = threading.Event()

    def watch() -> None:  # a reader thread: a log line that never comes cannot hang the test
        for line in process.stdout:
            if "Running node: train_classifier" in line:
                training.set()

    threading.Thread(target=watch, daemon=True).start()
    assert training.wait(timeout=180), "the run never reached a classifier's training"
    time.sleep(2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    [(killed, status, _)] = statuses(project)
    assert status == "KILLED"
    run(project, QUICK, pipeline_names=["data_preparation", "hybrid_assembly", "evaluation"], only_missing_outputs=True)
    (first, _, _), (second, status, resumed_from) = statuses(project)
    assert first == killed and status == "FINISHED" and resumed_from == killed


def test_runs_carry_a_readable_name_and_their_provenance(project: Path) -> None:
    run(project, QUICK, pipeline_names=["data_preparation"])
    with sqlite3.connect(project / "mlflow.db") as db:
        ((run_id, name),) = db.execute("select run_uuid, name from runs").fetchall()
        tags = dict(db.execute("select key, value from tags where run_uuid = ?", (run_id,)).fetchall())
    assert name.startswith("retinamnist · data_preparation · 20")
    assert {"commit", "parameters_digest", "torch_threads", "env"} <= set(tags) and tags["torch_threads"] == "1"


def test_a_moved_project_re_points_its_mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    monkeypatch.chdir(old)
    mlflow.set_tracking_uri(f"sqlite:///{old / 'mlflow.db'}")
    experiment = mlflow.create_experiment("study", artifact_location=str(old / "mlruns" / "1"))
    with mlflow.start_run(experiment_id=experiment):
        mlflow.log_text("report", "reporting/report.html")
    mlflow.set_tracking_uri("")
    old.rename(new)
    assert relocate_mlflow_store(new / "mlflow.db", new) == 2  # the default experiment and ours
    with sqlite3.connect(new / "mlflow.db") as db:
        (location,) = db.execute("select artifact_location from experiments where name = 'study'").fetchone()
        (uri,) = db.execute("select artifact_uri from runs").fetchone()
    assert location == str((new / "mlruns" / "1").resolve()) and uri.startswith(str((new / "mlruns" / "1").resolve()))
    assert Path(uri, "reporting/report.html").read_text() == "report"
    assert relocate_mlflow_store(new / "mlflow.db", new) == 0  # already in place
    os.environ.pop("MLFLOW_TRACKING_URI", None)
