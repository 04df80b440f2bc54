import numpy as np
import pandas as pd
import pytest

from generative_augmentation.core.metrics import classification_scores, confusion

NAMES = ["a", "b", "c"]


def test_scores_on_known_predictions() -> None:
    y_true = np.array([0, 0, 1, 1, 2, 2])
    proba = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.8 + 0.2 / 3
    scores = classification_scores(y_true, proba, NAMES)
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["recall.a"] == pytest.approx(0.5)
    assert scores["precision.b"] == pytest.approx(2 / 3)
    assert scores["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    f1 = [2 * 0.5 * 0.5 / 1.0, 2 * (2 / 3) / (5 / 3), 2 * 0.5 / 1.5]
    assert scores["macro_f1"] == pytest.approx(np.mean(f1))
    predictions = pd.DataFrame({"label": y_true, "predicted": proba.argmax(1)})
    assert confusion(predictions, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert confusion(pd.concat([predictions, predictions]), 3).tolist() == [[2, 2, 0], [0, 4, 0], [2, 0, 2]]
    assert "macro_recall" not in scores  # the same number as balanced accuracy: one name for it


def test_perfect_scores_and_auc() -> None:
    y_true = np.array([0, 1, 2, 0, 1, 2])
    proba = np.eye(3)[y_true]
    scores = classification_scores(y_true, proba, NAMES)
    assert scores["macro_f1"] == 1.0 and scores["macro_auc"] == 1.0


def test_absent_class_gets_nan_auc_but_macro_is_finite() -> None:
    y_true = np.array([0, 1, 0, 1])
    scores = classification_scores(y_true, np.full((4, 3), 1 / 3), NAMES)
    assert np.isnan(scores["auc.c"]) and scores["macro_auc"] == pytest.approx(0.5)


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="does not match"):
        classification_scores(np.array([0, 1]), np.ones((2, 2)), NAMES)
