"""Nodes of the hybrid_assembly pipeline: one training manifest per scenario (rules in :mod:`core.scenarios`)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from generative_augmentation.core import scenarios
from generative_augmentation.core.scenarios import ScenarioConfig, StudyConfig


def assemble_training_manifest(
    manifest: pd.DataFrame,
    scenario: dict[str, Any],
    study: dict[str, Any],
    seed: int,
    labeled_synthetic: pd.DataFrame | None = None,
    selected_images: pd.DataFrame | None = None,
    controlled: dict[str, Any] | None = None,
    *,
    arm: str,
    control_arm: str | None = None,
) -> pd.DataFrame:
    """The training manifest of the arm ``arm`` (its parameter subtree ``scenario`` is ``scenarios.<arm>``; that of
    the arm it controls, ``controlled``, is ``scenarios.<control_arm>``)."""
    spec = ScenarioConfig.parse(scenario, f"scenarios.{arm}")
    control = ScenarioConfig.parse(controlled, f"scenarios.{control_arm}") if controlled is not None else None
    return scenarios.assemble(
        spec, StudyConfig.parse(study), manifest, seed, labeled_synthetic, selected_images, control
    )


def summarise_scenarios(study: dict[str, Any], definitions: dict[str, Any], **manifests: pd.DataFrame) -> pd.DataFrame:
    """One row per scenario: kind, ratio, augmentation and the training-set size by origin."""
    arms = scenarios.study_scenarios(study, definitions)
    return scenarios.scenario_summary(arms, manifests)
