"""The study's statistics: pre-registered primary contrasts with a Holm-corrected verdict, and estimates with
intervals for everything else.

Inference is a paired bootstrap. Every draw resamples, for both arms of a comparison alike,

* the upstream replicates (generator, pool and labeler re-run under another seed), when there are several;
* the classifier replicates within each (paired across arms: replicate ``r`` has the same seed in every arm);
* the test images, with replacement within each class (the same indices for both arms).

A metric is computed from each classifier's confusion counts on the resampled test images and averaged over the
resampled replicates; the difference of two arms in a draw is one sample of the difference's distribution. The
interval is its percentile interval; the two-sided p-value is twice the smaller tail share of draws at or beyond
zero. Holm's step-down method controls the family-wise error over the primary contrasts: a contrast gets a verdict
only when its Holm-adjusted p-value is below ``alpha``; everything else is an estimate with an interval. Fewer
replicates than ``minimum_replicates``, or a difference that does not vary across draws, give no interval and no
verdict.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from generative_augmentation.core.config import ConfigError
from generative_augmentation.core.metrics import one_vs_rest_auc
from generative_augmentation.core.runtime import numpy_rng
from generative_augmentation.core.scenarios import (
    BEST_SYNTHETIC,
    CONTROL_OF_TREATMENT,
    ScenarioConfig,
    StatisticsConfig,
    count_matched_control,
)

logger = logging.getLogger(__name__)

HEADLINE_METRICS = ("f1", "balanced_accuracy", "auc", "minority_recall", "accuracy", "precision")


@dataclass(frozen=True)
class Predictions:
    """One arm's test predictions, per upstream replicate (each may have its own test split, e.g. another patient
    split): the true labels, and per classifier replicate the predicted labels and class probabilities."""

    labels: tuple[np.ndarray, ...]  # per upstream: (N_u,) true labels of its test images
    predicted: tuple[np.ndarray, ...]  # per upstream: (R, N_u)
    probabilities: tuple[np.ndarray, ...]  # per upstream: (R, N_u, K)

    @classmethod
    def from_table(cls, table: pd.DataFrame, num_classes: int) -> Predictions:
        """From the test-predictions table (``upstream`` optional, ``replicate``, ``image_id``, ``label``,
        ``predicted``, ``p_0``..``p_{K-1}``)."""
        table = table if "upstream" in table.columns else table.assign(upstream=0)
        table = table.sort_values(["upstream", "replicate", "image_id"])
        replicates = table["replicate"].unique()
        columns = [f"p_{index}" for index in range(num_classes)]
        labels, predicted, probabilities = [], [], []
        for upstream, rows in table.groupby("upstream", sort=True):
            first = rows[rows["replicate"] == replicates[0]]
            if set(rows["replicate"]) != set(replicates) or len(rows) != len(replicates) * len(first):
                raise ValueError(
                    f"Upstream replicate {upstream}: every classifier replicate {replicates.tolist()} must predict the "
                    f"same {len(first)} test images"
                )
            labels.append(first["label"].to_numpy())
            predicted.append(rows["predicted"].to_numpy().reshape(len(replicates), -1))
            probabilities.append(rows[columns].to_numpy(dtype=np.float64).reshape(len(replicates), -1, num_classes))
        return cls(tuple(labels), tuple(predicted), tuple(probabilities))

    @property
    def replicates(self) -> int:
        return self.predicted[0].shape[0]

    @property
    def units(self) -> int:
        """Classifiers behind the estimate: upstream replicates x classifier replicates."""
        return len(self.predicted) * self.replicates


def confusion_metric(confusions: np.ndarray, metric: str, minority: Sequence[int] = ()) -> np.ndarray:
    """A metric of each (..., K, K) confusion matrix (rows true, columns predicted), as sklearn defines it with
    ``zero_division=0``: macro F1 and precision over all classes, balanced accuracy over the classes present."""
    confusions = np.asarray(confusions, dtype=np.float64)
    true_positives = np.diagonal(confusions, axis1=-2, axis2=-1)
    predicted = confusions.sum(axis=-2)
    actual = confusions.sum(axis=-1)
    recall = np.divide(true_positives, actual, out=np.zeros_like(true_positives), where=actual > 0)
    if metric == "f1":
        total = predicted + actual
        return np.divide(2 * true_positives, total, out=np.zeros_like(total), where=total > 0).mean(axis=-1)
    if metric == "precision":
        return np.divide(true_positives, predicted, out=np.zeros_like(predicted), where=predicted > 0).mean(axis=-1)
    if metric == "accuracy":
        return true_positives.sum(axis=-1) / confusions.sum(axis=(-2, -1))
    if metric == "balanced_accuracy":
        present = actual > 0
        return (recall * present).sum(axis=-1) / present.sum(axis=-1)
    if metric == "minority_recall":
        return recall[..., list(minority)].mean(axis=-1)
    if metric.startswith("recall."):
        return recall[..., int(metric.split(".", 1)[1])]
    raise ValueError(f"Unknown metric {metric!r}")


@dataclass
class Bootstrap:
    """Shared resampling weights of one study: the same draws for every arm, so comparisons are paired."""

    unit_weights: np.ndarray  # (B, U, R): how often each (upstream, replicate) is drawn, normalised to sum 1
    test_counts: list[np.ndarray]  # per upstream: (B, N_u) how often each test image is drawn
    _confusions: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def draw(cls, labels: Sequence[np.ndarray], replicates: int, resamples: int, seed: int) -> Bootstrap:
        """``labels``: per upstream replicate, the true labels of its test images."""
        rng = numpy_rng(seed)
        upstream = len(labels)
        upstream_counts = rng.multinomial(upstream, np.full(upstream, 1 / upstream), size=resamples)
        replicate_counts = rng.multinomial(replicates, np.full(replicates, 1 / replicates), size=(resamples, upstream))
        weights = upstream_counts[:, :, None] * replicate_counts / (upstream * replicates)
        test_counts = [_stratified_counts(labels[unit], resamples, rng) for unit in range(upstream)]
        return cls(unit_weights=weights, test_counts=test_counts)

    def confusions(self, predictions: Predictions) -> np.ndarray:
        """(B, U, R, K, K) every classifier's confusion counts on every draw's test images (computed once)."""
        key = id(predictions)
        if key not in self._confusions:
            num_classes = predictions.probabilities[0].shape[-1]
            upstream, replicates = len(predictions.predicted), predictions.replicates
            draws = np.zeros((len(self.unit_weights), upstream, replicates, num_classes, num_classes))
            for unit in range(upstream):
                pairs = predictions.labels[unit] * num_classes + predictions.predicted[unit]  # (R, N)
                one_hot = np.zeros((replicates, pairs.shape[1], num_classes * num_classes))
                np.put_along_axis(one_hot, pairs[..., None], 1.0, axis=-1)
                counts = np.einsum("bn,rnk->brk", self.test_counts[unit], one_hot)
                draws[:, unit] = counts.reshape(len(self.unit_weights), replicates, num_classes, num_classes)
            self._confusions[key] = draws
        return self._confusions[key]

    def metric_draws(self, predictions: Predictions, metric: str, minority: Sequence[int] = ()) -> np.ndarray:
        """(B,) the arm's metric in every draw."""
        values = confusion_metric(self.confusions(predictions), metric, minority)  # (B, U, R)
        return (values * self.unit_weights).sum(axis=(1, 2))

    def replicate_draws(self, unit_values: np.ndarray) -> np.ndarray:
        """(B,) draws of a metric known per (upstream, replicate) only (AUC): replicates resampled, test not."""
        return (self.unit_weights * unit_values[None]).sum(axis=(1, 2))


def _stratified_counts(labels: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(B, N) multinomial draw counts of the test images, resampled within each class."""
    counts = np.zeros((resamples, len(labels)))
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        counts[:, members] = rng.multinomial(len(members), np.full(len(members), 1 / len(members)), size=resamples)
    return counts


def point_value(predictions: Predictions, metric: str, minority: Sequence[int] = ()) -> np.ndarray:
    """(U, R) the metric of each classifier on its full test set."""
    num_classes = predictions.probabilities[0].shape[-1]
    values = np.zeros((len(predictions.predicted), predictions.replicates))
    for unit in range(values.shape[0]):
        for replicate in range(values.shape[1]):
            pairs = predictions.labels[unit] * num_classes + predictions.predicted[unit][replicate]
            confusion = np.bincount(pairs, minlength=num_classes**2).reshape(num_classes, num_classes)
            values[unit, replicate] = confusion_metric(confusion, metric, minority)
    return values


def auc_values(predictions: Predictions) -> np.ndarray:
    """(U, R) macro one-vs-rest AUC of each classifier."""
    values = np.zeros((len(predictions.predicted), predictions.replicates))
    for unit in range(values.shape[0]):
        for replicate in range(values.shape[1]):
            per_class = one_vs_rest_auc(predictions.labels[unit], predictions.probabilities[unit][replicate])
            values[unit, replicate] = np.nanmean(per_class)
    return values


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values (step-down, monotone, capped at 1), in the input order; NaN stays NaN."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, (len(order) - rank) * p[index])
        adjusted[index] = min(1.0, running)
    return adjusted


def bootstrap_p_value(draws: np.ndarray) -> float:
    """Two-sided p-value of a zero difference: twice the smaller share of draws at or beyond zero."""
    below, above = (np.sum(draws <= 0) + 1) / (len(draws) + 1), (np.sum(draws >= 0) + 1) / (len(draws) + 1)
    return float(min(1.0, 2 * min(below, above)))


def resolve_contrasts(
    config: StatisticsConfig, arms: Mapping[str, ScenarioConfig], validation_f1: Mapping[str, float]
) -> list[tuple[str, str]]:
    """The primary contrasts with ``best_synthetic`` and ``count_matched`` replaced by arm names."""
    synthetic = [name for name, spec in arms.items() if spec.uses_synthetic]
    best = max(synthetic, key=lambda name: (validation_f1.get(name, -np.inf), name)) if synthetic else None
    resolved = []
    for treatment, control in config.contrasts:
        names = []
        for role in (treatment, control):
            if role == BEST_SYNTHETIC:
                if best is None:
                    raise ConfigError(
                        "Parameter study.statistics.contrasts names best_synthetic but no arm draws synthetic images"
                    )
                names.append(best)
            elif role == CONTROL_OF_TREATMENT:
                matched = count_matched_control(names[0], arms)
                if matched is None:
                    raise ConfigError(
                        f"Parameter study.statistics.contrasts compares {names[0]} with its count_matched control, "
                        f"but study.arms has no count_matched arm that controls {names[0]}"
                    )
                names.append(matched)
            elif role not in arms:
                raise ConfigError(
                    f"Parameter study.statistics.contrasts names {role!r}, which is not in study.arms {list(arms)}"
                )
            else:
                names.append(role)
        resolved.append((names[0], names[1]))
    return resolved


def primary_contrasts(
    predictions: Mapping[str, Predictions],
    contrasts: Sequence[tuple[str, str]],
    config: StatisticsConfig,
    bootstrap: Bootstrap,
    minority: Sequence[int] = (),
) -> pd.DataFrame:
    """One row per pre-registered contrast: estimate, interval, p-values (raw and Holm), verdict, MDE."""
    rows = []
    for treatment, control in contrasts:
        rows.append(
            compare(predictions[treatment], predictions[control], config.primary_metric, config, bootstrap, minority)
            | {"treatment": treatment, "control": control}
        )
    table = pd.DataFrame(rows)
    table["p_holm"] = holm(table["p_value"])
    order = table["p_value"].rank(method="first").fillna(len(table)).astype(int)
    table["holm_level"] = 1 - config.alpha / (len(table) - order + 1)
    table["verdict"] = [verdict(row, config.alpha) for row in table.itertuples()]
    return table[
        [
            "treatment",
            "control",
            "metric",
            "estimate",
            "low",
            "high",
            "p_value",
            "p_holm",
            "holm_level",
            "se",
            "mde",
            "units",
            "verdict",
            "note",
        ]
    ]


def compare(
    treatment: Predictions,
    control: Predictions,
    metric: str,
    config: StatisticsConfig,
    bootstrap: Bootstrap,
    minority: Sequence[int] = (),
) -> dict[str, object]:
    """The paired difference treatment - control of one metric: estimate, percentile interval, p-value, MDE."""
    if metric == "auc":
        estimate = float(auc_values(treatment).mean() - auc_values(control).mean())
        draws = bootstrap.replicate_draws(auc_values(treatment) - auc_values(control))
    else:
        estimate = float(
            point_value(treatment, metric, minority).mean() - point_value(control, metric, minority).mean()
        )
        draws = bootstrap.metric_draws(treatment, metric, minority) - bootstrap.metric_draws(control, metric, minority)
    row: dict[str, object] = {"metric": metric, "estimate": estimate, "units": treatment.units, "note": ""}
    if treatment.units < config.minimum_replicates:
        return row | {
            "low": np.nan,
            "high": np.nan,
            "p_value": np.nan,
            "se": np.nan,
            "mde": np.nan,
            "note": f"{treatment.units} replicate(s): fewer than {config.minimum_replicates}, no interval",
        }
    if np.ptp(draws) == 0:
        return row | {
            "low": np.nan,
            "high": np.nan,
            "p_value": np.nan,
            "se": 0.0,
            "mde": np.nan,
            "note": "the difference does not vary across resamples: it cannot be tested",
        }
    low, high = np.quantile(draws, [config.alpha / 2, 1 - config.alpha / 2])
    se = float(draws.std(ddof=1))
    critical = stats.norm.ppf(1 - config.alpha / (2 * len(config.contrasts))) + stats.norm.ppf(config.power)
    return row | {
        "low": float(low),
        "high": float(high),
        "p_value": bootstrap_p_value(draws),
        "se": se,
        "mde": float(critical * se),
    }


def verdict(row: object, alpha: float) -> str:
    """better / worse when the Holm-adjusted p-value is below ``alpha``; else no difference shown."""
    p_holm, estimate = row.p_holm, row.estimate
    if not np.isfinite(p_holm):
        return "no verdict"
    if p_holm < alpha:
        return "better" if estimate > 0 else "worse"
    return "no difference shown"


def estimates(
    predictions: Mapping[str, Predictions],
    arms: Mapping[str, ScenarioConfig],
    config: StatisticsConfig,
    bootstrap: Bootstrap,
    metrics: Sequence[str],
    minority: Sequence[int] = (),
) -> pd.DataFrame:
    """Every arm's mean of every metric with its interval, and its paired difference to ``real`` (no verdict)."""
    rows = []
    reference = predictions.get("real")
    for name, arm in predictions.items():
        for metric in metrics:
            if metric == "auc":
                values = auc_values(arm)
                draws = bootstrap.replicate_draws(values)
            else:
                values = point_value(arm, metric, minority)
                draws = bootstrap.metric_draws(arm, metric, minority)
            enough = arm.units >= config.minimum_replicates and np.ptp(draws) > 0
            low, high = np.quantile(draws, [config.alpha / 2, 1 - config.alpha / 2]) if enough else (np.nan, np.nan)
            row = {
                "scenario": name,
                "kind": arms[name].kind,
                "ratio": arms[name].ratio,
                "metric": metric,
                "mean": float(values.mean()),
                "low": float(low),
                "high": float(high),
                "units": arm.units,
            }
            if reference is not None and name != "real":
                difference = compare(arm, reference, metric, config, bootstrap, minority)
                row |= {
                    "diff_vs_real": difference["estimate"],
                    "diff_low": difference["low"],
                    "diff_high": difference["high"],
                }
            rows.append(row)
    return pd.DataFrame(rows)


def analyse(
    predictions: Mapping[str, pd.DataFrame],
    histories: Mapping[str, pd.DataFrame],
    arms: Mapping[str, ScenarioConfig],
    config: StatisticsConfig,
    class_names: Sequence[str],
    minority: Sequence[int],
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The study's two tables from every arm's test predictions and validation histories (``upstream`` columns
    optional): the pre-registered contrasts with their verdicts, and every arm's estimates with intervals."""
    tables = {name: Predictions.from_table(predictions[name], len(class_names)) for name in arms}
    validation = {name: mean_kept_validation(histories[name]) for name in arms}
    first_name, first = next(iter(tables.items()))
    for name, table in tables.items():  # pairing needs the same test images and replicates in every arm
        same = len(table.labels) == len(first.labels) and all(
            np.array_equal(a, b) for a, b in zip(table.labels, first.labels, strict=False)
        )
        if not same or table.replicates != first.replicates:
            raise ValueError(
                f"Arm {name!r} was scored on other test images or replicates than arm {first_name!r}: "
                "the arms of one study must share the test split and the replicate seeds"
            )
    bootstrap = Bootstrap.draw(first.labels, first.replicates, config.resamples, seed)
    contrasts = resolve_contrasts(config, arms, validation)
    primary = primary_contrasts(tables, contrasts, config, bootstrap, minority)
    metrics = [*HEADLINE_METRICS, *(f"recall.{index}" for index in range(len(class_names)))]
    table = estimates(tables, arms, config, bootstrap, metrics, minority)
    table["metric"] = [
        f"recall.{class_names[int(metric.split('.', 1)[1])]}" if metric.startswith("recall.") else metric
        for metric in table["metric"]
    ]
    table["validation_f1"] = table["scenario"].map(validation)
    return primary, table


def mean_kept_validation(history: pd.DataFrame) -> float:
    """The mean over (upstream and) classifier replicates of the validation macro-F1 of the weights each one kept
    (its ``kept`` row: the final or the best step): how arms are ranked, never on test. Histories written before
    the ``kept`` column existed give each replicate's best score, the weights those runs kept."""
    keys = [column for column in ("upstream", "replicate") if column in history.columns]
    if "kept" in history.columns:
        return float(history[history["kept"].astype(bool)].groupby(keys)["val_macro_f1"].mean().mean())
    return float(history.groupby(keys)["val_macro_f1"].max().mean())
