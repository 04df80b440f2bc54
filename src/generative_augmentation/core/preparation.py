"""From a user's image collection to the manifest of real images: classes, decoding, splits, leakage audit."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from generative_augmentation.core.config import Config, ConfigError
from generative_augmentation.core.images import ImageSpec, array_to_pil, content_hash, to_array
from generative_augmentation.core.manifest import MANIFEST_COLUMNS, SPLITS
from generative_augmentation.core.sources import RawCollection
from generative_augmentation.core.splits import find_leaks, ratio_problem, split_counts, stratified_group_split

logger = logging.getLogger(__name__)

SKIPPED_COLUMNS = ["image_id", "source", "class_name", "error"]


@dataclass(frozen=True)
class DatasetConfig(Config):
    """Where the images come from (adapter and root, usually set in the environment's globals) and which classes
    to keep, in label order (empty: every class found), with readable names for their codes."""

    where = "dataset"
    adapter: Literal["medmnist_npz", "odir5k", "image_folder"]
    root: str
    classes: list[str | int] = field(default_factory=list)
    class_names: dict[str, str] = field(default_factory=dict)

    def checks(self):
        yield "root", bool(self.root), "is empty: give the dataset's folder or file"
        codes = [str(code) for code in self.classes]
        yield "classes", len(set(codes)) == len(codes), f"repeats a class: {codes}"


@dataclass(frozen=True)
class SplitConfig(Config):
    """The dataset's own train/val/test split when it has one (and ``use_official``), else a split grouped by
    patient and stratified by class with these ``ratios``."""

    where = "split"
    use_official: bool = True
    ratios: dict[str, float] = field(default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15})

    def checks(self):
        problem = ratio_problem(self.ratios)
        yield "ratios", problem is None, problem or ""


def select_classes(raw: RawCollection, dataset: DatasetConfig) -> pd.DataFrame:
    """The records of the classes ``dataset.classes`` names (all found when empty), with ``label`` (position in
    that list) and ``class_name``."""
    records = raw.records.copy()
    records["class_code"] = records["class_code"].astype(str)
    available = sorted(records["class_code"].unique())
    classes = [str(code) for code in dataset.classes] or available
    unknown = [code for code in classes if code not in available]
    if unknown:
        raise ConfigError(
            f"Class(es) {unknown} in parameter dataset.classes are not in {raw.root!r}; found {available}"
        )
    records = records[records["class_code"].isin(classes)].reset_index(drop=True)
    records["label"] = records["class_code"].map({code: index for index, code in enumerate(classes)}).astype(int)
    records["class_name"] = records["class_code"].map(lambda code: dataset.class_names.get(code, code))
    logger.info("Selected %d images of %d classes from %s", len(records), len(classes), raw.root)
    return records


def decode_all(
    raw: RawCollection, records: pd.DataFrame, image: ImageSpec, progress: bool = True
) -> tuple[pd.DataFrame, dict[str, np.ndarray], pd.DataFrame]:
    """Decode every image at the working resolution; an image that does not decode is skipped with a warning.

    Returns the records with content hashes and original sizes, the arrays by ``image_id``, and the skipped images.
    """
    arrays, kept, skipped = {}, [], []
    for row in tqdm(records.itertuples(index=False), total=len(records), desc="decode images", disable=not progress):
        try:
            decoded = raw.load_image(row.source)
            original = np.asarray(decoded) if isinstance(decoded, Image.Image) else decoded
            arrays[row.source_id] = to_array(decoded, image)
        except (OSError, ValueError, SyntaxError) as error:
            logger.warning("Skipping image %s (%s): it does not decode: %s", row.source_id, row.source, error)
            skipped.append(
                {"image_id": row.source_id, "source": row.source, "class_name": row.class_name, "error": str(error)}
            )
            continue
        kept.append({**row._asdict(), "content_hash": content_hash(original),
                     "original_height": original.shape[0], "original_width": original.shape[1]})  # fmt: skip
    decoded_records = pd.DataFrame(kept).rename(columns={"source_id": "image_id"})
    wanted = records.drop_duplicates("class_code").set_index("class_code")["class_name"]
    present = set(decoded_records["class_code"]) if len(decoded_records) else set()
    empty = [f"{code} ({name})" for code, name in wanted.items() if code not in present]
    if empty:
        raise ValueError(f"Class(es) {empty} have no decodable image after filtering; drop them from dataset.classes")
    return decoded_records, arrays, pd.DataFrame(skipped, columns=SKIPPED_COLUMNS)


def assign_splits(records: pd.DataFrame, split: SplitConfig, seed: int) -> pd.DataFrame:
    """The manifest: the official split where the dataset has one, else a patient-grouped stratified split."""
    manifest = records.copy()
    official = manifest["official_split"]
    if split.use_official and official.notna().all():
        manifest["split"] = official
        logger.info("Using the dataset's official train/val/test split")
        cause = "the dataset's official split has none"
    else:
        manifest["split"] = stratified_group_split(
            manifest["label"].to_numpy(), manifest["patient_id"].to_numpy(), split.ratios, seed
        )
        logger.info("Patient-grouped stratified split with ratios %s, seed %d", split.ratios, seed)
        cause = "check parameter split.ratios and the dataset size"
    for name in SPLITS:
        if not (manifest["split"] == name).any():
            raise ValueError(f"Split {name!r} is empty: {cause}")
    manifest["image_key"] = manifest["split"] + "/" + manifest["class_name"] + "/" + manifest["image_id"]
    return manifest[MANIFEST_COLUMNS].sort_values(["split", "label", "image_id"]).reset_index(drop=True)


def audit(manifest: pd.DataFrame, skipped: pd.DataFrame) -> pd.DataFrame:
    """Fail when a patient or an identical image sits in two splits; else the counts per class and split (and
    the undecodable images skipped) as the audit summary."""
    leaks = find_leaks(manifest)
    problems = [
        f"{len(values)} {column} value(s) in more than one split, e.g. {values[:5]}"
        for column, values in leaks.items()
        if values
    ]
    if problems:
        raise ValueError("Leakage audit failed: " + "; ".join(problems))
    summary = split_counts(manifest).reset_index()
    skipped_counts = skipped.groupby("class_name").size() if len(skipped) else pd.Series(dtype=int)
    summary["skipped_undecodable"] = summary["class_name"].map(skipped_counts).fillna(0).astype(int)
    summary.loc[summary["class_name"] == "total", "skipped_undecodable"] = len(skipped)
    patients = manifest.groupby("split")["patient_id"].nunique()
    logger.info("Leakage audit passed: patients per split %s; %d undecodable skipped", patients.to_dict(), len(skipped))
    return summary


def working_images(manifest: pd.DataFrame, arrays: dict[str, np.ndarray]) -> dict[str, Image.Image]:
    """The working-resolution images as PNG partitions ``<split>/<class>/<image_id>``."""
    return {row.image_key: array_to_pil(arrays[row.image_id]) for row in manifest.itertuples(index=False)}
