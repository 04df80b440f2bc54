"""Across the arms of a study: the metrics table, means with intervals and paired differences to ``real``."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import stats

from generative_augmentation.core.scenarios import ScenarioConfig

logger = logging.getLogger(__name__)

METRIC_COLUMNS = ["scenario", "kind", "ratio", "replicate", "metric", "class_name", "value"]
GROUP_METRICS = ("recall", "precision", "f1")


def collect_metrics(
    arms: Mapping[str, ScenarioConfig], test_scores: Mapping[str, pd.DataFrame], minority: list[str]
) -> pd.DataFrame:
    """One row per (scenario, replicate, metric, class); ``minority`` rows average the named minority classes."""
    frames = []
    for name, table in test_scores.items():
        spec = arms[name]
        per_class = table[table["class_name"].isin(minority) & table["metric"].isin(GROUP_METRICS)]
        group = per_class.groupby(["replicate", "metric"], as_index=False)["value"].mean().assign(class_name="minority")
        frames.append(pd.concat([table, group]).assign(scenario=name, kind=spec.kind, ratio=spec.ratio))
    table = pd.concat(frames, ignore_index=True)[METRIC_COLUMNS]
    return table.sort_values(METRIC_COLUMNS[:6]).reset_index(drop=True)


def mean_interval(values: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """Mean and Student-t interval; fewer than two finite values give no interval (NaN bounds)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return (np.nan, np.nan, np.nan)
    mean = float(values.mean())
    if len(values) < 2:
        return (mean, np.nan, np.nan)
    half = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * stats.sem(values))
    return (mean, mean - half, mean + half)


def summarise(metrics: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """Mean and interval per scenario, metric and class, and the paired (same replicate) difference to ``real``."""
    baseline = metrics[metrics["scenario"] == "real"].set_index(["replicate", "metric", "class_name"])["value"]
    rows = []
    for (scenario, metric, class_name), group in metrics.groupby(["scenario", "metric", "class_name"], sort=False):
        mean, low, high = mean_interval(group["value"].to_numpy(), confidence)
        keys = list(zip(group["replicate"], group["metric"], group["class_name"], strict=True))
        paired = group["value"].to_numpy() - baseline.reindex(keys).to_numpy()
        diff, diff_low, diff_high = mean_interval(paired, confidence) if len(baseline) else (np.nan,) * 3
        rows.append({
            "scenario": scenario, "kind": group["kind"].iloc[0], "ratio": group["ratio"].iloc[0], "metric": metric,
            "class_name": class_name, "replicates": len(group), "mean": mean, "low": low, "high": high,
            "diff_vs_real": diff, "diff_low": diff_low, "diff_high": diff_high,
        })  # fmt: skip
    return pd.DataFrame(rows)
