"""How many classifiers per arm a primary contrast needs: the bootstrap standard error of a finished run's contrast,
split into its test-image part (fixed by the test set) and its replicate part (falls as 1/sqrt(R)).

    .venv/bin/python scripts/power_projection.py data synthetic_x1:real synthetic_x1:count_matched_x1 \
        synthetic_x1:traditional [--replicates 16 32 64] [--metric f1]

For each contrast it resamples test images and replicates together (the study's bootstrap), test images alone
(every replicate weighed equally) and replicates alone (every test image once). The test-images-alone variance still
holds some classifier noise (each test image's difference is averaged over only R0 classifiers); its noise-free part,
the floor no number of classifiers removes, is the covariance of the test-image draws of two disjoint halves of the
replicates (even and odd), whose classifier noise is independent. The smallest difference detectable at 80% power
with R replicates is then (z(1 - alpha/(2m)) + z(0.8)) x sqrt(floor + (SE_test^2 - floor + SE_rep^2) x R0/R), m the
number of contrasts given, R0 the run's replicates. Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from generative_augmentation.core import study  # noqa: E402


def contrast_variances(
    treatment: study.Predictions, control: study.Predictions, metric: str = "f1", resamples: int = 2000, seed: int = 1
) -> dict[str, float]:
    """Variance of a contrast's bootstrap draws with both resampled (``both``), test images alone (``test``),
    replicates alone (``rep``), and the noise-free test-image ``floor``: the covariance of the test-image draws of
    the even and the odd replicates, whose classifier noise is independent."""
    drawn = study.Bootstrap.draw(treatment.labels, treatment.replicates, resamples, seed)
    drawn_tests, drawn_units = drawn.test_counts, drawn.unit_weights

    def draws(units: np.ndarray, tests: list[np.ndarray]) -> np.ndarray:
        boot = study.Bootstrap(unit_weights=units, test_counts=tests)
        return boot.metric_draws(treatment, metric) - boot.metric_draws(control, metric)

    halves = []
    for parity in (0, 1):
        units = np.zeros_like(drawn_units)
        units[:, :, parity::2] = 1 / units[0, 0, parity::2].size
        halves.append(draws(units, drawn_tests))
    return {
        "both": float(draws(drawn_units, drawn_tests).var(ddof=1)),
        "test": float(draws(np.full_like(drawn_units, 1 / drawn_units[0].size), drawn_tests).var(ddof=1)),
        "rep": float(draws(drawn_units, [np.ones_like(counts) for counts in drawn_tests]).var(ddof=1)),
        "floor": max(float(np.cov(halves[0], halves[1])[0, 1]), 0.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="the run's data folder (data, data/odir5k, ...)")
    parser.add_argument("contrasts", nargs="+", help="treatment:control pairs of arms")
    parser.add_argument("--replicates", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--metric", default="f1")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--alpha", type=float, default=0.05)
    args = parser.parse_args()
    pairs = [pair.split(":") for pair in args.contrasts]
    arms = sorted({arm for pair in pairs for arm in pair})
    tables = {
        arm: pd.read_parquet(args.data / "07_model_output" / "test_predictions" / f"{arm}.parquet") for arm in arms
    }
    classes = int(max(table["label"].max() for table in tables.values())) + 1
    predictions = {arm: study.Predictions.from_table(table, classes) for arm, table in tables.items()}
    first = predictions[arms[0]]
    if len(first.labels) > 1:
        raise SystemExit("The projection splits one run's variance; a pooled full study has several upstreams")
    critical = stats.norm.ppf(1 - args.alpha / (2 * len(pairs))) + stats.norm.ppf(0.8)

    header = (
        ["contrast", "SE, both", "test images only", "its floor (split-half)", "replicates only"]
        + [f"MDE at R = {r}" for r in args.replicates]
        + ["R → ∞"]
    )
    print("| " + " | ".join(header) + " |\n|---|" + "---:|" * (len(header) - 1))
    for treatment, control in pairs:
        var = contrast_variances(predictions[treatment], predictions[control], args.metric, args.resamples)
        shrinking = var["test"] - var["floor"] + var["rep"]
        projected = [critical * np.sqrt(var["floor"] + shrinking * first.replicates / r) for r in args.replicates]
        cells = [
            f"{treatment} − {control}",
            *(f"{np.sqrt(var[part]):.4f}" for part in ("both", "test", "floor", "rep")),
            *(f"{value:.3f}" for value in projected),
            f"{critical * np.sqrt(var['floor']):.3f}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
