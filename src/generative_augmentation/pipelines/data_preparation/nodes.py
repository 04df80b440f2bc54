"""Nodes of the data_preparation pipeline."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from generative_augmentation.core.images import array_to_pil, channels_for, content_hash, to_array
from generative_augmentation.core.sources import RawCollection
from generative_augmentation.core.splits import find_leaks, split_counts, stratified_group_split

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "image_id", "patient_id", "label", "class_code", "class_name", "split",
    "image_key", "source", "eye", "content_hash", "original_height", "original_width",
]  # fmt: skip


def select_classes(raw: RawCollection, dataset: dict[str, Any]) -> pd.DataFrame:
    """Keep the records of the classes named in ``dataset.classes`` (all found classes when empty).

    The label of a class is its position in ``dataset.classes``; ``dataset.class_names`` maps codes to names.
    """
    records = raw.records.copy()
    records["class_code"] = records["class_code"].astype(str)
    available = sorted(records["class_code"].unique())
    classes = [str(code) for code in (dataset.get("classes") or available)]
    unknown = [code for code in classes if code not in available]
    if unknown:
        raise ValueError(f"Class(es) {unknown} in parameter dataset.classes are not in {raw.root!r}; found {available}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"Parameter dataset.classes repeats a class: {classes}")
    names = {str(k): str(v) for k, v in (dataset.get("class_names") or {}).items()}
    records = records[records["class_code"].isin(classes)].reset_index(drop=True)
    records["label"] = records["class_code"].map({code: i for i, code in enumerate(classes)}).astype(int)
    records["class_name"] = records["class_code"].map(lambda code: names.get(code, code))
    logger.info("Selected %d images of %d classes from %s", len(records), len(classes), raw.root)
    return records


def decode_images(
    raw: RawCollection, records: pd.DataFrame, image: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, np.ndarray], pd.DataFrame]:
    """Decode every image at the working resolution; undecodable images are skipped with a warning.

    Returns the records with content hashes, the images by ``image_id``, and a table of skipped images.
    """
    size, mode = int(image["size"]), str(image["mode"])
    channels_for(mode)
    arrays, kept, skipped = {}, [], []
    for row in tqdm(records.itertuples(index=False), total=len(records), desc="decode images", unit="img"):
        try:
            decoded = raw.load_image(row.source)
            original = np.asarray(decoded) if isinstance(decoded, Image.Image) else decoded
            arrays[row.source_id] = to_array(decoded, size, mode)
        except (OSError, ValueError, SyntaxError) as error:
            logger.warning("Skipping image %s (%s): it does not decode: %s", row.source_id, row.source, error)
            skipped.append(
                {"image_id": row.source_id, "source": row.source, "class_name": row.class_name, "error": str(error)}
            )
            continue
        kept.append(
            {**row._asdict(), "content_hash": content_hash(original),
             "original_height": original.shape[0], "original_width": original.shape[1]}
        )  # fmt: skip
    decoded_records = pd.DataFrame(kept).rename(columns={"source_id": "image_id"})
    skipped_table = pd.DataFrame(skipped, columns=["image_id", "source", "class_name", "error"])
    _check_no_empty_class(records, decoded_records)
    return decoded_records, arrays, skipped_table


def _check_no_empty_class(records: pd.DataFrame, decoded: pd.DataFrame) -> None:
    wanted = records.drop_duplicates("class_code").set_index("class_code")["class_name"]
    present = set(decoded["class_code"]) if len(decoded) else set()
    empty = [f"{code} ({name})" for code, name in wanted.items() if code not in present]
    if empty:
        raise ValueError(f"Class(es) {empty} have no decodable image after filtering; drop them from dataset.classes")


def assign_splits(records: pd.DataFrame, split: dict[str, Any], seed: int) -> pd.DataFrame:
    """The manifest: official splits where the dataset has them, else a patient-grouped stratified split."""
    manifest = records.copy()
    official = manifest["official_split"]
    if split.get("use_official", True) and official.notna().all():
        manifest["split"] = official
        logger.info("Using the dataset's official train/val/test split")
    else:
        manifest["split"] = stratified_group_split(
            manifest["label"].to_numpy(), manifest["patient_id"].to_numpy(), split["ratios"], seed
        )
        logger.info("Patient-grouped stratified split with ratios %s, seed %d", split["ratios"], seed)
    for name in ("train", "val", "test"):
        if not (manifest["split"] == name).any():
            raise ValueError(f"Split {name!r} is empty; check parameter split.ratios and the dataset size")
    manifest["image_key"] = manifest["split"] + "/" + manifest["class_name"] + "/" + manifest["image_id"]
    return manifest[MANIFEST_COLUMNS].sort_values(["split", "label", "image_id"]).reset_index(drop=True)


def working_images(manifest: pd.DataFrame, arrays: dict[str, np.ndarray]) -> dict[str, Image.Image]:
    """The working-resolution images as PNG partitions ``<split>/<class>/<image_id>``."""
    return {row.image_key: array_to_pil(arrays[row.image_id]) for row in manifest.itertuples(index=False)}


def audit_leakage(manifest: pd.DataFrame, skipped: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fail when a patient or an identical image sits in two splits; else pass the manifest on, with the
    counts per class per split (and undecodable images skipped) as the audit summary."""
    leaks = find_leaks(manifest)
    problems = [f"{len(v)} {k} value(s) in more than one split, e.g. {v[:5]}" for k, v in leaks.items() if v]
    if problems:
        raise ValueError("Leakage audit failed: " + "; ".join(problems))
    summary = split_counts(manifest).reset_index()
    skipped_counts = skipped.groupby("class_name").size() if len(skipped) else pd.Series(dtype=int)
    summary["skipped_undecodable"] = summary["class_name"].map(skipped_counts).fillna(0).astype(int)
    summary.loc[summary["class_name"] == "total", "skipped_undecodable"] = len(skipped)
    patients = manifest.groupby("split")["patient_id"].nunique()
    logger.info("Leakage audit passed: patients per split %s; %d undecodable skipped", patients.to_dict(), len(skipped))
    return manifest, summary
