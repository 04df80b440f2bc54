"""Dataset adapters: read a labelled image collection as the user has it into one common table.

Each adapter returns a :class:`RawCollection`: a table with one row per image (``source_id``, ``patient_id``,
``class_code``, ``official_split``, ``eye``, ``source``) and a loader that decodes one image on demand.
Adapters check the layout when they read it, before any image is decoded, and say which file, folder, key, row or
column is wrong: a class that cannot be a folder name, a file outside the dataset, an image listed twice with two
labels, labels that do not match the images.
"""

from __future__ import annotations

import ast
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from generative_augmentation.core.images import decode_image

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")
# Folder names read as the official splits of a class-per-folder tree (compared in lower case).
SPLIT_FOLDER_NAMES = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}
RECORD_COLUMNS = ["source_id", "patient_id", "class_code", "official_split", "eye", "source"]
ODIR_REQUIRED_COLUMNS = ("ID", "filename", "labels")
ODIR_IMAGE_DIRS = ("preprocessed_images", "images")
UNSAFE_NAME_CHARACTERS = '/\\<>:"|?*'
MEDMNIST_CHANNELS = (1, 3, 4)


@dataclass
class RawCollection:
    """Image records plus a function that decodes the image of one record (by ``source``)."""

    records: pd.DataFrame
    load_image: Callable[[str], object]
    adapter: str
    root: str


def read_collection(adapter: str, root: str | Path, **options) -> RawCollection:
    """Read the collection at ``root`` with the named adapter."""
    if adapter not in READERS:
        raise ValueError(
            f"Unknown dataset adapter {adapter!r} (parameter dataset.adapter); use one of {sorted(READERS)}"
        )
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"Dataset root {str(root)!r} (parameter dataset.root) does not exist")
    collection = READERS[adapter](root, **options)
    _check_unique_ids(collection.records)
    return collection


def folder_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be one folder or file name on every common system, or None; reads after "it".

    Class names become folders of the working images and of the synthetic pool, and parts of figure file names.
    """
    if not name.strip():
        return "is empty"
    if name in {".", ".."}:
        return f"is {name!r}"
    bad = sorted({character for character in name if character in UNSAFE_NAME_CHARACTERS or ord(character) < 32})
    if bad:
        return "contains " + ", ".join(repr(character) for character in bad)
    return None


def _check_unique_ids(records: pd.DataFrame) -> None:
    """Two images must not get one ``source_id`` (it names the image in the manifest and on disk)."""
    repeated = records[records["source_id"].duplicated(keep=False)]
    if len(repeated):
        source_id, rows = next(iter(repeated.groupby("source_id", sort=False)))
        first, second = rows["source"].iloc[:2]
        raise ValueError(
            f"Two images would get the same image id {source_id!r}: {first!r} and {second!r} "
            f"({repeated['source_id'].nunique()} such id(s)); rename one of each pair"
        )


# --- MedMNIST ------------------------------------------------------------------------------------------------------


def read_medmnist_npz(root: Path) -> RawCollection:
    """A MedMNIST ``.npz`` with ``{train,val,test}_{images,labels}``; official splits kept.

    MedMNIST does not publish patient identifiers, so each image is its own patient.

    Images must be shaped (N, H, W) or (N, H, W, C) with C = 1, 3 or 4 (channels last). ``uint8`` is read as is;
    other integer types are accepted when every value lies in 0-255. Float images are converted to ``uint8``: an
    array whose values all lie in [0, 1] is taken as [0, 1] and scaled by 255, any other float array as [0, 255]
    and rounded; the choice is made per key and logged. Values outside [0, 255], NaN and infinity are refused.
    Labels must be whole, non-negative class indices (a float 2.0 is read as class 2), one per image.
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
        arrays = {key: archive[key] for key in keys if key.endswith(("_images", "_labels"))}
    images = {key: _medmnist_images(arrays[key], key, root) for key in (f"{split}_images" for split in SPLITS)}
    rows = []
    for split in SPLITS:
        count = len(images[f"{split}_images"])
        labels = _medmnist_labels(arrays[f"{split}_labels"], f"{split}_labels", count, f"{split}_images", root)
        for index, label in enumerate(labels):
            source_id = f"{split}_{index:05d}"
            rows.append((source_id, source_id, str(label), split, None, f"{split}_images/{index}"))

    def load(source: str) -> np.ndarray:
        key, index = source.split("/")
        return images[key][int(index)]

    return RawCollection(pd.DataFrame(rows, columns=RECORD_COLUMNS), load, "medmnist_npz", str(root))


def _medmnist_images(array: np.ndarray, key: str, path: Path) -> np.ndarray:
    """The images of one key as ``uint8`` (N, H, W[, C]); anything else is an error naming the key."""
    where = f"{str(path)!r}: {key}"
    shape_ok = array.ndim == 3 or (array.ndim == 4 and array.shape[-1] in MEDMNIST_CHANNELS)
    if not shape_ok or (array.ndim >= 3 and min(array.shape[1:3]) < 1):
        raise ValueError(
            f"{where} has shape {tuple(array.shape)}; expected (N, H, W) or (N, H, W, C) with C = 1, 3 or 4 "
            "(channels last)"
        )
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind not in "uif":
        raise ValueError(f"{where} has dtype {array.dtype}; expected uint8 (0-255) or float ([0, 1] or [0, 255])")
    if array.size == 0:
        return array.astype(np.uint8)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"{where} holds NaN or infinite values")
    low, high = array.min().item(), array.max().item()
    if array.dtype.kind in "ui":
        if low < 0 or high > 255:
            raise ValueError(
                f"{where} is {array.dtype} with values in [{low}, {high}]; expected 8-bit values 0-255: "
                "rescale the images to uint8 before saving the .npz"
            )
        return array.astype(np.uint8)
    if low < 0 or high > 255:
        raise ValueError(
            f"{where} is {array.dtype} with values in [{low:g}, {high:g}]; expected [0, 1] or [0, 255]: "
            "rescale the images before saving the .npz"
        )
    if high <= 1.0:
        logger.info("%s is %s in [0, 1]: scaled by 255 to uint8", key, array.dtype)
        return np.rint(array * 255.0).astype(np.uint8)
    logger.info("%s is %s in [0, 255]: rounded to uint8", key, array.dtype)
    return np.rint(array).astype(np.uint8)


def _medmnist_labels(array: np.ndarray, key: str, count: int, images_key: str, path: Path) -> list[int]:
    """One whole, non-negative class index per image, or an error naming the key."""
    where = f"{str(path)!r}: {key}"
    if array.ndim == 0 or array.dtype.kind not in "buif":
        raise ValueError(f"{where} must be an array of class indices, got dtype {array.dtype} shape {array.shape}")
    labels = array.reshape(len(array), -1)
    if labels.shape[1] != 1:
        raise ValueError(f"{where} is multi-label ({labels.shape[1]} columns)")
    labels = labels[:, 0]
    if len(labels) != count:
        raise ValueError(f"{where} has {len(labels)} labels for {count} {images_key}; give one label per image")
    if labels.dtype.kind == "f":
        wrong = np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)))
        if len(wrong):
            index = int(wrong[0])
            raise ValueError(
                f"{where} holds a non-integer label, {labels[index]:g} at index {index} ({len(wrong)} in all); "
                "labels must be class indices 0, 1, 2, ..."
            )
    negative = np.flatnonzero(labels < 0)
    if len(negative):
        index = int(negative[0])
        raise ValueError(
            f"{where} holds a negative label, {labels[index]:g} at index {index} ({len(negative)} in all); "
            "labels must be class indices 0, 1, 2, ..."
        )
    return [int(label) for label in labels]


# --- ODIR-5K -------------------------------------------------------------------------------------------------------


def read_odir5k(root: Path, csv_name: str = "full_df.csv", image_dir: str | None = None) -> RawCollection:
    """The Kaggle ODIR-5K layout: ``full_df.csv`` (one row per image) and a folder of images.

    The class of an image is its per-image label (the ``labels`` column, e.g. ``['G']``); the patient is
    ``ID``. The image folder is ``image_dir`` when given, else the first of ODIR_IMAGE_DIRS that exists.

    Refused, naming the row: an empty ``ID``, ``filename`` or ``labels``; a file name that is absolute or leads
    outside the image folder (``..``, a symbolic link out of it); a class that cannot be a folder name; one image
    listed twice with different labels or patients. An image listed twice with the same label and patient is kept
    once, with a warning. Row numbers count the table's data rows from 0.
    """
    csv_path = root / csv_name
    if not csv_path.is_file():
        raise FileNotFoundError(f"ODIR-5K table {str(csv_path)!r} not found (option dataset.options.csv_name)")
    candidates = [image_dir] if image_dir else list(ODIR_IMAGE_DIRS)
    found = [root / name for name in candidates if (root / name).is_dir()]
    if not found:
        raise FileNotFoundError(f"No ODIR-5K image folder {candidates} under {str(root)!r} (dataset.options.image_dir)")
    images_path = found[0]
    table = pd.read_csv(csv_path, dtype={"ID": str, "filename": str}, keep_default_na=False, na_values=[""])
    missing = [column for column in ODIR_REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise KeyError(f"{str(csv_path)!r} lacks the column(s) {missing}; found {list(table.columns)}")
    for column in ODIR_REQUIRED_COLUMNS:
        empty = table.index[table[column].isna() | (table[column].astype(str).str.strip() == "")]
        if len(empty):
            raise ValueError(f"{str(csv_path)!r} row {empty[0]}: column {column!r} is empty ({len(empty)} row(s))")
    names = table["filename"].astype(str).str.strip()
    records = pd.DataFrame(
        {
            "source_id": [_odir_image_id(name) for name in names],
            "patient_id": table["ID"].astype(str).str.strip(),
            "class_code": [_single_label(value, csv_path, row) for row, value in enumerate(table["labels"])],
            "official_split": None,
            "eye": names.str.extract(r"_(left|right)", expand=False),
            "source": [_inside(images_path, name, csv_path, row) for row, name in enumerate(names)],
            "filename": names,
        }
    )
    records = _drop_repeated_rows(records, csv_path)
    return RawCollection(records[RECORD_COLUMNS], decode_image, "odir5k", str(root))


def _odir_image_id(name: str) -> str:
    """``0_left.jpg`` → ``0_left``; a file in a sub-folder, ``sub/0_left.jpg`` → ``sub__0_left``."""
    parts = Path(os.path.normpath(name)).with_suffix("").parts
    return "__".join(parts)


def _inside(folder: Path, name: str, csv_path: Path, row: int) -> str:
    """The path of file ``name`` in ``folder``; an error naming the row when it is absolute or leads outside."""
    where = f"{str(csv_path)!r} row {row}: column 'filename' value {name!r}"
    if Path(name).is_absolute():
        raise ValueError(f"{where} is an absolute path; give file names relative to the image folder {str(folder)!r}")
    path = folder / name
    if not Path(os.path.normpath(path)).is_relative_to(Path(os.path.normpath(folder))):
        raise ValueError(f"{where} points outside the image folder {str(folder)!r}")
    resolved = path.resolve()
    if not resolved.is_relative_to(folder.resolve()):
        raise ValueError(f"{where} is a symbolic link to {str(resolved)!r}, outside the image folder {str(folder)!r}")
    return str(path)


def _drop_repeated_rows(records: pd.DataFrame, csv_path: Path) -> pd.DataFrame:
    """One row per image file: conflicting repeats are an error naming the file, identical ones are dropped."""
    key = records["source"].map(lambda source: str(Path(source).resolve()))
    repeated = key.duplicated(keep=False)
    if not repeated.any():
        return records
    kept = []
    for _, rows in records[repeated].groupby(key[repeated], sort=False):
        for column, what in (("class_code", "labels"), ("patient_id", "patients (ID)")):
            if rows[column].nunique() > 1:
                listed = " and ".join(f"{value!r} (row {row})" for row, value in rows[column].items())
                names = sorted(set(rows["filename"]))
                raise ValueError(
                    f"{str(csv_path)!r} lists image {' = '.join(map(repr, names))} "
                    f"{'twice' if len(rows) == 2 else f'{len(rows)} times'} with different {what}: {listed}; "
                    "an image has one class and one patient: remove the wrong row(s)"
                )
        kept.append(f"{rows['filename'].iloc[0]!r} (rows {', '.join(map(str, rows.index))})")
    logger.warning(
        "%r lists %d image(s) more than once with the same label; kept the first row of each: %s",
        str(csv_path),
        len(kept),
        "; ".join(kept),
    )
    return records[~key.duplicated(keep="first")].reset_index(drop=True)


def _single_label(value: object, csv_path: Path, row: int) -> str:
    """``['G']`` → ``G``; anything else (several labels, a class that cannot be a folder name) is an error naming
    the row."""
    try:
        parsed = ast.literal_eval(str(value))
    except (ValueError, SyntaxError):
        parsed = value
    if isinstance(parsed, list | tuple):
        if len(parsed) != 1:
            raise ValueError(f"{str(csv_path)!r} row {row}: column 'labels' must hold one label, got {value!r}")
        parsed = parsed[0]
    code = str(parsed).strip()
    problem = folder_name_problem(code)
    if problem:
        raise ValueError(
            f"{str(csv_path)!r} row {row}: class {code!r} in column 'labels' cannot be a folder name: it {problem}"
        )
    return code


# --- class-per-folder tree -----------------------------------------------------------------------------------------


def read_image_folder(root: Path) -> RawCollection:
    """One sub-folder per class, optionally under split folders ``train/``, ``val/`` and ``test/``.

    Split folders are recognised whatever their case, under the names in SPLIT_FOLDER_NAMES (``Training``,
    ``valid``, ``Testing`` ...); two folders for one split are an error. Hidden folders and files (names starting
    with ``.``, e.g. ``.ipynb_checkpoints``) are ignored. A class folder whose name cannot be a folder name on every
    common system is refused. An image's id is ``[<split>_]<class>_<path in the class folder, '/' as '__'>``,
    without its suffix; two files that would share an id (``1.png`` and ``1.jpg``) are refused.
    """
    layout = _split_folders(root)
    rows, hidden = [], 0
    for split, folder in layout:
        class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise FileNotFoundError(f"{str(folder)!r} has no class sub-folders")
        for class_dir in class_dirs:
            problem = folder_name_problem(class_dir.name)
            if problem:
                raise ValueError(
                    f"Class folder {str(class_dir)!r} cannot be a folder name: it {problem}; rename the folder "
                    "(class names name the folders of the outputs)"
                )
            for path in sorted(class_dir.rglob("*")):
                relative = path.relative_to(class_dir)
                if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                    continue
                if any(part.startswith(".") for part in relative.parts):
                    hidden += 1
                    continue
                stem = "__".join(relative.with_suffix("").parts)
                source_id = f"{split + '_' if split else ''}{class_dir.name}_{stem}"
                rows.append((source_id, source_id, class_dir.name, split, None, str(path)))
    if hidden:
        logger.info("Ignored %d hidden image file(s) (names starting with '.') under %s", hidden, root)
    if not rows:
        raise FileNotFoundError(f"No images ({sorted(IMAGE_SUFFIXES)}) under {str(root)!r}")
    return RawCollection(pd.DataFrame(rows, columns=RECORD_COLUMNS), decode_image, "image_folder", str(root))


def _split_folders(root: Path) -> list[tuple[str | None, Path]]:
    """``(split, folder)`` pairs of the split folders under ``root``, or ``[(None, root)]`` when there are none."""
    aliases = {alias: split for split, names in SPLIT_FOLDER_NAMES.items() for alias in names}
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    found: dict[str, Path] = {}
    for folder in folders:
        split = aliases.get(folder.name.lower())
        if split is None:
            continue
        if split in found:
            raise ValueError(
                f"Folders {found[split].name!r} and {folder.name!r} under {str(root)!r} both look like the {split} "
                "split; keep one"
            )
        found[split] = folder
        if folder.name != split:
            logger.info("Reading folder %r as the %s split", folder.name, split)
    if not found:
        return [(None, root)]
    others = [folder.name for folder in folders if folder not in found.values()]
    if others:
        logger.warning("Ignored folder(s) %s under %s: not split folders %s", others, root, list(SPLIT_FOLDER_NAMES))
    return [(split, found[split]) for split in SPLITS if split in found]


#: The dataset adapters by name (``dataset.adapter``): the one list of them.
READERS: dict[str, Callable[..., RawCollection]] = {
    "medmnist_npz": read_medmnist_npz,
    "odir5k": read_odir5k,
    "image_folder": read_image_folder,
}
