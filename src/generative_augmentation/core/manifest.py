"""Facts about the manifest of real images, derived in one place.

The manifest has one row per real image: ``image_id``, ``patient_id``, ``label`` (0..K-1), ``class_code``,
``class_name``, ``split`` (train / val / test), ``image_key`` (its key in the folder of working images), and the
audit columns ``source``, ``eye``, ``content_hash``, ``original_height``, ``original_width``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from generative_augmentation.core.images import ImageSpec, stack_images

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = [
    "image_id",
    "patient_id",
    "label",
    "class_code",
    "class_name",
    "split",
    "image_key",
    "source",
    "eye",
    "content_hash",
    "original_height",
    "original_width",
]


def class_names(manifest: pd.DataFrame) -> list[str]:
    """Class names in label order."""
    return manifest.drop_duplicates("label").sort_values("label")["class_name"].astype(str).tolist()


def split_rows(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    """The rows of one split, in manifest order (an empty split is an error naming it)."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; use one of {list(SPLITS)}")
    rows = manifest[manifest["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"The manifest has no {split} images: run the data_preparation pipeline first")
    return rows


def kept_synthetic(labeled_synthetic: pd.DataFrame) -> pd.DataFrame:
    """The synthetic images the labeler and the guard kept (``verdict == "keep"``)."""
    return labeled_synthetic[labeled_synthetic["verdict"] == "keep"]


def train_counts(manifest: pd.DataFrame) -> pd.Series:
    """Real train images per class name, in label order (0 for a class without train images)."""
    counts = manifest[manifest["split"] == "train"].groupby("class_name").size()
    return counts.reindex(class_names(manifest), fill_value=0).astype(int)


def minority_classes(counts: pd.Series) -> list[str]:
    """Classes whose train count is below the largest class's; every class when all are equal (balanced data)."""
    below = [str(name) for name, count in counts.items() if count < counts.max()]
    return below or [str(name) for name in counts.index]


def resolve_classes(requested: Sequence[str] | None, counts: pd.Series, parameter: str) -> list[str]:
    """``requested`` class names in label order, or the minority classes when ``requested`` is null.

    An unknown name or an empty list is an error naming ``parameter``.
    """
    if requested is None:
        return minority_classes(counts)
    unknown = [name for name in requested if name not in counts.index]
    if unknown:
        raise ValueError(
            f"Parameter {parameter} names {unknown}, which the data does not have; known: {list(counts.index)}"
        )
    if not requested:
        raise ValueError(
            f"Parameter {parameter} is an empty list: name at least one class, or null for the minority classes"
        )
    return [str(name) for name in counts.index if name in requested]


def split_arrays(
    manifest: pd.DataFrame, images: Mapping[str, Any], split: str, spec: ImageSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, C) and labels (N,) of one real split."""
    rows = split_rows(manifest, split)
    return stack_images(images, rows["image_key"], spec), rows["label"].to_numpy(dtype=np.int64)
