"""Dataset adapters: read a labelled image collection as the user has it into one common table.

Each adapter returns a :class:`RawCollection`: a table with one row per image (``source_id``, ``patient_id``,
``class_code``, ``official_split``, ``eye``, ``source``) and a loader that decodes one image on demand.
Adapters check the layout and say which file, folder or column is wrong.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from generative_augmentation.core.images import decode_image

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")
RECORD_COLUMNS = ["source_id", "patient_id", "class_code", "official_split", "eye", "source"]
ODIR_REQUIRED_COLUMNS = ("ID", "filename", "labels")
ODIR_IMAGE_DIRS = ("preprocessed_images", "images")


@dataclass
class RawCollection:
    """Image records plus a function that decodes the image of one record (by ``source``)."""

    records: pd.DataFrame
    load_image: Callable[[str], object]
    adapter: str
    root: str


def read_collection(adapter: str, root: str | Path, **options) -> RawCollection:
    """Read the collection at ``root`` with the named adapter."""
    readers = {"medmnist_npz": read_medmnist_npz, "odir5k": read_odir5k, "image_folder": read_image_folder}
    if adapter not in readers:
        raise ValueError(
            f"Unknown dataset adapter {adapter!r} (parameter dataset.adapter); use one of {sorted(readers)}"
        )
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"Dataset root {str(root)!r} (parameter dataset.root) does not exist")
    return readers[adapter](root, **options)


def read_medmnist_npz(root: Path) -> RawCollection:
    """A MedMNIST ``.npz`` with ``{train,val,test}_{images,labels}``; official splits kept.

    MedMNIST does not publish patient identifiers, so each image is its own patient.
    """
    if root.is_dir():
        candidates = sorted(root.glob("*.npz"))
        if len(candidates) != 1:
            raise FileNotFoundError(f"Expected exactly one .npz file in {str(root)!r}, found {len(candidates)}")
        root = candidates[0]
    with np.load(root) as archive:
        keys = set(archive.files)
        missing = [f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels") if f"{s}_{kind}" not in keys]
        if missing:
            raise KeyError(f"{str(root)!r} lacks the MedMNIST keys {missing}")
        arrays = {key: archive[key] for key in keys}
    rows = []
    for split in SPLITS:
        labels = arrays[f"{split}_labels"].reshape(len(arrays[f"{split}_labels"]), -1)
        if labels.shape[1] != 1:
            raise ValueError(f"{str(root)!r}: {split}_labels is multi-label ({labels.shape[1]} columns)")
        for index, label in enumerate(labels[:, 0]):
            source_id = f"{split}_{index:05d}"
            rows.append((source_id, source_id, str(int(label)), split, None, f"{split}_images/{index}"))

    def load(source: str) -> np.ndarray:
        key, index = source.split("/")
        return arrays[key][int(index)]

    return RawCollection(pd.DataFrame(rows, columns=RECORD_COLUMNS), load, "medmnist_npz", str(root))


def read_odir5k(root: Path, csv_name: str = "full_df.csv", image_dir: str | None = None) -> RawCollection:
    """The Kaggle ODIR-5K layout: ``full_df.csv`` (one row per image) and a folder of images.

    The class of an image is its per-image label (the ``labels`` column, e.g. ``['G']``); the patient is
    ``ID``. The image folder is ``image_dir`` when given, else the first of ODIR_IMAGE_DIRS that exists.
    """
    csv_path = root / csv_name
    if not csv_path.is_file():
        raise FileNotFoundError(f"ODIR-5K table {str(csv_path)!r} not found (option dataset.options.csv_name)")
    candidates = [image_dir] if image_dir else list(ODIR_IMAGE_DIRS)
    found = [root / name for name in candidates if (root / name).is_dir()]
    if not found:
        raise FileNotFoundError(f"No ODIR-5K image folder {candidates} under {str(root)!r} (dataset.options.image_dir)")
    images_path = found[0]
    table = pd.read_csv(csv_path)
    missing = [column for column in ODIR_REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise KeyError(f"{str(csv_path)!r} lacks the column(s) {missing}; found {list(table.columns)}")
    records = pd.DataFrame(
        {
            "source_id": table["filename"].astype(str).str.rsplit(".", n=1).str[0],
            "patient_id": table["ID"].astype(str),
            "class_code": [_single_label(value, csv_path, row) for row, value in enumerate(table["labels"])],
            "official_split": None,
            "eye": table["filename"].astype(str).str.extract(r"_(left|right)", expand=False),
            "source": [str(images_path / name) for name in table["filename"].astype(str)],
        }
    )
    return RawCollection(records, decode_image, "odir5k", str(root))


def _single_label(value: object, csv_path: Path, row: int) -> str:
    """``['G']`` → ``G``; anything else is an error naming the row."""
    try:
        parsed = ast.literal_eval(str(value))
    except (ValueError, SyntaxError):
        parsed = value
    if isinstance(parsed, list | tuple):
        if len(parsed) != 1:
            raise ValueError(f"{str(csv_path)!r} row {row}: column 'labels' must hold one label, got {value!r}")
        parsed = parsed[0]
    return str(parsed).strip()


def read_image_folder(root: Path) -> RawCollection:
    """One sub-folder per class, optionally under ``train/``, ``val/`` and ``test/`` folders."""
    split_dirs = [root / split for split in SPLITS if (root / split).is_dir()]
    layout = [(d.name, d) for d in split_dirs] if split_dirs else [(None, root)]
    rows = []
    for split, folder in layout:
        class_dirs = sorted(p for p in folder.iterdir() if p.is_dir())
        if not class_dirs:
            raise FileNotFoundError(f"{str(folder)!r} has no class sub-folders")
        for class_dir in class_dirs:
            for path in sorted(class_dir.rglob("*")):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    stem = f"{split + '_' if split else ''}{class_dir.name}_{path.stem}"
                    rows.append((stem, stem, class_dir.name, split, None, str(path)))
    if not rows:
        raise FileNotFoundError(f"No images ({sorted(IMAGE_SUFFIXES)}) under {str(root)!r}")
    return RawCollection(pd.DataFrame(rows, columns=RECORD_COLUMNS), decode_image, "image_folder", str(root))
