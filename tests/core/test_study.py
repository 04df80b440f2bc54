"""The study's statistics on inputs with known answers: metrics from confusion counts, the paired bootstrap,
Holm's correction, verdicts only where the statistics carry them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, precision_score, recall_score

from generative_augmentation.core.config import ConfigError
from generative_augmentation.core.scenarios import StatisticsConfig, study_scenarios
from generative_augmentation.core.study import (
    Bootstrap,
    Predictions,
    bootstrap_p_value,
    compare,
    confusion_metric,
    holm,
    mean_kept_validation,
    point_value,
    primary_contrasts,
    resolve_contrasts,
)

K = 3


def predictions(correct: np.ndarray, labels: np.ndarray, seed: int = 0) -> Predictions:
    """Replicates whose predictions are right where ``correct`` (R, N) is true, else a wrong class."""
    rng = np.random.default_rng(seed)
    wrong = (labels[None] + rng.integers(1, K, size=correct.shape)) % K
    predicted = np.where(correct, labels[None], wrong)
    probabilities = np.eye(K)[predicted] * 0.8 + 0.2 / K
    return Predictions(labels=(labels,), predicted=(predicted,), probabilities=(probabilities,))


def test_confusion_metrics_equal_sklearn_on_random_predictions() -> None:
    rng = np.random.default_rng(1)
    truth, guess = rng.integers(0, K, 200), rng.integers(0, K, 200)
    guess[truth == 2] = 0  # class 2 never predicted: its precision is 0 by sklearn's zero_division=0
    confusion = np.bincount(truth * K + guess, minlength=K * K).reshape(K, K)
    expected = {
        "f1": f1_score(truth, guess, average="macro", labels=range(K), zero_division=0),
        "precision": precision_score(truth, guess, average="macro", labels=range(K), zero_division=0),
        "accuracy": accuracy_score(truth, guess),
        "balanced_accuracy": balanced_accuracy_score(truth, guess),
        "minority_recall": recall_score(truth, guess, average=None, labels=range(K))[[1, 2]].mean(),
    }
    for metric, value in expected.items():
        assert confusion_metric(confusion, metric, minority=[1, 2]) == pytest.approx(value), metric


def test_the_vectorised_bootstrap_equals_a_brute_force_one_on_the_same_draws() -> None:
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(K), [12, 8, 6])
    arm = predictions(rng.random((4, len(labels))) < 0.6, labels)
    bootstrap = Bootstrap.draw(arm.labels, replicates=4, resamples=50, seed=3)
    draws = bootstrap.metric_draws(arm, "f1")
    for b in (0, 17, 49):
        rows = np.repeat(np.arange(len(labels)), bootstrap.test_counts[0][b].astype(int))
        per_replicate = [
            f1_score(labels[rows], arm.predicted[0][r, rows], average="macro", labels=range(K), zero_division=0)
            for r in range(4)
        ]
        assert draws[b] == pytest.approx(np.dot(bootstrap.unit_weights[b, 0], per_replicate))
    per_class = [
        np.bincount(labels[np.repeat(np.arange(len(labels)), c.astype(int))], minlength=K)
        for c in bootstrap.test_counts[0]
    ]
    assert all((counts == [12, 8, 6]).all() for counts in per_class)  # resampled within each class
    assert np.allclose(bootstrap.unit_weights.sum(axis=(1, 2)), 1)


def test_holm_adjusts_step_down_and_keeps_the_order() -> None:
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(holm([0.2, 0.6]), [0.4, 0.6])
    np.testing.assert_allclose(holm([0.5, 0.9, 0.1]), [1.0, 1.0, 0.3])
    adjusted = holm([0.01, np.nan, 0.02])
    assert np.isnan(adjusted[1]) and adjusted[[0, 2]].tolist() == pytest.approx([0.02, 0.02])


def test_the_p_value_counts_draws_on_each_side_of_zero() -> None:
    assert bootstrap_p_value(np.ones(999)) == pytest.approx(2 / 1000)
    assert bootstrap_p_value(np.r_[-np.ones(500), np.ones(500)]) == 1.0
    assert bootstrap_p_value(np.r_[-np.ones(100), np.ones(900)]) == pytest.approx(2 * 101 / 1001)


def contrast_setup(better_by: float, replicates: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(K), [60, 40, 40])
    control = predictions(rng.random((replicates, len(labels))) < 0.6, labels, seed)
    treatment = predictions(rng.random((replicates, len(labels))) < 0.6 + better_by, labels, seed + 1)
    bootstrap = Bootstrap.draw(control.labels, replicates, 1000, seed=5)
    return {"treatment": treatment, "control": control}, bootstrap


def labels_of(arm: Predictions) -> np.ndarray:
    return arm.labels[0][None]


def test_a_large_true_difference_is_found_and_no_difference_is_not() -> None:
    config = StatisticsConfig(contrasts=[["treatment", "control"]])
    arms, bootstrap = contrast_setup(better_by=0.25)
    found = primary_contrasts(arms, [("treatment", "control")], config, bootstrap).iloc[0]
    assert found["verdict"] == "better" and found["low"] > 0 and found["p_holm"] < 0.05 and 0 < found["mde"] < 0.25
    accuracy = compare(arms["treatment"], arms["control"], "accuracy", config, bootstrap)["estimate"]
    observed = (arms["treatment"].predicted[0] == labels_of(arms["treatment"])).mean() - (
        arms["control"].predicted[0] == labels_of(arms["control"])
    ).mean()
    assert accuracy == pytest.approx(observed)
    arms, bootstrap = contrast_setup(better_by=0.0, seed=3)
    null = primary_contrasts(arms, [("treatment", "control")], config, bootstrap).iloc[0]
    assert null["verdict"] == "no difference shown" and null["low"] < null["estimate"] < null["high"]


def test_a_difference_that_does_not_vary_or_too_few_replicates_give_no_verdict() -> None:
    config = StatisticsConfig(contrasts=[["a", "b"], ["a", "c"]])
    labels = np.repeat(np.arange(K), 10)
    same = predictions(np.ones((4, len(labels)), bool), labels)
    bootstrap = Bootstrap.draw(same.labels, 4, 200, seed=1)
    identical = primary_contrasts({"a": same, "b": same, "c": same}, [("a", "b"), ("a", "c")], config, bootstrap)
    assert (identical["verdict"] == "no verdict").all() and identical["low"].isna().all()
    assert identical["note"].str.contains("does not vary").all()
    few = predictions(np.random.default_rng(0).random((2, len(labels))) < 0.5, labels)
    other = predictions(np.random.default_rng(1).random((2, len(labels))) < 0.5, labels, seed=1)
    two = primary_contrasts(
        {"a": few, "b": other},
        [("a", "b")],
        StatisticsConfig(contrasts=[["a", "b"]]),
        Bootstrap.draw(few.labels, 2, 200, 1),
    )
    assert two.iloc[0]["verdict"] == "no verdict" and "fewer than 3" in two.iloc[0]["note"]


def test_the_best_synthetic_arm_is_chosen_on_validation_and_its_control_resolved() -> None:
    definitions = {
        "real": {"kind": "real"},
        "traditional": {"kind": "traditional"},
        "synthetic_x1": {"kind": "synthetic", "ratio": 1},
        "synthetic_x2": {"kind": "synthetic", "ratio": 2},
        "count_matched_x1": {"kind": "count_matched", "controls": "synthetic_x1"},
        "count_matched_x2": {"kind": "count_matched", "controls": "synthetic_x2"},
    }
    arms = study_scenarios({"arms": list(definitions)}, definitions)
    resolved = resolve_contrasts(StatisticsConfig(), arms, {"synthetic_x1": 0.41, "synthetic_x2": 0.44, "real": 0.9})
    assert resolved == [("synthetic_x2", "real"), ("synthetic_x2", "count_matched_x2"), ("synthetic_x2", "traditional")]


def test_arms_are_ranked_by_the_validation_score_of_the_weights_each_classifier_kept() -> None:
    history = pd.DataFrame(
        {
            "replicate": [0, 0, 0, 1, 1, 1],
            "step": [10, 20, 30, 10, 20, 30],
            "val_macro_f1": [0.50, 0.70, 0.40, 0.30, 0.60, 0.20],
            "kept": [False, False, True, False, False, True],  # final weights: the last step's
        }
    )
    assert mean_kept_validation(history) == pytest.approx((0.40 + 0.20) / 2)
    assert mean_kept_validation(history.drop(columns="kept")) == pytest.approx((0.70 + 0.60) / 2)  # older runs: best


def test_contrasts_that_cannot_be_resolved_are_refused_when_the_study_is_read() -> None:
    definitions = {
        "real": {"kind": "real"},
        "synthetic_x1": {"kind": "synthetic", "ratio": 1},
        "traditional": {"kind": "traditional"},
    }
    with pytest.raises(
        ConfigError,
        match=r"study.statistics.contrasts compares best_synthetic with its count_matched control.*\['synthetic_x1'\]",
    ):
        study_scenarios({"arms": list(definitions)}, definitions)
    with pytest.raises(ConfigError, match=r"study.statistics.contrasts names 'ghost'"):
        study_scenarios(
            {"arms": list(definitions), "statistics": {"contrasts": [["synthetic_x1", "ghost"]]}}, definitions
        )
    with pytest.raises(ConfigError, match=r"study.statistics.alpha must be in \(0, 0.5\]"):
        StatisticsConfig.parse({"alpha": 0}, "study.statistics")


def test_predictions_read_from_the_test_predictions_table() -> None:
    table = pd.DataFrame(
        {
            "replicate": [0, 0, 1, 1],
            "image_id": ["b", "a", "a", "b"],
            "label": [1, 0, 0, 1],
            "predicted": [1, 1, 0, 0],
            "p_0": [0.2, 0.4, 0.9, 0.6],
            "p_1": [0.8, 0.6, 0.1, 0.4],
        }
    )
    arm = Predictions.from_table(table, 2)
    assert [labels.tolist() for labels in arm.labels] == [[0, 1]] and arm.units == 2
    assert [predicted.tolist() for predicted in arm.predicted] == [[[1, 1], [0, 0]]]
    assert arm.probabilities[0].shape == (2, 2, 2)
    with pytest.raises(ValueError, match=r"Upstream replicate 0: every classifier replicate \[0, 1\] must predict"):
        Predictions.from_table(table.iloc[:3], 2)


def test_upstream_replicates_may_each_have_their_own_test_split() -> None:
    """Another patient split per upstream replicate: test sets of different sizes, resampled each within itself."""
    rng = np.random.default_rng(4)
    frames = []
    for upstream, size in ((0, 30), (1, 36)):
        labels = np.arange(size) % K
        for replicate in range(3):
            predicted = np.where(rng.random(size) < 0.7, labels, (labels + 1) % K)
            frames.append(
                pd.DataFrame(
                    {
                        "upstream": upstream,
                        "replicate": replicate,
                        "image_id": [f"u{upstream}_{index:03d}" for index in range(size)],
                        "label": labels,
                        "predicted": predicted,
                        **{f"p_{k}": (predicted == k) * 0.8 + 0.2 / K for k in range(K)},
                    }
                )
            )
    arm = Predictions.from_table(pd.concat(frames), K)
    assert [len(labels) for labels in arm.labels] == [30, 36] and arm.units == 6 and arm.replicates == 3
    bootstrap = Bootstrap.draw(arm.labels, arm.replicates, 100, seed=2)
    assert [counts.shape for counts in bootstrap.test_counts] == [(100, 30), (100, 36)]
    assert np.allclose(bootstrap.unit_weights.sum(axis=(1, 2)), 1)
    point = point_value(arm, "f1")
    assert point.shape == (2, 3) and np.isclose(bootstrap.metric_draws(arm, "f1").mean(), point.mean(), atol=0.05)
