"""conf/logging.yml and the warning filters of settings.py, as a `kedro` command in a project folder sees them."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_project_run import PROJECT, migrated_mlflow_store

# Library warnings a user cannot act on: silenced by settings.py.
SILENCED = (
    "Add type hints to the `predict` method",  # mlflow, on kedro-mlflow's KedroPipelineModel
    "register_new_resolver() is deprecated",  # OmegaConf, on Kedro's and kedro-mlflow's resolvers
    "dataset names contain '.'",  # Kedro, on the study nodes that read the scenario namespaces
    "Replacing dataset",  # Kedro's catalog
)


def test_the_console_stays_rich_and_a_plain_rotating_file_log_is_added() -> None:
    config = yaml.safe_load((PROJECT / "conf" / "logging.yml").read_text())
    assert config["handlers"]["rich"]["class"] == "kedro.logging.RichHandler"
    file = config["handlers"]["file"]
    assert file["class"] == "logging.handlers.RotatingFileHandler"
    assert file["filename"] == "kedro.log" and file["maxBytes"] > 0 and file["backupCount"] > 0
    assert "%(message)s" in config["formatters"][file["formatter"]]["format"]
    assert config["root"]["handlers"] == ["rich", "file"]
    assert "generative_augmentation" in config["loggers"]  # else Kedro re-applies the file in every project folder


@pytest.mark.slow
def test_a_kedro_command_prints_none_of_the_silenced_warnings_and_logs_to_the_file(tmp_path: Path) -> None:
    shutil.copytree(PROJECT / "conf", tmp_path / "conf", ignore=shutil.ignore_patterns("local"))
    shutil.copy(PROJECT / "pyproject.toml", tmp_path / "pyproject.toml")
    for folder in ("conf/local", "src"):
        (tmp_path / folder).mkdir()
    (tmp_path / "mlflow.db").write_bytes(migrated_mlflow_store())  # its schema in place: migrations cost seconds
    # describe-datasets creates a context and builds the pipelines: every warning above is raised on the way.
    result = subprocess.run(
        [sys.executable, "-m", "kedro", "catalog", "describe-datasets", "--pipeline=data_preparation"],
        cwd=tmp_path,
        env=os.environ | {"KEDRO_DISABLE_TELEMETRY": "1", "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "raw_images" in result.stdout
    assert [warning for warning in SILENCED if warning in output] == []
    log = (tmp_path / "kedro.log").read_text()
    used = "Using 'conf/logging.yml' as logging configuration. You can change this by setting the KEDRO_LOGGING_CONFIG"
    assert used in log  # on one line: plain text, not wrapped to the terminal
    assert "\x1b[" not in log and [warning for warning in SILENCED if warning in log] == []


def test_only_mlflow_type_hint_warnings_are_dropped_from_the_warnings_logger() -> None:
    from generative_augmentation import settings  # noqa: F401 (adds the filter)

    def passes(message: str) -> bool:
        record = logging.LogRecord("py.warnings", logging.WARNING, __file__, 1, "%s", (message,), None)
        return all(check.filter(record) for check in logging.getLogger("py.warnings").filters)

    site = "/venv/lib/python3.11/site-packages"
    assert not passes(f"{site}/mlflow/pyfunc/utils/data_validation.py:187: UserWarning: \x1b[33mAdd type hints to x")
    assert passes(f"{site}/mlflow/pyfunc/model.py:10: UserWarning: Add type hints to x")
    assert passes(f"{site}/torch/nn/modules/module.py:12: UserWarning: something else")
