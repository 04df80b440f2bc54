"""Nodes of the data_preparation pipeline: parse the parameters, call :mod:`core.preparation`, return."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from generative_augmentation.core import preparation
from generative_augmentation.core.images import ImageSpec
from generative_augmentation.core.sources import RawCollection


def select_classes(raw: RawCollection, dataset: dict[str, Any]) -> pd.DataFrame:
    """The records of the classes named in ``dataset.classes``, labelled in that order."""
    return preparation.select_classes(raw, preparation.DatasetConfig.parse(dataset))


def decode_images(
    raw: RawCollection, records: pd.DataFrame, image: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, np.ndarray], pd.DataFrame]:
    """Every image at the working resolution; undecodable images skipped and listed; an image under two classes
    refused."""
    return preparation.decode_all(raw, records, ImageSpec.parse(image))


def assign_splits(records: pd.DataFrame, split: dict[str, Any], seed: int) -> pd.DataFrame:
    """The official split (val carved from train when it has none), or a patient-grouped stratified one."""
    return preparation.assign_splits(records, preparation.SplitConfig.parse(split), seed)


def audit_leakage(
    candidate: pd.DataFrame, undecodable: pd.DataFrame, split: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The manifest, once no patient and no identical image crosses splits (cross-split copies dropped when
    ``split.cross_split_duplicates`` says so); the audit summary; and every image left out of the manifest."""
    return preparation.audit(candidate, undecodable, preparation.SplitConfig.parse(split))


def write_working_images(manifest: pd.DataFrame, arrays: dict[str, np.ndarray]) -> dict[str, Image.Image]:
    """The working-resolution images as PNG partitions ``<split>/<class>/<image_id>``."""
    return preparation.working_images(manifest, arrays)
