"""Print the latest scenario study of a data folder as Markdown tables (for docs/results.md).

Usage: .venv/bin/python scripts/study_tables.py [DATA_DIR] [SCENARIO ...]   (default: data; e.g. data/odir5k)

The arms named after the folder get a per-class recall table beside `real` (the paper's
per-class figures compare to it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

METRICS = [
    ("f1", "macro-F1"),
    ("balanced_accuracy", "bal. acc."),
    ("auc", "AUC"),
    ("precision", "macro precision"),
    ("minority_recall", "minority recall"),
]


def latest(folder: Path, name: str, required: bool = True) -> pd.DataFrame | None:
    """The newest version of a versioned CSV dataset (None when absent and not required)."""
    versions = sorted((folder / "08_reporting" / name).glob(f"*/{name}"))
    if not versions:
        if not required:
            return None
        raise SystemExit(f"No {name} under {folder}/08_reporting: run the evaluation pipeline first")
    return pd.read_csv(versions[-1])


def primary_table(primary: pd.DataFrame) -> str:
    """The pre-registered contrasts: the only rows that carry a verdict."""
    lines = [
        "| treatment | control | difference [95% CI] | p | p (Holm) | smallest detectable | verdict |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for row in primary.itertuples():
        lines.append(
            f"| {row.treatment} | {row.control} | {row.estimate:+.3f} [{row.low:+.3f}, {row.high:+.3f}] "
            f"| {row.p_value:.3f} | {row.p_holm:.3f} | {row.mde:.3f} | {row.verdict} |"
        )
    return "\n".join(lines)


def scenario_table(estimates: pd.DataFrame) -> str:
    """One row per arm: mean [95% CI] and the paired difference to real for each headline metric (no verdicts)."""
    lines = ["| arm | " + " | ".join(label for _, label in METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    order = estimates.drop_duplicates("scenario").sort_values(["kind", "ratio"], kind="stable")["scenario"]
    for scenario in order:
        cells = []
        for metric, _ in METRICS:
            row = estimates[(estimates["scenario"] == scenario) & (estimates["metric"] == metric)]
            if row.empty:
                cells.append("–")
                continue
            r = row.iloc[0]
            cell = f"{r['mean']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"
            if scenario != "real" and "diff_vs_real" in r and pd.notna(r["diff_vs_real"]):
                cell += f"<br>Δ {r['diff_vs_real']:+.3f} [{r['diff_low']:+.3f}, {r['diff_high']:+.3f}]"
            cells.append(cell)
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_class_table(estimates: pd.DataFrame, scenarios: list[str]) -> str:
    """Per-class recall (mean over replicates, %) of `real` and the given arms."""
    rows = estimates[estimates["metric"].str.startswith("recall.")]
    columns = ["real", *scenarios]
    lines = [
        "| class | " + " | ".join(f"{scenario} recall" for scenario in columns) + " |",
        "|---" + "|---:" * len(columns) + "|",
    ]
    for metric in sorted(rows["metric"].unique()):
        cells = []
        for scenario in columns:
            match = rows[(rows["scenario"] == scenario) & (rows["metric"] == metric)]
            cells.append(f"{100 * match['mean'].iloc[0]:.1f}" if len(match) else "–")
        lines.append(f"| {metric.removeprefix('recall.')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(frame: pd.DataFrame) -> str:
    """A plain Markdown table."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |\n" + "|---" * len(frame.columns) + "|"
    return header + "".join("\n| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False))


def main() -> None:
    """Print the tables."""
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "data")
    print(primary_table(latest(folder, "primary_contrasts.csv")))
    estimates = latest(folder, "scenario_estimates.csv")
    print("\n" + scenario_table(estimates))
    if len(sys.argv) > 2:
        print("\n" + per_class_table(estimates, sys.argv[2:]))
    quality = latest(folder, "generative_quality.csv", required=False)
    if quality is not None:
        print("\n" + markdown(quality.round(4)))


if __name__ == "__main__":
    main()
