"""Nodes of the hybrid_assembly pipeline: one training manifest per scenario."""

from __future__ import annotations

import pandas as pd

TRAINING_COLUMNS = ["image_id", "label", "class_name", "origin", "image_key", "augment_seed"]


def real_training_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """The real train split as training-manifest rows (``origin`` = ``real``)."""
    train = manifest[manifest["split"] == "train"]
    rows = train[["image_id", "label", "class_name", "image_key"]].assign(origin="real", augment_seed=-1)
    return rows[TRAINING_COLUMNS].reset_index(drop=True)
