"""Classification metrics on a held-out set: per-class and macro scores, AUC, confusion matrix."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

logger = logging.getLogger(__name__)


def classification_scores(y_true: np.ndarray, proba: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """Macro and per-class scores from true labels and (N, K) class probabilities.

    Keys: ``accuracy``, ``balanced_accuracy`` (the mean per-class recall, i.e. macro recall), ``macro_f1``,
    ``macro_precision``, ``macro_auc`` (one-vs-rest over the classes present), and
    ``{precision,recall,f1,auc}.<class>`` per class.
    """
    y_true = np.asarray(y_true)
    if proba.ndim != 2 or proba.shape[1] != len(class_names) or len(proba) != len(y_true):
        raise ValueError(
            f"proba shape {proba.shape} does not match {len(y_true)} labels and {len(class_names)} classes"
        )
    labels = list(range(len(class_names)))
    y_pred = proba.argmax(axis=1)
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    scores = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": _balanced_accuracy(y_true, y_pred),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "macro_precision": float(np.mean(precision)),
    }
    per_class_auc = one_vs_rest_auc(y_true, proba)
    scores["macro_auc"] = float(np.nanmean(per_class_auc)) if np.isfinite(per_class_auc).any() else float("nan")
    for index, name in enumerate(class_names):
        scores[f"precision.{name}"] = float(precision[index])
        scores[f"recall.{name}"] = float(recall[index])
        scores[f"f1.{name}"] = float(f1[index])
        scores[f"auc.{name}"] = float(per_class_auc[index])
    return scores


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(balanced_accuracy_score(y_true, y_pred))


def one_vs_rest_auc(y_true: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Per-class one-vs-rest ROC AUC; NaN for a class absent from (or the only class of) ``y_true``."""
    aucs = np.full(proba.shape[1], np.nan)
    for index in range(proba.shape[1]):
        positives = y_true == index
        if 0 < positives.sum() < len(y_true):
            aucs[index] = roc_auc_score(positives, proba[:, index])
    return aucs


def confusion(predictions: pd.DataFrame, num_classes: int) -> np.ndarray:
    """Confusion matrix (rows true, columns predicted) of test predictions (``label``, ``predicted`` columns),
    summed over every replicate in the table."""
    return confusion_matrix(predictions["label"], predictions["predicted"], labels=list(range(num_classes)))
