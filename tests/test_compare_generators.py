"""scripts/compare_generators.py on the tiny finished study: the tables it prints and the errors it names."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import load_script

SCRIPT = Path(__file__).parents[1] / "scripts" / "compare_generators.py"


def compare(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *arguments], check=False, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_two_runs_side_by_side_give_one_column_each(finished_study: Path) -> None:
    data = finished_study / "data"
    result = compare(f"first={data}", f"second={data}", "--sample", "2")
    assert result.returncode == 0, result.stderr
    summary = [line for line in result.stdout.splitlines() if line.startswith("| first") or line.startswith("| second")]
    assert len(summary) == 2 and all("| ddpm |" in line for line in summary)
    quality = pd.read_csv(next((data / "08_reporting" / "generative_quality.csv").glob("*/generative_quality.csv")))
    classes = quality.loc[quality["set"] == "synthetic", "class_name"]
    assert len(classes) > 0
    for class_name in classes:  # kid, precision, recall and the probe's AUC, with both runs' values
        rows = [line for line in result.stdout.splitlines() if line.startswith(f"| {class_name} |")]
        assert [row.split("|")[2].strip() for row in rows] == ["kid", "precision", "recall", "probe AUC"]
        kid = quality[(quality["class_name"] == class_name) & (quality["set"] == "synthetic")]["kid"].iloc[0]
        assert rows[0].rstrip(" |").endswith(f"{kid:.2f} | {kid:.2f}")
    assert result.stdout.count("the pre-registered contrasts") == 2 and "verdict" in result.stdout


def test_collapses_let_through_are_counted_per_class() -> None:
    script = load_script("compare_generators")
    assert script.collapse_summary([]) == "–"
    found = [
        {"step": 500, "class_name": "b", "ratio": 0.1, "threshold": 0.2},
        {"step": 250, "class_name": "a", "ratio": 0.1, "threshold": 0.2},
        {"step": 750, "class_name": "b", "ratio": 0.1, "threshold": 0.2},
    ]
    assert script.collapse_summary(found) == "a ×1 (from step 250), b ×2 (from step 500)"


def test_a_missing_folder_or_a_bare_path_is_named(tmp_path: Path) -> None:
    script = load_script("compare_generators")  # in this process: each error is checked without a Python start
    with pytest.raises(SystemExit, match=re.escape(f"gan: data folder {tmp_path / 'absent'} does not exist")):
        script.main([f"gan={tmp_path / 'absent'}"])
    with pytest.raises(SystemExit, match="write LABEL=DATA_DIR"):
        script.main([str(tmp_path)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="No saved generator under"):
        script.main([f"x={tmp_path / 'empty'}"])
