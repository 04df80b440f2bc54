"""notebooks/study.ipynb as a user runs it: first before any run (every section says what to run), then again after
the study has run (tables, images and the report), in one Jupyter kernel, against an empty project and the shared
finished tiny study."""

from __future__ import annotations

import copy
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

from tests.test_project_run import PROJECT, make_project

NOTEBOOK = PROJECT / "notebooks" / "study.ipynb"
PROJECT_VARIABLE = "GENERATIVE_AUGMENTATION_PROJECT"
ARMS = ["real", "synthetic_x1"]  # two of the tiny study's arms, with the contrast between them
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


def before_and_after(notebook, empty: Path, study: Future) -> tuple[str, str]:
    """The notebook's outputs on the empty project, then, once the ``study`` future holds the finished study's folder,
    on that project: one kernel, started and used in this thread only."""
    client = NotebookClient(
        notebook, timeout=120, kernel_name="python3", shutdown_kernel="immediate",
        resources={"metadata": {"path": str(empty)}},
    )  # fmt: skip
    with client.setup_kernel():
        before = run_all(client, copy.deepcopy(notebook.cells))
        folder = study.result(timeout=600)
        client.execute_cell(new_code_cell(f"import os\nos.environ[{PROJECT_VARIABLE!r}] = {str(folder)!r}"), 0)
        return before, run_all(client, notebook.cells)


@pytest.mark.slow
def test_the_notebook_says_what_to_run_then_shows_the_study(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = make_project(tmp_path / "empty")
    monkeypatch.setenv(PROJECT_VARIABLE, str(empty))  # the kernel inherits it; its working folder is empty too
    notebook, study = nbformat.read(NOTEBOOK, as_version=4), Future()
    # The kernel starts and opens the empty project while the shared study is fetched here (it runs now if no test
    # has asked for it yet; in the main thread, where the project's hooks can set signal handlers).
    with ThreadPoolExecutor(max_workers=1) as pool:
        outputs = pool.submit(before_and_after, notebook, empty, study)
        try:
            study.set_result(request.getfixturevalue("finished_study"))
        except BaseException as error:  # the kernel thread stops waiting and the test reports the study's error
            study.set_exception(error)
            raise
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
    assert f"Project {study.result()}, environment retinamnist" in after
    assert "grade1_mild" in after and "kept" in after  # the pool per class
    assert "data:image/png;base64," in after  # real beside synthetic images
    assert all(arm in after for arm in ARMS) and "macro-F1" in after  # the estimates
    assert "synthetic_x1" in after and "p (Holm)" in after  # the pre-registered verdict
    assert "<iframe srcdoc=" in after and "Synthetic augmentation study" in after  # the report
