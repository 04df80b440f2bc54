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
from generative_augmentation.core.sources import READERS, RawCollection, folder_name_problem
from generative_augmentation.core.splits import (
    carve_group_split,
    linked_groups,
    ratio_problem,
    split_counts,
    split_order,
    stratified_group_split,
)

logger = logging.getLogger(__name__)

# The images left out of the manifest: undecodable ones, and cross-split copies dropped by the audit.
SKIPPED_COLUMNS = ["image_id", "source", "class_name", "split", "reason", "detail"]


@dataclass(frozen=True)
class DatasetConfig(Config):
    """Where the images come from (adapter and root, usually set in the environment's globals) and which classes
    to keep, in label order (empty: every class found), with readable names for their codes. A class name names
    folders of the outputs, so it must be a valid folder name."""

    where = "dataset"
    adapter: str  # one of core.sources.READERS
    root: str
    classes: list[str | int] = field(default_factory=list)
    class_names: dict[str, str] = field(default_factory=dict)

    def class_name(self, code: str | int) -> str:
        """The name of class ``code``: its ``class_names`` entry, else the code itself."""
        return self.class_names.get(str(code), str(code))

    def checks(self):
        yield "adapter", self.adapter in READERS, f"must be one of {sorted(READERS)}, got {self.adapter!r}"
        yield "root", bool(self.root), "is empty: give the dataset's folder or file"
        codes = [str(code) for code in self.classes]
        yield "classes", len(set(codes)) == len(codes), f"repeats a class: {codes}"
        bad = [(code, name, folder_name_problem(name)) for code, name in self.class_names.items()]
        bad = [(code, name, problem) for code, name, problem in bad if problem]
        yield (
            "class_names",
            not bad,
            "; ".join(
                f"maps {code!r} to {name!r}, which cannot be a folder name: it {problem}" for code, name, problem in bad
            ),
        )


@dataclass(frozen=True)
class SplitConfig(Config):
    """The dataset's own train/val/test split when it has one (and ``use_official``), else a split grouped by
    patient and stratified by class with these ``ratios``.

    ``val_from_train``: when the official split has no val images (a class-per-folder tree with only ``train/`` and
    ``test/``), this fraction of the official train images becomes val, grouped by patient and stratified by class;
    0 turns it off (an empty val split is then an error).

    ``cross_split_duplicates``: what the leakage audit does with identical images (same decoded pixels) in two
    splits: ``fail`` (the default) stops the run naming the files; ``drop_train_copies`` keeps the copy in the most
    held-out split (test, then val) and drops the others from the manifest, listing them in ``skipped_images`` and
    counting them in the audit. A patient in two splits always fails.
    """

    where = "split"
    use_official: bool = True
    ratios: dict[str, float] = field(default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15})
    val_from_train: float = 0.15
    cross_split_duplicates: Literal["fail", "drop_train_copies"] = "fail"

    def checks(self):
        problem = ratio_problem(self.ratios)
        yield "ratios", problem is None, problem or ""
        yield from self.within("val_from_train", 0, 1, open_high=True)


def select_classes(raw: RawCollection, dataset: DatasetConfig) -> pd.DataFrame:
    """The records of the classes ``dataset.classes`` names (all found when empty), with ``label`` (position in
    that list) and ``class_name``; classes not named are ignored (and counted in the log)."""
    records = raw.records.copy()
    records["class_code"] = records["class_code"].astype(str)
    available = sorted(records["class_code"].unique())
    classes = [str(code) for code in dataset.classes] or available
    unknown = [code for code in classes if code not in available]
    if unknown:
        raise ConfigError(
            f"Class(es) {unknown} in parameter dataset.classes are not in {raw.root!r}; found {available}"
        )
    names = {code: dataset.class_name(code) for code in classes}
    seen: dict[str, str] = {}
    for code, name in names.items():
        if name in seen:
            raise ConfigError(
                f"Parameter dataset.class_names gives classes {seen[name]!r} and {code!r} the same name {name!r}; "
                "give each class its own name"
            )
        seen[name] = code
    ignored = records.loc[~records["class_code"].isin(classes), "class_code"]
    if len(ignored):
        logger.info(
            "Ignored %d image(s) of class(es) %s, not in dataset.classes", len(ignored), sorted(ignored.unique())
        )
    records = records[records["class_code"].isin(classes)].reset_index(drop=True)
    records["label"] = records["class_code"].map({code: index for index, code in enumerate(classes)}).astype(int)
    records["class_name"] = records["class_code"].map(names)
    logger.info("Selected %d images of %d classes from %s", len(records), len(classes), raw.root)
    return records


def decode_all(
    raw: RawCollection, records: pd.DataFrame, image: ImageSpec, progress: bool = True
) -> tuple[pd.DataFrame, dict[str, np.ndarray], pd.DataFrame]:
    """Decode every image at the working resolution; an image that does not decode is skipped with a warning.

    Returns the records with content hashes and original sizes, the arrays by ``image_id``, and the skipped images
    (SKIPPED_COLUMNS, reason ``undecodable``). Identical images under two classes are an error naming the files.
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
                {
                    "image_id": row.source_id,
                    "source": row.source,
                    "class_name": row.class_name,
                    "split": row.official_split,
                    "reason": "undecodable",
                    "detail": str(error),
                }
            )
            continue
        kept.append(
            {
                **row._asdict(),
                "content_hash": content_hash(original),
                "original_height": original.shape[0],
                "original_width": original.shape[1],
            }
        )
    decoded_records = pd.DataFrame(kept).rename(columns={"source_id": "image_id"})
    wanted = records.drop_duplicates("class_code").set_index("class_code")["class_name"]
    present = set(decoded_records["class_code"]) if len(decoded_records) else set()
    empty = [f"{code} ({name})" for code, name in wanted.items() if code not in present]
    if empty:
        raise ValueError(f"Class(es) {empty} have no decodable image after filtering; drop them from dataset.classes")
    _refuse_label_conflicts(decoded_records)
    return decoded_records, arrays, pd.DataFrame(skipped, columns=SKIPPED_COLUMNS)


def _refuse_label_conflicts(records: pd.DataFrame) -> None:
    """One image (identical decoded pixels) under two classes has two labels: an error naming the files."""
    classes_per_image = records.groupby("content_hash")["class_code"].nunique()
    conflicting = classes_per_image.index[classes_per_image > 1]
    if not len(conflicting):
        return
    lines = []
    for digest in conflicting:
        rows = records[records["content_hash"] == digest].drop_duplicates("class_code")
        lines.append(" = ".join(f"{row.source!r} ({row.class_name})" for row in rows.itertuples(index=False)))
    raise ValueError(
        f"{len(lines)} image(s) sit under two classes (identical pixels, different labels); an image has one "
        "class: remove the wrong copy of each:\n  " + "\n  ".join(lines)
    )


def assign_splits(records: pd.DataFrame, split: SplitConfig, seed: int) -> pd.DataFrame:
    """The manifest: the official split where the dataset has one (with val carved from train when it has none),
    else a patient-grouped stratified split. Identical images (content hash) are kept in one split with their
    patients, so a split made here never leaks them."""
    manifest = records.copy()
    groups = linked_groups(manifest["patient_id"].to_numpy(), manifest["content_hash"].to_numpy())
    joined = len(set(groups)) < manifest["patient_id"].nunique()
    if joined:
        logger.info(
            "Identical images link %d patients into fewer split groups (%d): each group stays in one split",
            manifest["patient_id"].nunique(),
            len(set(groups)),
        )
    official = manifest["official_split"]
    labels = manifest["label"].to_numpy()
    if split.use_official and official.notna().all():
        manifest["split"] = official
        logger.info("Using the dataset's official train/val/test split")
        causes = {
            name: f"the dataset's official split has no {name} images; add them, or set split.use_official: false "
            "to split every image by split.ratios"
            for name in SPLITS
        }
        if not (official == "val").any():
            causes["val"] = _carve_val(manifest, labels, groups, split, seed)
    else:
        manifest["split"] = stratified_group_split(labels, groups, split.ratios, seed)
        logger.info("Patient-grouped stratified split with ratios %s, seed %d", split.ratios, seed)
        patients = manifest["patient_id"].nunique()
        causes = {
            name: f"split.ratios {split.ratios} gave it no image of the {len(manifest)} images ({patients} patients); "
            "raise its ratio, or add images"
            for name in SPLITS
        }
    for name in SPLITS:
        if not (manifest["split"] == name).any():
            raise ValueError(f"Split {name!r} is empty: {causes[name]}")
    manifest["image_key"] = manifest["split"] + "/" + manifest["class_name"] + "/" + manifest["image_id"]
    return manifest[MANIFEST_COLUMNS].sort_values(["split", "label", "image_id"]).reset_index(drop=True)


def _carve_val(manifest: pd.DataFrame, labels: np.ndarray, groups: np.ndarray, split: SplitConfig, seed: int) -> str:
    """Move ``split.val_from_train`` of the official train images to val (in place); returns what to say when val
    is still empty."""
    if split.val_from_train == 0:
        return (
            "the dataset's official split has no val images and split.val_from_train is 0; set "
            "split.val_from_train (e.g. 0.15) to carve val from train, or split.use_official: false"
        )
    train = (manifest["split"] == "train").to_numpy()
    manifest.loc[train, "split"] = carve_group_split(labels[train], groups[train], split.val_from_train, seed)
    val = (manifest["split"] == "val").to_numpy()
    patients = manifest.loc[train, "patient_id"]
    logger.info(
        "The official split has no val images: moved %d of %d train images (%d of %d patients) to val "
        "(split.val_from_train=%g, grouped by patient, stratified by class, seed %d)",
        val.sum(),
        train.sum(),
        manifest.loc[val, "patient_id"].nunique(),
        patients.nunique(),
        split.val_from_train,
        seed,
    )
    return (
        f"the dataset's official split has no val images and carving split.val_from_train={split.val_from_train:g} "
        f"of its {train.sum()} train images ({patients.nunique()} patients) gave none; raise split.val_from_train"
    )


def audit(
    manifest: pd.DataFrame, skipped: pd.DataFrame, split: SplitConfig | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Fail when a patient sits in two splits, or an identical image does (unless ``split.cross_split_duplicates``
    is ``drop_train_copies``: then the less held-out copies leave the manifest). Returns the manifest, the audit
    summary (counts per class and split, undecodable images skipped, duplicates dropped) and every image left out
    (``skipped`` plus the dropped copies)."""
    split = split or SplitConfig()
    dropped = pd.DataFrame(columns=SKIPPED_COLUMNS)
    if split.cross_split_duplicates == "drop_train_copies":
        manifest, dropped = _drop_cross_split_copies(manifest, split)
        for name in SPLITS:
            if not (manifest["split"] == name).any():
                raise ValueError(
                    f"Split {name!r} is empty after dropping its copies of images in other splits "
                    f"({split.parameter('cross_split_duplicates')}: drop_train_copies); remove the duplicates instead"
                )
    problems = [_patient_leaks(manifest), _duplicate_leaks(manifest, split)]
    problems = [problem for problem in problems if problem]
    if problems:
        raise ValueError("Leakage audit failed: " + "\n".join(problems))
    summary = split_counts(manifest).reset_index()
    for column, table in (("skipped_undecodable", skipped), ("dropped_duplicates", dropped)):
        counts = table.groupby("class_name").size() if len(table) else pd.Series(dtype=int)
        summary[column] = summary["class_name"].map(counts).fillna(0).astype(int)
        summary.loc[summary["class_name"] == "total", column] = len(table)
    patients = manifest.groupby("split")["patient_id"].nunique()
    logger.info(
        "Leakage audit passed: patients per split %s; %d undecodable skipped; %d cross-split duplicates dropped",
        patients.to_dict(),
        len(skipped),
        len(dropped),
    )
    left_out = [table[SKIPPED_COLUMNS] for table in (skipped, dropped) if len(table)]
    left_out = pd.concat(left_out, ignore_index=True) if left_out else pd.DataFrame(columns=SKIPPED_COLUMNS)
    return manifest, summary, left_out


def _patient_leaks(manifest: pd.DataFrame) -> str | None:
    spread = manifest.groupby("patient_id")["split"].agg(lambda splits: sorted(set(splits)))
    leaked = spread[spread.map(len) > 1]
    if leaked.empty:
        return None
    shown = ", ".join(f"{patient!r} ({', '.join(splits)})" for patient, splits in leaked.iloc[:10].items())
    more = f" and {len(leaked) - 10} more" if len(leaked) > 10 else ""
    return (
        f"{len(leaked)} patient(s) in more than one split: {shown}{more}; all images of a patient must sit in one "
        "split: fix the official split, or set split.use_official: false to split by patient"
    )


def _duplicate_leaks(manifest: pd.DataFrame, split: SplitConfig) -> str | None:
    spread = manifest.groupby("content_hash")["split"].nunique()
    leaked = spread.index[spread > 1]
    if not len(leaked):
        return None
    lines = []
    for digest in leaked:
        rows = manifest[manifest["content_hash"] == digest]
        rows = rows.assign(order=-rows["split"].map(split_order)).sort_values(["order", "source"])
        lines.append(" = ".join(f"{row.split} {row.source!r}" for row in rows.itertuples(index=False)))
    return (
        f"{len(lines)} image(s) sit in more than one split (identical pixels, e.g. the same file in the official "
        "train and test folders):\n  " + "\n  ".join(sorted(lines)) + "\nRemove the copies, or set "
        f"{split.parameter('cross_split_duplicates')}: drop_train_copies to drop the train copies and keep the test "
        "images"
    )


def _drop_cross_split_copies(manifest: pd.DataFrame, split: SplitConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Of each image in two splits, keep the copies in the most held-out split (test, then val) and drop the rest;
    returns the manifest without them and the dropped rows (SKIPPED_COLUMNS)."""
    order = manifest["split"].map(split_order)
    keep_order = order.groupby(manifest["content_hash"]).transform("max")
    drop = order < keep_order
    if not drop.any():
        return manifest, pd.DataFrame(columns=SKIPPED_COLUMNS)
    kept_source = manifest[~drop].drop_duplicates("content_hash").set_index("content_hash")
    dropped = manifest[drop].assign(
        reason="cross_split_duplicate",
        detail=lambda rows: [
            f"identical to {kept_source.at[digest, 'split']} image {kept_source.at[digest, 'source']!r} "
            f"({split.parameter('cross_split_duplicates')}: drop_train_copies)"
            for digest in rows["content_hash"]
        ],
    )[SKIPPED_COLUMNS]
    per_split = dropped.groupby("split").size().to_dict()
    logger.warning(
        "Dropped %d cross-split duplicate(s) (%s: drop_train_copies), copies of images kept in a more held-out "
        "split: %s by split; listed in skipped_images (reason cross_split_duplicate)",
        len(dropped),
        split.parameter("cross_split_duplicates"),
        per_split,
    )
    return manifest[~drop].reset_index(drop=True), dropped.reset_index(drop=True)


def working_images(manifest: pd.DataFrame, arrays: dict[str, np.ndarray]) -> dict[str, Image.Image]:
    """The working-resolution images as PNG partitions ``<split>/<class>/<image_id>``."""
    return {row.image_key: array_to_pil(arrays[row.image_id]) for row in manifest.itertuples(index=False)}
