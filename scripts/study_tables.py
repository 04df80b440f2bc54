"""Print the latest scenario study of a data folder as Markdown tables (for docs/results.md).

Usage: .venv/bin/python scripts/study_tables.py [DATA_DIR] [SCENARIO ...]   (default: data; e.g. data/odir5k)

The scenarios named after the folder get a per-class precision / recall table beside `real` (the paper's
per-class figures compare to it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

METRICS = [("f1", "macro", "macro-F1"), ("balanced_accuracy", "macro", "bal. acc."), ("auc", "macro", "AUC"),
           ("precision", "macro", "macro precision"), ("recall", "minority", "minority recall")]  # fmt: skip


def latest(folder: Path, name: str, required: bool = True) -> pd.DataFrame | None:
    """The newest version of a versioned CSV dataset (None when absent and not required)."""
    versions = sorted((folder / "08_reporting" / name).glob(f"*/{name}"))
    if not versions:
        if not required:
            return None
        raise SystemExit(f"No {name} under {folder}/08_reporting: run the evaluation pipeline first")
    return pd.read_csv(versions[-1])


def scenario_table(summary: pd.DataFrame) -> str:
    """One row per scenario: mean [95% CI] and the paired difference to real for each headline metric."""
    lines = ["| scenario | " + " | ".join(label for *_, label in METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    order = summary.drop_duplicates("scenario").sort_values(["kind", "ratio"])["scenario"]
    for scenario in order:
        cells = []
        for metric, class_name, _ in METRICS:
            row = summary[(summary["scenario"] == scenario) & (summary["metric"] == metric)
                          & (summary["class_name"] == class_name)]  # fmt: skip
            if row.empty:
                cells.append("–")
                continue
            r = row.iloc[0]
            cell = f"{r['mean']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"
            if scenario != "real":
                cell += f"<br>Δ {r['diff_vs_real']:+.3f} [{r['diff_low']:+.3f}, {r['diff_high']:+.3f}]"
            cells.append(cell)
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_class_table(summary: pd.DataFrame, scenarios: list[str]) -> str:
    """Per-class precision and recall (mean over seeds, %) of `real` and the given scenarios."""
    rows = summary[summary["metric"].isin(["precision", "recall"]) & ~summary["class_name"].isin(["macro", "minority"])]
    columns = [(scenario, metric) for scenario in ["real", *scenarios] for metric in ("precision", "recall")]
    lines = ["| class | " + " | ".join(f"{scenario} {metric}" for scenario, metric in columns) + " |",
             "|---" + "|---:" * len(columns) + "|"]  # fmt: skip
    for class_name in sorted(rows["class_name"].unique()):
        cells = []
        for scenario, metric in columns:
            match = rows[
                (rows["scenario"] == scenario) & (rows["metric"] == metric) & (rows["class_name"] == class_name)
            ]
            cells.append(f"{100 * match['mean'].iloc[0]:.1f}" if len(match) else "–")
        lines.append(f"| {class_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(frame: pd.DataFrame) -> str:
    """A plain Markdown table."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |\n" + "|---" * len(frame.columns) + "|"
    return header + "".join("\n| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False))


def main() -> None:
    """Print the tables."""
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "data")
    summary = latest(folder, "scenario_statistics.csv")
    print(scenario_table(summary))
    if len(sys.argv) > 2:
        print("\n" + per_class_table(summary, sys.argv[2:]))
    quality = latest(folder, "generative_quality.csv", required=False)
    if quality is not None:
        print("\n" + markdown(quality.round(4)))


if __name__ == "__main__":
    main()
