"""One arm of the study: train a classifier per replicate on its training manifest, select on real validation
images, score once on real test images."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from generative_augmentation.core.classifier import (
    ClassifierConfig,
    TrainingResult,
    classifier_from_record,
    classifier_record,
    mixed_batches,
    phased_batches,
    predict_proba,
    train_classifier,
)
from generative_augmentation.core.config import Config
from generative_augmentation.core.crowding import available_cores
from generative_augmentation.core.generative_metrics import QualityConfig
from generative_augmentation.core.images import AugmentationConfig, ImageSpec, stack_images
from generative_augmentation.core.metrics import classification_scores
from generative_augmentation.core.runtime import derive_seed, one_thread, run_jobs
from generative_augmentation.core.scenarios import ORIGINS, ScenarioConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluationConfig(Config):
    """How many classifiers each arm trains (``replicates``, paired across arms by seed), the intervals' level,
    the report's title and the generative-quality settings."""

    where = "evaluation"
    replicates: int = 32
    workers: int | None = None  # classifiers trained at once, one torch thread each (null: the cores available)
    report_title: str = "Synthetic augmentation study"
    quality: QualityConfig = field(default_factory=QualityConfig)

    def checks(self):
        yield from self.at_least("replicates", "workers")

    def worker_count(self) -> int:
        return min(self.workers or available_cores(), self.replicates)

    def replicate_seeds(self, seed: int) -> dict[int, int]:
        """``{replicate: classifier seed}``, derived from the project seed, the same in every arm."""
        return {replicate: derive_seed(seed, "classifier", replicate) for replicate in range(self.replicates)}


def training_arrays(
    training_manifest: pd.DataFrame,
    real_images: Mapping[str, Any],
    synthetic_images: Mapping[str, Any] | None,
    image: ImageSpec,
) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of a scenario's training manifest (real, duplicated real and synthetic rows)."""
    origin = training_manifest["origin"].to_numpy()
    unknown = sorted(set(origin) - set(ORIGINS))
    if unknown:
        raise ValueError(
            f"Unknown origin(s) {unknown} in the training manifest (column 'origin'); known: {list(ORIGINS)}"
        )
    arrays = image.empty(len(training_manifest))
    for kind, source in (("real", real_images), ("duplicate", real_images), ("synthetic", synthetic_images)):
        mask = origin == kind
        if mask.any():
            if source is None:
                raise ValueError(f"The training manifest has {kind} rows but no {kind} images were given")
            arrays[mask] = stack_images(source, training_manifest.loc[mask, "image_key"], image)
    return arrays, training_manifest["label"].to_numpy(dtype=np.int64)


def train_replicates(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    config: ClassifierConfig,
    augmentation: AugmentationConfig | None,
    seeds: Mapping[int, int],
    class_names: list[str],
    image: ImageSpec,
    scenario: str,
    workers: int = 1,
    synthetic: np.ndarray | None = None,
    recipe: ScenarioConfig | None = None,
    teacher: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """One classifier per replicate, ``workers`` at a time (each on one torch thread, so the weights do not
    depend on how many run at once; under the Dask runner, one task each on the cluster); returns their weights as
    one record (``replicate_<r>.`` prefixes) and the validation history of every replicate.

    ``recipe`` (the arm's settings) says how the synthetic rows (``synthetic``, a mask) are used: mixed into each
    batch with a probability, pre-trained on before the real ones, weighed in the loss, given soft labels by
    ``teacher`` (a classifier record trained on real images: the labeler) (see ``ScenarioConfig``).
    """
    targets = None
    if recipe is not None and recipe.teacher_weight > 0 and synthetic is not None and synthetic.any():
        targets = teacher_targets(teacher, train, synthetic, recipe.teacher_weight, class_names, scenario)
    calls = [
        (
            train,
            val,
            config,
            len(class_names),
            seed,
            augmentation,
            f"{scenario} replicate {replicate}",
            synthetic,
            recipe,
            targets,
        )
        for replicate, seed in seeds.items()
    ]
    logger.info("Training %d classifiers for %s, %d at a time", len(calls), scenario, workers)
    results = run_jobs(_train_one, calls, workers)
    state, histories, selection = {}, [], {}
    for (replicate, _), result in zip(seeds.items(), results, strict=True):
        state |= {f"replicate_{replicate}.{name}": tensor for name, tensor in result.state_dict.items()}
        histories.append(pd.DataFrame(result.history).assign(replicate=replicate))
        selection[str(replicate)] = {"best_step": result.best_step, "val_macro_f1": result.best_val_macro_f1}
    record = classifier_record(
        state, config, class_names, image, replicates=list(seeds), train_size=len(train[1]), selection=selection
    )
    return record, pd.concat(histories, ignore_index=True)


def _train_one(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    config: ClassifierConfig,
    num_classes: int,
    seed: int,
    augmentation: AugmentationConfig | None,
    description: str,
    synthetic: np.ndarray | None,
    recipe: ScenarioConfig | None,
    targets: np.ndarray | None = None,
) -> TrainingResult:
    batches, row_weights, separate_norm = synthetic_use(recipe, synthetic, config, len(train[1]), seed)
    pretrain_steps = pretraining_steps(recipe, config)
    with one_thread():
        _, result = train_classifier(
            train,
            val,
            config,
            num_classes,
            seed,
            augmentation,
            progress=False,
            description=description,
            batches=batches,
            row_weights=row_weights,
            separate_norm=separate_norm,
            select_after=pretrain_steps,
            targets=targets,
        )
    logger.info("%s: kept step %d, validation macro-F1 %.3f", description, result.best_step, result.best_val_macro_f1)
    return result


def teacher_targets(
    teacher: Mapping[str, Any] | None,
    train: tuple[np.ndarray, np.ndarray],
    synthetic: np.ndarray,
    weight: float,
    class_names: list[str],
    scenario: str,
) -> np.ndarray:
    """Soft labels (N, K): a real row's one-hot label; a synthetic row's ``weight`` x the teacher's class
    probabilities + (1 - ``weight``) x its one-hot label (He et al., ICLR 2023: a teacher trained on real images
    labels the synthetic ones)."""
    if teacher is None:
        raise ValueError(
            f"Arm {scenario} sets scenarios.{scenario}.teacher_weight, which needs a teacher trained on real images "
            "(the labeler of pseudo_labeling): run pseudo_labeling first"
        )
    taught = list(teacher["config"]["class_names"])
    if taught != list(class_names):
        raise ValueError(
            f"The teacher (labeler) of arm {scenario} knows the classes {taught}, the study {list(class_names)}: "
            "rerun pseudo_labeling on this study's manifest"
        )
    images, labels = train
    targets = np.eye(len(class_names), dtype=np.float32)[labels]
    probabilities = predict_proba(classifier_from_record(teacher), images[synthetic])
    targets[synthetic] = weight * probabilities + (1.0 - weight) * targets[synthetic]
    return targets


def pretraining_steps(recipe: ScenarioConfig | None, config: ClassifierConfig) -> int:
    """The steps an arm trains on its synthetic images alone before the real ones (0 without pre-training)."""
    if recipe is None or recipe.pretrain_share is None:
        return 0
    return round(recipe.pretrain_share * config.steps)


def synthetic_use(
    recipe: ScenarioConfig | None, synthetic: np.ndarray | None, config: ClassifierConfig, size: int, seed: int
) -> tuple[Callable[[int], np.ndarray] | None, np.ndarray | None, np.ndarray | None]:
    """The batch sampler, the per-row loss weights and the rows normalised apart that an arm's recipe asks for
    (None: the plain defaults)."""
    if recipe is None or synthetic is None or not synthetic.any():
        return None, None, None
    batch_size = min(config.batch_size, size)
    batches = None
    if recipe.synthetic_probability is not None:
        batches = mixed_batches(synthetic, recipe.synthetic_probability, batch_size, seed)
    elif recipe.pretrain_share is not None:
        batches = phased_batches(synthetic, pretraining_steps(recipe, config), batch_size, seed)
    row_weights = None
    if recipe.synthetic_loss_weight != 1.0:
        row_weights = np.where(synthetic, recipe.synthetic_loss_weight, 1.0).astype(np.float32)
    return batches, row_weights, (synthetic if recipe.synthetic_batch_norm else None)


def score_replicates(
    record: Mapping[str, Any], test: tuple[np.ndarray, np.ndarray], test_ids: np.ndarray
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score every replicate once on the real test images: the long metrics table (replicate, metric,
    class_name, value) and the test predictions (with every class probability)."""
    images, labels = test
    names = record["config"]["class_names"]
    rows, predictions = [], []
    for replicate in record["config"]["replicates"]:
        proba = predict_proba(classifier_from_record(record, f"replicate_{replicate}."), images)
        rows += [
            {"replicate": replicate, **split_metric_name(name), "value": value}
            for name, value in classification_scores(labels, proba, names).items()
        ]
        frame = pd.DataFrame(
            {"image_id": test_ids, "replicate": replicate, "label": labels, "predicted": proba.argmax(1)}
        )
        predictions.append(frame.assign(**{f"p_{index}": proba[:, index] for index in range(len(names))}))
    return pd.DataFrame(rows), pd.concat(predictions, ignore_index=True)


def split_metric_name(name: str) -> dict[str, str]:
    """``recall.grade_1`` → metric ``recall``, class ``grade_1``; ``macro_f1`` → ``f1``, ``macro``."""
    if "." in name:
        metric, class_name = name.split(".", 1)
        return {"metric": metric, "class_name": class_name}
    return {"metric": name.removeprefix("macro_"), "class_name": "macro"}
