"""Choose a classifier's learning rate on the real VALIDATION images, before a study runs with it.

Each (learning rate, seed) trains the study's classifier (``ClassifierConfig()`` with ``--architecture``) on the
real train images alone, keeps its final weights as the study does, and scores macro-F1 on the validation images.
Test images are never read. Prints the mean and spread per learning rate and the highest mean; writes every run
to ``--out``.

    .venv/bin/python scripts/learning_rate_check.py data/01_raw/retinamnist.npz \
        --architecture efficientnet_lite0 --rates 0.002 0.0005 --seeds 2

docs/results.md has the run that set the EfficientNet-Lite0 study's learning rate.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from generative_augmentation.core.classifier import ClassifierConfig, train_classifier  # noqa: E402

REQUIRED = ("train_images", "train_labels", "val_images", "val_labels")


def validation_f1(train: tuple, val: tuple, config: ClassifierConfig, classes: int, seed: int) -> dict:
    """Validation macro-F1 of one classifier trained on ``train`` with its final weights kept: the score the
    training loop itself records after the last step (the kept step, with ``keep: final``)."""
    started = time.perf_counter()
    _, result = train_classifier(train, val, config, classes, seed, progress=False)
    seconds = time.perf_counter() - started
    return {
        "learning_rate": config.learning_rate,
        "seed": seed,
        "val_macro_f1": result.best_val_macro_f1,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("npz", type=Path, help="a MedMNIST-style .npz (train_/val_ images and labels)")
    parser.add_argument("--architecture", default="small_cnn")
    parser.add_argument("--rates", type=float, nargs="+", required=True)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=ClassifierConfig.steps, help="optimiser steps (the study's)")
    parser.add_argument("--out", type=Path, default=Path("learning_rate_check.csv"))
    args = parser.parse_args(argv)
    data = np.load(args.npz)
    missing = [key for key in REQUIRED if key not in data.files]
    if missing:
        raise SystemExit(f"{args.npz} lacks {missing}: it needs {list(REQUIRED)} (MedMNIST's layout)")
    train = (data["train_images"], data["train_labels"].ravel())
    val = (data["val_images"], data["val_labels"].ravel())
    classes = int(train[1].max()) + 1
    base = ClassifierConfig(architecture=args.architecture, steps=args.steps, keep="final")
    rows = [
        validation_f1(train, val, base.replace(learning_rate=rate), classes, seed)
        for rate in args.rates
        for seed in range(args.seeds)
    ]
    table = pd.DataFrame(rows)
    table.to_csv(args.out, index=False)
    summary = table.groupby("learning_rate")["val_macro_f1"].agg(["mean", "std", "count"])
    print(f"{args.architecture}, {len(train[1])} train / {len(val[1])} validation images, final weights")
    print(summary.to_string(float_format=lambda value: f"{value:.4f}"))
    print(f"highest mean validation macro-F1: learning rate {summary['mean'].idxmax():g}")


if __name__ == "__main__":
    main()
