"""notebooks/study.ipynb as a user runs it: first before any run (every section says what to run), then again after
the study has run (tables, images and the report), in one Jupyter kernel, against tiny projects."""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

from tests.test_project_run import PROJECT, TINY, make_project, run

NOTEBOOK = PROJECT / "notebooks" / "study.ipynb"
PROJECT_VARIABLE = "GENERATIVE_AUGMENTATION_PROJECT"
# What the notebook opens, made by every pipeline but reduction (no arm of this study uses it).
ARMS = ["real", "synthetic_x1"]
PIPELINES = ["data_preparation", "feature_clustering", "generation", "pseudo_labeling", "hybrid_assembly", "evaluation"]
NOT_YET = "has not been produced yet"


def run_all(client: NotebookClient, cells: list) -> str:
    """Execute ``cells`` in the client's kernel (a cell that raises fails the test); their text and HTML outputs."""
    for index, cell in enumerate(cells):
        client.execute_cell(cell, index)
    texts = []
    for cell in cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            texts += [output.get("data", {}).get(kind, "") for kind in ("text/plain", "text/html")]
    return "\n".join(texts)


def before_and_after(notebook, empty: Path, study: Path, study_done: threading.Event) -> tuple[str, str]:
    """The notebook's outputs on the empty project, then, once ``study_done`` is set, on the study's project: one
    kernel, started and used in this thread only."""
    client = NotebookClient(
        notebook, timeout=120, kernel_name="python3", shutdown_kernel="immediate",
        resources={"metadata": {"path": str(empty)}},
    )  # fmt: skip
    with client.setup_kernel():
        before = run_all(client, copy.deepcopy(notebook.cells))
        if not study_done.wait(timeout=600):
            raise TimeoutError("the study did not finish")
        client.execute_cell(new_code_cell(f"import os\nos.environ[{PROJECT_VARIABLE!r}] = {str(study)!r}"), 0)
        return before, run_all(client, notebook.cells)


def test_the_notebook_says_what_to_run_then_shows_the_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty, study = make_project(tmp_path / "empty"), make_project(tmp_path / "study")
    monkeypatch.setitem(TINY, "study", {"arms": ARMS, "statistics": {"contrasts": [ARMS[::-1]], "resamples": 200}})
    monkeypatch.chdir(study)
    monkeypatch.setenv(PROJECT_VARIABLE, str(empty))  # the kernel inherits it; its working folder is empty too
    notebook, study_done = nbformat.read(NOTEBOOK, as_version=4), threading.Event()
    # The kernel starts and opens the empty project while the study runs here (one torch thread; in the main thread,
    # where the project's hooks can set signal handlers): the kernel's imports are most of the notebook's time.
    with ThreadPoolExecutor(max_workers=1) as pool:
        outputs = pool.submit(before_and_after, notebook, empty, study, study_done)
        try:
            run(study, PIPELINES)
        finally:
            study_done.set()
        before, after = outputs.result()

    for dataset in (
        "manifest",
        "synthetic_manifest",
        "synthetic_images",
        "primary_contrasts",
        "scenario_estimates",
        "report",
    ):
        assert f"'{dataset}' {NOT_YET}" in before
    assert "make run" in before and "--pipelines=generation" in before
    assert NOT_YET not in after
    assert f"Project {study}, environment retinamnist" in after
    assert "grade1_mild" in after and "kept" in after  # the pool per class
    assert "data:image/png;base64," in after  # real beside synthetic images
    assert all(arm in after for arm in ARMS) and "macro-F1" in after  # the estimates
    assert "synthetic_x1" in after and "p (Holm)" in after  # the pre-registered verdict
    assert "<iframe srcdoc=" in after and "Synthetic augmentation study" in after  # the report
