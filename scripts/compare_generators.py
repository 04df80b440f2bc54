"""Compare generators, one finished study per data folder, as Markdown tables (for docs/results.md).

Usage:
    .venv/bin/python scripts/compare_generators.py LABEL=DATA_DIR [LABEL=DATA_DIR ...] [--sample 64]

Each DATA_DIR is a finished run (generation, pseudo_labeling's quality and probe, evaluation) with one generator,
e.g. ``data/retinamnist`` of ``kedro run`` and a copy of the project run with ``--params=generation.generator=gan``.
For each it reads the newest generator, generative_quality.csv, shortcut_probe.csv and primary_contrasts.csv, and
times sampling again here (``--sample`` rows of its pool, the same rows for every generator kind, on this machine
and its current torch threads) so that images per second are measured side by side, not read from logs of runs made
under other loads. Training time is the generator's own record (train steps / steps per second of its last fit), as
are the collapses a GAN's checks found and let through (``collapse.on_collapse: warn``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
from kedro_datasets.partitions import PartitionedDataset
from study_tables import latest, markdown, primary_table

from generative_augmentation.core.generation import generate_pool
from generative_augmentation.core.generators import load_generator

QUALITY_COLUMNS = ("kid", "precision", "recall")


def newest_generator(folder: Path):
    """The newest saved generator of a data folder."""
    versions = sorted((folder / "06_models" / "generator").glob("*/generator"))
    if not versions:
        raise SystemExit(f"No saved generator under {folder}/06_models/generator: run the generation pipeline first")
    return load_generator(versions[-1])


def real_image_loaders(folder: Path) -> dict[str, object]:
    """The real images of a data folder as the catalog loads them: ``{image_key: loader}`` partitions."""
    images = PartitionedDataset(
        path=str(folder / "03_primary" / "images"), dataset="pillow.ImageDataset", filename_suffix=".png"
    )
    return images.load()


def sampling_rate(folder: Path, generator, rows: int) -> float:
    """Images per second of ``generator`` on the first ``rows`` rows of its pool (after one warm-up image)."""
    pool = pd.read_parquet(folder / "07_model_output" / "synthetic_manifest.parquet")
    plan = pool.sort_values("image_id").head(rows).reset_index(drop=True)
    real = real_image_loaders(folder)
    generate_pool(generator, plan.head(1), real, progress=False)
    started = time.perf_counter()
    generate_pool(generator, plan, real, progress=False)
    return len(plan) / (time.perf_counter() - started)


def summary_row(label: str, folder: Path, rows: int) -> dict[str, object]:
    """Training and sampling figures of one run's generator."""
    generator = newest_generator(folder)
    steps = len(generator.training.get("loss_history", []))
    rate = float(generator.training.get("steps_per_second") or 0.0)
    return {
        "generator": label,
        "kind": generator.kind,
        "train steps": steps,
        "training (s)": round(steps / rate) if rate else "–",
        "images/s": f"{sampling_rate(folder, generator, rows):.2f}",
        "collapse checks failed": collapse_summary(generator.training.get("collapses") or []),
    }


def collapse_summary(collapses: list[dict[str, object]]) -> str:
    """The collapses a GAN's checks found and let through (``on_collapse: warn``): class x times, first step."""
    if not collapses:
        return "–"
    frame = pd.DataFrame(collapses)
    counts = frame.groupby("class_name")["step"].agg(["size", "min"])
    return ", ".join(f"{name} ×{row['size']} (from step {row['min']})" for name, row in counts.iterrows())


def quality_table(runs: dict[str, Path]) -> str:
    """Per class: KID, k-NN precision and recall of each generator's pool, and the real-train floor, against the
    real validation images; and the real-vs-synthetic probe's AUC."""
    header = ["class", "measure", "real train", *runs]
    lines = ["| " + " | ".join(header) + " |", "|---|---" + "|---:" * (len(header) - 2) + "|"]
    quality = {label: latest(folder, "generative_quality.csv") for label, folder in runs.items()}
    probes = {label: latest(folder, "shortcut_probe.csv") for label, folder in runs.items()}
    first = next(iter(quality.values()))
    for class_name in first.loc[first["set"] == "synthetic", "class_name"]:
        floor = first[(first["class_name"] == class_name) & (first["set"] == "real_train")]
        for measure in QUALITY_COLUMNS:
            cells = [f"{floor[measure].iloc[0]:.2f}" if len(floor) else "–"]
            for label in runs:
                row = quality[label][
                    (quality[label]["class_name"] == class_name) & (quality[label]["set"] == "synthetic")
                ]
                cells.append(f"{row[measure].iloc[0]:.2f}" if len(row) else "–")
            lines.append(f"| {class_name} | {measure} | " + " | ".join(cells) + " |")
        cells = ["–"]
        for label in runs:
            row = probes[label][probes[label]["class_name"] == class_name]
            cells.append(f"{row['auc'].iloc[0]:.3f}" if len(row) else "–")
        lines.append(f"| {class_name} | probe AUC | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_runs(values: list[str]) -> dict[str, Path]:
    """``LABEL=DATA_DIR`` arguments; each folder must exist."""
    runs = {}
    for value in values:
        label, _, folder = value.partition("=")
        if not folder:
            raise SystemExit(f"{value!r}: write LABEL=DATA_DIR (e.g. ddpm=data/retinamnist)")
        if not Path(folder).is_dir():
            raise SystemExit(f"{label}: data folder {folder} does not exist")
        runs[label] = Path(folder)
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=DATA_DIR, one finished run per generator")
    parser.add_argument("--sample", type=int, default=64, help="pool rows sampled again to time each generator")
    arguments = parser.parse_args(argv)
    runs = parse_runs(arguments.runs)
    rows = [summary_row(label, folder, arguments.sample) for label, folder in runs.items()]
    print(markdown(pd.DataFrame(rows)))
    print("\n" + quality_table(runs))
    for label, folder in runs.items():
        print(f"\n{label}: the pre-registered contrasts\n\n" + primary_table(latest(folder, "primary_contrasts.csv")))


if __name__ == "__main__":
    main()
