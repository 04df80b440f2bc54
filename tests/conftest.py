"""Shared fixtures: tiny generated datasets in the three layouts the project reads, and one finished tiny study."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
from filelock import FileLock
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RETINAMNIST = Path(__file__).resolve().parents[1] / "data" / "01_raw" / "retinamnist.npz"
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module, in this process (scripts import their siblings, so scripts/ joins the
    path): a script's ``main(argv)`` is then tested without paying for a Python start and its imports."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def class_image(label: int, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """A noisy image whose colour and a bright square depend on its class: learnable in a few epochs."""
    base = np.zeros((size, size, 3), dtype=np.float32)
    base[..., label % 3] = 120 + 40 * (label // 3)
    corner = (label * 3) % (size - 4)
    base[corner : corner + 4, corner : corner + 4] = 250
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def write_npz(path: Path, counts: dict[str, list[int]], size: int = 16, seed: int = 0) -> Path:
    """A MedMNIST-style npz; ``counts[split]`` lists the number of images per class."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, per_class in counts.items():
        labels = np.repeat(np.arange(len(per_class)), per_class)
        arrays[f"{split}_images"] = np.stack([class_image(int(y), rng, size) for y in labels])
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def study_data(
    counts: dict[str, list[int]], size: int = 16, class_names: list[str] | None = None, seed: int = 0
) -> tuple[pd.DataFrame, dict[str, Image.Image]]:
    """A manifest like data_preparation's and its PNG partitions ``<split>/<class>/<image_id>``;
    ``counts[split]`` lists the images per class."""
    names = class_names or [f"c{label}" for label in range(len(next(iter(counts.values()))))]
    rng = np.random.default_rng(seed)
    rows, images = [], {}
    for split, per_class in counts.items():
        for label, count in enumerate(per_class):
            for index in range(count):
                image_id = f"{split}_{label}_{index:03d}"
                key = f"{split}/{names[label]}/{image_id}"
                images[key] = Image.fromarray(class_image(label, rng, size))
                rows.append(
                    {
                        "image_id": image_id,
                        "patient_id": image_id,
                        "label": label,
                        "class_code": str(label),
                        "class_name": names[label],
                        "split": split,
                        "image_key": key,
                    }
                )
    return pd.DataFrame(rows), images


@pytest.fixture
def tiny_npz(tmp_path: Path) -> Path:
    return write_npz(tmp_path / "tiny.npz", {"train": [24, 12, 8], "val": [6, 4, 4], "test": [8, 5, 5]})


@pytest.fixture
def tiny_odir(tmp_path: Path) -> Path:
    """An ODIR-5K-like folder: full_df.csv (one row per image) + preprocessed_images/, two eyes per patient."""
    root = tmp_path / "odir"
    (root / "preprocessed_images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    codes = ["N", "G", "C", "A"]
    rows = []
    for patient in range(60):
        code = codes[patient % len(codes)]
        for eye in ("left", "right"):
            filename = f"{patient}_{eye}.jpg"
            image = class_image(codes.index(code), rng, 24)
            Image.fromarray(image).save(root / "preprocessed_images" / filename, quality=95)
            rows.append({"ID": patient, "Patient Age": 60, "filename": filename, "labels": f"['{code}']"})
    pd.DataFrame(rows).to_csv(root / "full_df.csv", index=False)
    return root


@pytest.fixture
def tiny_image_folder(tmp_path: Path) -> Path:
    """A class-per-folder tree of grayscale PNGs."""
    root = tmp_path / "folder"
    rng = np.random.default_rng(2)
    for label, name in enumerate(["normal", "pneumonia"]):
        (root / name).mkdir(parents=True)
        for index in range(10):
            Image.fromarray(class_image(label, rng, 20)[..., 0]).save(root / name / f"{index}.png")
    return root


@pytest.fixture
def tiny_split_folder(tmp_path: Path) -> Path:
    """A class-per-folder tree under train/ and test/ only (no val/), RGB PNGs, every image distinct."""
    root = tmp_path / "split_folder"
    rng = np.random.default_rng(3)
    for split, count in (("train", 20), ("test", 6)):
        for label, name in enumerate(["glioma", "meningioma", "notumor"]):
            (root / split / name).mkdir(parents=True)
            for index in range(count):
                Image.fromarray(class_image(label, rng, 16)).save(root / split / name / f"{split}-{index:02d}.png")
    return root


@pytest.fixture(autouse=True, scope="session")
def single_torch_thread():
    """Tiny models run fastest on one thread, and do not stall when the two cores are shared."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def finished_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny default study, run once per test session and shared by the pytest-xdist workers (the first to ask runs
    it, the others wait on the lock). Tests only read it: those that need a study of their own make one."""
    session_root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        session_root = session_root.parent  # the folder above the workers' own: this session's, shared by them all
    from tests.test_project_run import make_project, run  # not at the top: that module imports this one

    project, done = session_root / "finished_study", session_root / "finished_study.done"
    with FileLock(session_root / "finished_study.lock"):
        if not done.exists():
            shutil.rmtree(project, ignore_errors=True)  # a worker that failed half-way left it
            make_project(project)
            with contextlib.chdir(project):
                run(project)
            done.touch()
    return project
