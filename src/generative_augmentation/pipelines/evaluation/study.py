"""Across-scenario nodes of the evaluation pipeline: metrics table, statistics, curves, generative quality."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from generative_augmentation.core.features import EfficientNetLite0Extractor
from generative_augmentation.core.generative_metrics import fid, kid, precision_recall_knn
from generative_augmentation.core.images import stack_partitions
from generative_augmentation.core.plots import bar_groups

logger = logging.getLogger(__name__)

HEADLINE_METRICS = ("f1", "balanced_accuracy", "auc", "recall", "precision", "accuracy")


def minority_classes(manifest: pd.DataFrame) -> list[str]:
    """Classes whose real train count is below the largest class's."""
    counts = manifest[manifest["split"] == "train"].groupby("class_name").size()
    return [c for c in counts.index if counts[c] < counts.max()]


def collect_scenario_metrics(
    scenarios: dict[str, dict[str, Any]], manifest: pd.DataFrame, **test_scores: pd.DataFrame
) -> pd.DataFrame:
    """One row per (scenario, seed, metric, class or ``macro``), plus ``minority`` = mean over minority classes."""
    minority = minority_classes(manifest)
    frames = []
    for name, table in test_scores.items():
        spec = scenarios[name]
        per_class = table[table["class_name"].isin(minority) & table["metric"].isin(["recall", "precision", "f1"])]
        minority_rows = (
            per_class.groupby(["seed", "metric"], as_index=False)["value"].mean().assign(class_name="minority")
        )
        frames.append(pd.concat([table, minority_rows]).assign(scenario=name, kind=spec["kind"], ratio=spec["ratio"]))
    columns = ["scenario", "kind", "ratio", "seed", "metric", "class_name", "value"]
    return pd.concat(frames, ignore_index=True)[columns].sort_values(columns[:6]).reset_index(drop=True)


def mean_interval(values: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval over seeds (a single seed gives a zero-width interval)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return (np.nan, np.nan, np.nan)
    mean = float(values.mean())
    if len(values) < 2:
        return (mean, mean, mean)
    half = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * stats.sem(values))
    return (mean, mean - half, mean + half)


def summarise_scenarios(scenario_metrics: pd.DataFrame, evaluation: dict[str, Any]) -> pd.DataFrame:
    """Mean and interval per scenario and metric, and the paired (same seed) difference to ``real``.

    A scenario wins (or loses) on a metric only where the interval of its paired difference excludes zero.
    """
    confidence = float(evaluation.get("confidence", 0.95))
    baseline = scenario_metrics[scenario_metrics["scenario"] == "real"].set_index(["seed", "metric", "class_name"])
    rows = []
    for (scenario, metric, class_name), group in scenario_metrics.groupby(["scenario", "metric", "class_name"]):
        mean, low, high = mean_interval(group["value"].to_numpy(), confidence)
        keys = list(zip(group["seed"], group["metric"], group["class_name"], strict=True))
        paired = group["value"].to_numpy() - baseline.reindex(keys)["value"].to_numpy()
        diff, diff_low, diff_high = mean_interval(paired, confidence)
        rows.append({
            "scenario": scenario, "kind": group["kind"].iloc[0], "ratio": group["ratio"].iloc[0],
            "metric": metric, "class_name": class_name, "seeds": len(group), "mean": mean, "low": low, "high": high,
            "diff_vs_real": diff, "diff_low": diff_low, "diff_high": diff_high,
            "wins": bool(scenario != "real" and diff_low > 0), "loses": bool(scenario != "real" and diff_high < 0),
        })  # fmt: skip
    return pd.DataFrame(rows)


def _series(summary: pd.DataFrame, metric: str, class_name: str, kind: str) -> tuple[list[float], tuple]:
    rows = summary[(summary["metric"] == metric) & (summary["class_name"] == class_name) & (summary["kind"] == kind)]
    rows = rows.sort_values("ratio")
    return rows["ratio"].tolist(), (rows["mean"].to_numpy(), rows["low"].to_numpy(), rows["high"].to_numpy())


def ratio_curves(summary: pd.DataFrame) -> Figure:
    """Macro-F1 and minority-class recall against the added-image ratio: synthetic beside traditional."""
    import matplotlib.pyplot as plt  # noqa: F401 - registers the Agg backend before Figure composition

    real = summary[(summary["scenario"] == "real")]
    figures_data = []
    for metric, class_name, label in (("f1", "macro", "macro-F1"), ("recall", "minority", "minority-class recall")):
        base = real[(real["metric"] == metric) & (real["class_name"] == class_name)]
        series = {}
        for kind in ("synthetic", "traditional"):
            ratios, (mean, low, high) = _series(summary, metric, class_name, kind)
            if ratios and len(base):
                ratios = [0.0, *ratios]
                mean, low, high = (
                    np.r_[base[col].iloc[0], arr]
                    for col, arr in zip(("mean", "low", "high"), (mean, low, high), strict=True)
                )
            if ratios:
                series[kind] = (ratios, mean, low, high)
        figures_data.append((label, series))
    return _two_panel_curves(figures_data)


def _two_panel_curves(panels: list[tuple[str, dict]]) -> Figure:
    figure = Figure(figsize=(11, 4.2))
    for index, (label, series) in enumerate(panels):
        axis = figure.add_subplot(1, len(panels), index + 1)
        for kind, (ratios, mean, low, high) in series.items():
            axis.plot(ratios, mean, marker="o", label=kind)
            axis.fill_between(ratios, low, high, alpha=0.2)
        axis.set_xlabel("added images per real image of the class (ratio R; 0 = real only)")
        axis.set_ylabel(f"test {label}")
        axis.set_title(f"{label} vs ratio (mean and 95% interval over seeds)")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    return figure


def recall_bars(summary: pd.DataFrame, manifest: pd.DataFrame) -> Figure:
    """Per-class test recall of every scenario (mean over seeds, with interval)."""
    classes = manifest.drop_duplicates("label").sort_values("label")["class_name"].tolist()
    rows = summary[(summary["metric"] == "recall") & summary["class_name"].isin(classes)]
    values = rows.pivot(index="class_name", columns="scenario", values="mean").reindex(classes)
    errors = (rows.pivot(index="class_name", columns="scenario", values="high") - values).reindex(classes)
    return bar_groups(values, title="Per-class test recall by scenario", ylabel="recall", errors=errors)


def generative_quality(
    labeled_synthetic: pd.DataFrame,
    synthetic_images: dict,
    manifest: pd.DataFrame,
    real_images: dict,
    image: dict[str, Any],
    quality: dict[str, Any],
    seed: int,
) -> pd.DataFrame:
    """KID, FID (where both sets are large enough), and k-NN precision/recall per class against real test.

    Kept synthetic images are compared with real test images on offline ImageNet EfficientNet-Lite0 features;
    real train against real test gives the floor (what a perfect generator would score).
    """
    extractor = EfficientNetLite0Extractor(image_size=int(quality.get("image_size", 96)))
    size, mode = int(image["size"]), image["mode"]
    kept = labeled_synthetic[labeled_synthetic["verdict"] == "keep"]
    rows = []
    for class_name in sorted(set(kept["final_class"])):
        test = manifest[(manifest["split"] == "test") & (manifest["class_name"] == class_name)]
        train = manifest[(manifest["split"] == "train") & (manifest["class_name"] == class_name)]
        synthetic = kept[kept["final_class"] == class_name]
        test_features = extractor.embed(stack_partitions(real_images, test["image_key"], size, mode), progress=False)
        for source, keys, partitions in (("synthetic_kept", synthetic["image_key"], synthetic_images),
                                         ("real_train", train["image_key"], real_images)):  # fmt: skip
            features = extractor.embed(stack_partitions(partitions, keys, size, mode), progress=False)
            rows.append(
                {"class_name": class_name, "set": source, **_quality_row(test_features, features, quality, seed)}
            )
            logger.info("Quality of %s %s: %s", source, class_name, rows[-1])
    return pd.DataFrame(rows)


def _quality_row(real: np.ndarray, other: np.ndarray, quality: dict[str, Any], seed: int) -> dict[str, float]:
    subset = min(len(real), len(other), int(quality.get("kid_subset_size", 100)))
    kid_mean, kid_std = kid(real, other, subset_size=subset, subsets=int(quality.get("kid_subsets", 50)), seed=seed)
    enough = min(len(real), len(other)) >= int(quality.get("min_images_for_fid", 200))
    k = int(quality.get("nearest_k", 3))
    precision, recall = precision_recall_knn(real, other, k=k) if min(len(real), len(other)) > k else (np.nan, np.nan)
    return {
        "n_images": len(other), "n_test": len(real), "kid": kid_mean, "kid_std": kid_std,
        "fid": fid(real, other) if enough else np.nan, "precision": precision, "recall": recall,
    }  # fmt: skip


def summed_confusions(class_count: int, **test_predictions: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each scenario's test confusion matrix, summed over seeds."""
    from sklearn.metrics import confusion_matrix

    return {
        name: confusion_matrix(table["label"], table["predicted"], labels=list(range(class_count)))
        for name, table in test_predictions.items()
    }
