"""Nodes of the hybrid_assembly pipeline: one training manifest per scenario.

A training manifest has one row per training image: ``image_id``, ``label``, ``class_name``, ``origin``
(``real``, ``synthetic`` or ``traditional``), ``image_key`` (the key in ``real_images`` or ``synthetic_images``)
and ``augment_seed`` (the seed of a traditional copy's random transform, -1 otherwise). Validation and test stay
real in every scenario: they are not in these manifests at all.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from generative_augmentation.core.runtime import derive_seed, numpy_rng

logger = logging.getLogger(__name__)

TRAINING_COLUMNS = ["image_id", "label", "class_name", "origin", "image_key", "augment_seed"]


def real_training_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """The real train split as training-manifest rows (``origin`` = ``real``)."""
    train = manifest[manifest["split"] == "train"]
    rows = train[["image_id", "label", "class_name", "image_key"]].assign(origin="real", augment_seed=-1)
    return rows[TRAINING_COLUMNS].reset_index(drop=True)


def train_counts(manifest: pd.DataFrame) -> pd.Series:
    """Real train images per class name."""
    return manifest[manifest["split"] == "train"].groupby("class_name").size()


def augmented_classes(manifest: pd.DataFrame, classes: list[str] | None, where: str) -> list[str]:
    """The classes that get extra images: ``classes`` when given, else every class below the largest."""
    counts = train_counts(manifest)
    chosen = list(classes) if classes is not None else [c for c in counts.index if counts[c] < counts.max()]
    unknown = [c for c in chosen if c not in counts.index]
    if unknown:
        raise ValueError(f"Class(es) {unknown} in {where} are not in the data; known: {sorted(counts.index)}")
    if not chosen:
        raise ValueError(f"No classes to augment ({where}): give a non-empty list of class names")
    return chosen


def synthetic_rows(labeled_synthetic: pd.DataFrame, wanted: dict[str, int], seed: int, scenario: str) -> pd.DataFrame:
    """``wanted[class]`` kept synthetic images per class, drawn in a seeded order shared by all scenarios.

    Every scenario takes a prefix of the same per-class permutation, so ``synthetic_x1`` is contained in
    ``synthetic_x2``: the ratio curve measures the ratio, not a different draw.
    """
    kept = labeled_synthetic[labeled_synthetic["verdict"] == "keep"]
    parts = []
    for class_name, count in wanted.items():
        pool = kept[kept["final_class"] == class_name].sort_values("image_id")
        if count > len(pool):
            raise ValueError(
                f"Scenario {scenario!r} needs {count} kept synthetic images of class {class_name!r} but the filtered "
                f"pool has {len(pool)}: raise generation.pool.multiple (or oversample) or lower the ratio"
            )
        order = numpy_rng(derive_seed(seed, "synthetic_pool", class_name)).permutation(len(pool))[:count]
        chosen = pool.iloc[np.sort(order)]
        parts.append(
            pd.DataFrame(
                {
                    "image_id": chosen["image_id"].to_numpy(),
                    "label": chosen["final_label"].astype(int).to_numpy(),
                    "class_name": class_name,
                    "origin": "synthetic",
                    "image_key": chosen["image_key"].to_numpy(),
                    "augment_seed": -1,
                }
            )
        )
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=TRAINING_COLUMNS)


def traditional_rows(real: pd.DataFrame, wanted: dict[str, int], seed: int, scenario: str) -> pd.DataFrame:
    """``wanted[class]`` transformed copies of real train images per class; each copy has its own seed."""
    parts = []
    for class_name, count in wanted.items():
        sources = real[real["class_name"] == class_name].sort_values("image_id")
        order = numpy_rng(derive_seed(seed, "traditional", scenario, class_name)).permutation(len(sources))
        picked = sources.iloc[np.resize(order, count)]
        copy_index = np.arange(count)
        parts.append(
            picked.assign(
                image_id=picked["image_id"].to_numpy() + "_aug" + copy_index.astype(str),
                origin="traditional",
                augment_seed=[derive_seed(seed, "traditional_copy", scenario, class_name, i) for i in copy_index],
            )
        )
    return pd.concat(parts, ignore_index=True)[TRAINING_COLUMNS] if parts else pd.DataFrame(columns=TRAINING_COLUMNS)


def assemble_scenario(
    manifest: pd.DataFrame,
    spec: dict[str, Any],
    hybrid_assembly: dict[str, Any],
    seed: int,
    labeled_synthetic: pd.DataFrame | None = None,
    selected_images: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The training manifest of one scenario (``spec``: kind, ratio, optional classes)."""
    name, kind, ratio = spec["name"], spec["kind"], float(spec.get("ratio", 0.0))
    real = real_training_rows(manifest)
    if kind == "real":
        return real
    where = f"hybrid_assembly.scenarios.{name}.classes"
    classes = augmented_classes(manifest, spec.get("classes", hybrid_assembly.get("augment_classes")), where)
    counts = train_counts(manifest)
    if kind == "traditional":
        wanted = {c: round(ratio * counts[c]) for c in classes}
        extra = traditional_rows(real, wanted, seed, name)
    elif kind == "balanced":
        wanted = {c: int(counts.max() - counts[c]) for c in classes}
        extra = synthetic_rows(_require(labeled_synthetic, name), wanted, seed, name)
    else:
        wanted = {c: round(ratio * counts[c]) for c in classes}
        extra = synthetic_rows(_require(labeled_synthetic, name), wanted, seed, name)
        if kind == "reduced_synthetic":
            real = _reduce_dominant(real, _require(selected_images, name, "selected_images"))
    result = pd.concat([real, extra], ignore_index=True)[TRAINING_COLUMNS]
    logger.info("Scenario %s: %s", name, result.groupby(["class_name", "origin"]).size().to_dict())
    return result


def _require(table: pd.DataFrame | None, scenario: str, what: str = "labeled_synthetic") -> pd.DataFrame:
    if table is None or len(table) == 0:
        raise ValueError(f"Scenario {scenario!r} needs {what}: run the pipelines that make it first")
    return table


def _reduce_dominant(real: pd.DataFrame, selected_images: pd.DataFrame) -> pd.DataFrame:
    """Keep only the selected images of the reduced (dominant) classes; other classes stay whole."""
    reduced = set(selected_images["class_name"])
    keep = set(selected_images.loc[selected_images["selected"], "image_id"])
    mask = ~real["class_name"].isin(reduced) | real["image_id"].isin(keep)
    return real[mask]


def scenario_table(scenarios: dict[str, dict[str, Any]], **manifests: pd.DataFrame) -> pd.DataFrame:
    """One row per scenario: kind, ratio and the training-set size by origin."""
    rows = []
    for name, spec in scenarios.items():
        counts = manifests[name].groupby("origin").size()
        by_origin = {f"n_{origin}": int(counts.get(origin, 0)) for origin in ("real", "synthetic", "traditional")}
        size = int(counts.sum())
        rows.append({"scenario": name, "kind": spec["kind"], "ratio": spec["ratio"], "train_size": size, **by_origin})
    return pd.DataFrame(rows)
