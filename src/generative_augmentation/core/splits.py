"""Patient-grouped, class-stratified splits and the leakage audit."""

from __future__ import annotations

import numpy as np
import pandas as pd

from generative_augmentation.core.runtime import numpy_rng

SPLIT_NAMES = ("train", "val", "test")


def ratio_problem(ratios: dict[str, float]) -> str | None:
    """What is wrong with train/val/test ratios (they must be non-negative, name only the three splits, give train
    and test a share, and add up to 1), or None; the text reads after the parameter's name."""
    unknown = sorted(set(ratios) - set(SPLIT_NAMES))
    if unknown:
        return f"names unknown split(s) {unknown}; use {list(SPLIT_NAMES)}"
    values = {name: float(ratios.get(name, 0.0)) for name in SPLIT_NAMES}
    if any(value < 0 for value in values.values()):
        return f"has a negative ratio: {values}"
    if not np.isclose(sum(values.values()), 1.0, atol=1e-6):
        return f"must add up to 1, got {sum(values.values()):.4f} from {values}"
    if values["train"] <= 0 or values["test"] <= 0:
        return f"needs train > 0 and test > 0, got {values}"
    return None


def stratified_group_split(labels: np.ndarray, groups: np.ndarray, ratios: dict[str, float], seed: int) -> np.ndarray:
    """Assign every item to a split so that no group spans two splits and each class follows ``ratios``.

    Greedy: groups are visited largest first (ties in a seeded random order); each goes to the split whose
    per-class deficit against its target, weighted by the group's class counts, is largest. scikit-learn's
    StratifiedGroupKFold only makes equal folds, so it cannot honour arbitrary ratios.
    """
    problem = ratio_problem(ratios)
    if problem:
        raise ValueError(f"Split ratios {problem}")
    return _greedy_group_split(labels, groups, {name: float(ratios.get(name, 0.0)) for name in SPLIT_NAMES}, seed)


def carve_group_split(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """``"val"`` for about ``fraction`` of the items, ``"train"`` for the rest, by the same greedy rule as
    :func:`stratified_group_split`: no group spans both, each class is cut in about that proportion."""
    if not 0 < fraction < 1:
        raise ValueError(f"The fraction carved out must be in (0, 1), got {fraction}")
    return _greedy_group_split(labels, groups, {"train": 1.0 - fraction, "val": fraction}, seed)


def _greedy_group_split(labels: np.ndarray, groups: np.ndarray, ratios: dict[str, float], seed: int) -> np.ndarray:
    labels, groups = np.asarray(labels), np.asarray(groups)
    if len(labels) == 0:
        return np.array([], dtype=object)
    classes, label_index = np.unique(labels, return_inverse=True)
    group_ids, group_index = np.unique(groups, return_inverse=True)
    per_group = np.zeros((len(group_ids), len(classes)))
    np.add.at(per_group, (group_index, label_index), 1)
    names = [name for name in SPLIT_NAMES if ratios.get(name, 0.0) > 0]
    targets = np.array([ratios[name] for name in names])[:, None] * per_group.sum(0)[None, :]
    current = np.zeros_like(targets)
    order = numpy_rng(seed).permutation(len(group_ids))
    order = order[np.argsort(-per_group[order].sum(1), kind="stable")]
    assignment = np.empty(len(group_ids), dtype=int)
    for group in order:
        counts = per_group[group]
        deficit = ((targets - current) / np.maximum(targets, 1e-9)) @ counts
        overall = (targets.sum(1) - current.sum(1)) / np.maximum(targets.sum(1), 1e-9)
        choice = int(np.lexsort((-overall, -deficit))[0])
        assignment[group] = choice
        current[choice] += counts
    return np.array(names, dtype=object)[assignment[group_index]]


def linked_groups(patients: np.ndarray, links: np.ndarray) -> np.ndarray:
    """Each item's group for splitting: its patient, joined with every patient it shares a ``links`` value with
    (an identical image, by content hash), transitively. A group is named by its smallest patient id, so without
    links the groups are the patients themselves."""
    patients, links = np.asarray(patients).astype(str), np.asarray(links)
    parent = {patient: patient for patient in patients}

    def root(patient: str) -> str:
        while parent[patient] != patient:
            parent[patient] = parent[parent[patient]]
            patient = parent[patient]
        return patient

    first_patient: dict[object, str] = {}
    for patient, link in zip(patients, links, strict=True):
        other = first_patient.setdefault(link, patient)
        a, b = root(patient), root(other)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return np.array([root(patient) for patient in patients], dtype=object)


def split_order(split: str) -> int:
    """How held-out a split is: train 0, val 1, test 2."""
    return SPLIT_NAMES.index(split)


def split_counts(manifest: pd.DataFrame) -> pd.DataFrame:
    """Counts of images per class (rows) and split (columns), with totals."""
    table = pd.crosstab(manifest["class_name"], manifest["split"], margins=True, margins_name="total")
    return table.reindex(columns=[c for c in (*SPLIT_NAMES, "total") if c in table.columns])
