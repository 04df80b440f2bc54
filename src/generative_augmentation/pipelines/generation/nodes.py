"""Nodes of the generation pipeline: plan the pool, fit the generator on real train images, sample, report.

Every check of the ``generation`` parameters against the data runs in :func:`plan_generation`, the first node,
so a bad parameter fails in seconds instead of after training. The generator kind is a parameter: the nodes call
the generator interface of :mod:`core.generators` and never branch on the kind.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from generative_augmentation.core.generation import (
    POOL_COLUMNS,
    GenerationConfig,
    fit_generator,
    generate_pool,
    plan_pool,
    pool_summary,
    sample_cache_folder,
)
from generative_augmentation.core.generators import Generator
from generative_augmentation.core.images import ImageSpec, array_to_pil, stack_images
from generative_augmentation.core.manifest import class_names
from generative_augmentation.core.plots import loss_curve, real_beside_synthetic
from generative_augmentation.core.scenarios import StudyConfig, study_scenarios

logger = logging.getLogger(__name__)


def plan_generation(
    manifest: pd.DataFrame,
    clusters: pd.DataFrame | None,
    generation: dict[str, Any],
    seed: int,
    study: dict[str, Any],
    scenarios: dict[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The generator's training set (real train only) and the pool plan, one row per synthetic image, sized for
    what the study's arms draw when ``generation.pool`` says auto."""
    study_config = StudyConfig.parse(study)
    arms = study_scenarios(study_config, scenarios)
    config = GenerationConfig.parse(generation)
    return plan_pool(manifest, clusters, config, seed, arms, study_config.augment_classes)


def train_generator(
    training_set: pd.DataFrame,
    manifest: pd.DataFrame,
    real_images: dict[str, Any],
    checkpoints: Path,
    generation: dict[str, Any],
    image: dict[str, Any],
    seed: int,
) -> tuple[Generator, pd.DataFrame]:
    """Fit the configured generator on the real train images; returns it and its loss per step.

    Checkpoints go under ``checkpoints`` as it trains; a rerun after an interruption resumes from the latest
    one and refuses a changed configuration.
    """
    config, spec = GenerationConfig.parse(generation), ImageSpec.parse(image)
    generator = fit_generator(training_set, real_images, class_names(manifest), config, spec, seed, checkpoints)
    losses = np.asarray(generator.training["loss_history"], dtype=float)
    return generator, pd.DataFrame({"step": np.arange(1, len(losses) + 1), "loss": losses})


def generate_synthetic_pool(
    generator: Generator, plan: pd.DataFrame, real_images: dict[str, Any], checkpoints: Path, generation: dict[str, Any]
) -> tuple[dict[str, Image.Image], pd.DataFrame]:
    """Every planned image; returns PNG partitions ``<class_name>/<image_id>`` and the pool's manifest.

    Finished chunks wait under ``checkpoints`` while the pool is sampled, so a killed run resumes where it stopped.
    """
    config = GenerationConfig.parse(generation)
    cache = sample_cache_folder(checkpoints, generator)
    started = time.perf_counter()
    arrays = generate_pool(generator, plan, real_images, cache=cache, chunk_size=config.sample_chunk)
    if not config.keep_checkpoints:
        shutil.rmtree(cache, ignore_errors=True)
    elapsed = time.perf_counter() - started
    logger.info("Generated %d images in %.1fs (%.2f images/s)", len(arrays), elapsed, len(arrays) / max(elapsed, 1e-9))
    manifest = plan[POOL_COLUMNS].reset_index(drop=True)
    return {key: array_to_pil(array) for key, array in zip(manifest["image_key"], arrays, strict=True)}, manifest


def report_generation(
    generator: Generator,
    training_log: pd.DataFrame,
    synthetic_manifest: pd.DataFrame,
    synthetic_images: dict[str, Any],
    training_set: pd.DataFrame,
    real_images: dict[str, Any],
    generation: dict[str, Any],
) -> tuple[dict[str, Figure], Figure, dict[str, Any], pd.DataFrame]:
    """Sample grids (real beside synthetic, one per class and an overview), the loss curve, MLflow metrics and the
    pool summary per class."""
    per_row = GenerationConfig.parse(generation).report.images_per_row
    spec = generator.image
    real = {
        name: stack_images(real_images, rows["image_key"].head(per_row), spec)
        for name, rows in training_set.groupby("class_name", sort=False)
    }
    fake = {
        name: stack_images(synthetic_images, rows["image_key"].head(per_row), spec)
        for name, rows in synthetic_manifest.groupby("intended_class", sort=False)
    }
    grids = {
        f"{name}.png": real_beside_synthetic(
            {name: real[name]}, {name: images}, f"{name}: real train and synthetic images", per_row
        )
        for name, images in fake.items()
    }
    grids["overview.png"] = real_beside_synthetic(
        real, fake, f"Real train and {generator.kind} synthetic images per class", per_row
    )
    curve = loss_curve(training_log["loss"].to_numpy(), title=f"{generator.kind} training loss")
    summary = pool_summary(training_set, synthetic_manifest)
    diversity = pd.DataFrame(generator.training.get("diversity", []))  # generators that watch for collapse
    if len(diversity):
        last = diversity.sort_values("step").groupby("class_name")["ratio"].last()
        summary["diversity_ratio"] = summary["class_name"].map(last)  # samples' diversity / real images'
    for collapse in generator.training.get("collapses", []):
        logger.warning(
            "%s: class %s collapsed at step %d (diversity ratio %.3f < %.3f); its images may be near-copies",
            generator.kind,
            collapse["class_name"],
            collapse["step"],
            collapse["ratio"],
            collapse["threshold"],
        )
    return grids, curve, _metrics(generator, training_log, summary), summary


def _metrics(generator: Generator, log: pd.DataFrame, summary: pd.DataFrame) -> dict[str, Any]:
    losses = log["loss"].to_numpy(dtype=float)
    window = max(1, len(losses) // 100)
    smoothed = pd.Series(losses).rolling(window, min_periods=1).mean().to_numpy()
    metrics: dict[str, Any] = {
        "train_steps_per_second": {"value": float(generator.training.get("steps_per_second", 0.0)), "step": 0},
        "pool_size": {"value": float(summary["synthetic"].sum()), "step": 0},
        **{
            f"pool_size.{row.class_name}": {"value": float(row.synthetic), "step": 0}
            for row in summary.itertuples()
            if row.synthetic
        },
    }
    for row in generator.training.get("diversity", []):
        history = metrics.setdefault(f"diversity_ratio.{row['class_name']}", [])
        history.append({"value": float(row["ratio"]), "step": int(row["step"])})
    if len(losses):
        metrics["loss"] = [
            {"value": float(smoothed[step - 1]), "step": int(step)} for step in range(window, len(losses) + 1, window)
        ]
        metrics["final_loss"] = {"value": float(losses[-max(1, len(losses) // 20) :].mean()), "step": 0}
    return metrics
