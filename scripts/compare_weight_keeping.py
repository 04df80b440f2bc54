"""Which weights a study classifier should keep, judged without the test images: the last step's (``keep: final``)
or the best on validation with early stopping (``keep: best_val``).

A stratified part of the real **train** images is held out; each seed trains the default classifier on the rest
both ways (validation images for the scores and the early stopping, as in the study) and scores both on the held-out
images. Prints the mean and the spread across seeds of each, and their paired difference; writes every seed's
scores to ``--out``.

    .venv/bin/python scripts/compare_weight_keeping.py data/01_raw/retinamnist.npz --seeds 32 --holdout 300

The spread across seeds is what the study's replicate part of a contrast's standard error scales with
(``scripts/power_projection.py``); docs/results.md has the run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from generative_augmentation.core.classifier import ClassifierConfig, predict_proba, train_classifier  # noqa: E402
from generative_augmentation.core.runtime import one_thread, run_jobs  # noqa: E402

KEEPS = ("final", "best_val")


def score_both(train: tuple, val: tuple, held: tuple, config: ClassifierConfig, classes: int, seed: int) -> dict:
    """Held-out and validation macro-F1 of one seed's classifier under each way of keeping weights."""
    row: dict = {"seed": seed}
    with one_thread():
        for keep in KEEPS:
            model, result = train_classifier(train, val, config.replace(keep=keep), classes, seed, progress=False)
            predicted = predict_proba(model, held[0]).argmax(1)
            row[f"{keep}_heldout_f1"] = f1_score(held[1], predicted, average="macro", labels=range(classes))
            row[f"{keep}_steps"] = len(result.losses)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("npz", type=Path, help="a MedMNIST-style .npz (train_/val_ images and labels)")
    parser.add_argument("--seeds", type=int, default=32)
    parser.add_argument("--holdout", type=int, default=300, help="real train images held out for scoring")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("weight_keeping.csv"))
    args = parser.parse_args(argv)
    data = np.load(args.npz)
    images, labels = data["train_images"], data["train_labels"].ravel()
    classes = int(labels.max()) + 1
    kept, held_images, kept_labels, held_labels = train_test_split(
        images, labels, test_size=args.holdout, stratify=labels, random_state=0
    )
    val = (data["val_images"], data["val_labels"].ravel())
    config = ClassifierConfig()  # the study's default classifier
    calls = [
        ((kept, kept_labels), val, (held_images, held_labels), config, classes, seed) for seed in range(args.seeds)
    ]
    table = pd.DataFrame(run_jobs(score_both, calls, args.workers))
    table.to_csv(args.out, index=False)
    difference = table["final_heldout_f1"] - table["best_val_heldout_f1"]
    print(f"{len(table)} seeds, {len(kept_labels)} train / {len(held_labels)} held-out train images")
    for keep in KEEPS:
        scores = table[f"{keep}_heldout_f1"]
        print(
            f"keep {keep:8s}: held-out macro-F1 mean {scores.mean():.4f}, SD across seeds {scores.std(ddof=1):.4f}, "
            f"steps {table[f'{keep}_steps'].mean():.1f}"
        )
    half_width = 1.96 * difference.std(ddof=1) / np.sqrt(len(difference))
    print(f"final - best_val: {difference.mean():+.4f} ± {half_width:.4f} (normal 95% interval over seeds)")


if __name__ == "__main__":
    main()
