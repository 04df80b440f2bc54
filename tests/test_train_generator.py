"""The generator trained by two processes (torchrun, as `accelerate launch` starts them; on CPU accelerate joins them
with gloo): one generator and one loss log saved through the catalog, checkpoints written by the first process
alone, and a second launch resuming from them."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from generative_augmentation.train_generator import main
from tests.test_project_run import TINY, latest, make_project, run

TORCHRUN = Path(sys.executable).with_name("torchrun")


def launch(project: Path, train_steps: int) -> str:
    params = copy.deepcopy(TINY)
    params["generation"]["keep_checkpoints"] = True
    params["generation"]["ddpm"] |= {"train_steps": train_steps, "checkpoint_every": 2, "warmup_steps": 1}
    (project / "run.yml").write_text(yaml.safe_dump({"run": {"params": params}}))
    result = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "generative_augmentation.train_generator"]
        + ["--config=run.yml"],
        cwd=project,
        env=os.environ | {"OMP_NUM_THREADS": "1", "KEDRO_DISABLE_TELEMETRY": "1", "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_two_processes_train_one_generator_and_a_second_launch_resumes(tmp_path, monkeypatch) -> None:
    project = make_project(tmp_path / "project")
    monkeypatch.chdir(project)
    run(project, ["data_preparation"])

    first = launch(project, train_steps=4)
    assert "Process 1 of 2 trains the generator" in first and "Process 2 of 2 trains the generator" in first
    generators = sorted((project / "data/06_models/generator").iterdir())
    assert len(generators) == 1  # one version, saved by the first process only
    log = pd.read_csv(latest(project, "data/08_reporting/generation/training_log.csv"))
    assert log["step"].tolist() == [1, 2, 3, 4]
    (run_folder,) = (project / "data/06_models/generator_checkpoints").glob("ddpm-*")
    assert [folder.name for folder in run_folder.iterdir()] == ["step-00000004"]  # complete, none partial

    second = launch(project, train_steps=6)
    assert "Resuming from" in second and "(step 4)" in second
    log = pd.read_csv(latest(project, "data/08_reporting/generation/training_log.csv"))
    assert log["step"].tolist() == [1, 2, 3, 4, 5, 6]
    assert len(list((project / "data/06_models/generator").iterdir())) == 2


def test_a_run_file_with_other_keys_is_refused(tmp_path, monkeypatch) -> None:
    (tmp_path / "run.yml").write_text(yaml.safe_dump({"run": {"params": {}, "pipeline": "generation"}}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"run.yml: run.pipeline is not read here \(only run.env and run.params\)"):
        main(["--config=run.yml"])
