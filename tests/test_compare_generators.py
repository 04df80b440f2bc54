"""scripts/compare_generators.py on the tiny finished study: the tables it prints and the errors it names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

SCRIPT = Path(__file__).parents[1] / "scripts" / "compare_generators.py"


def compare(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *arguments], check=False, capture_output=True, text=True, timeout=600
    )


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


def test_a_missing_folder_or_a_bare_path_is_named(tmp_path: Path) -> None:
    missing = compare(f"gan={tmp_path / 'absent'}")
    assert missing.returncode != 0 and f"gan: data folder {tmp_path / 'absent'} does not exist" in missing.stderr
    bare = compare(str(tmp_path))
    assert bare.returncode != 0 and "write LABEL=DATA_DIR" in bare.stderr
    (tmp_path / "empty").mkdir()
    empty = compare(f"x={tmp_path / 'empty'}")
    assert empty.returncode != 0 and "No saved generator under" in empty.stderr
