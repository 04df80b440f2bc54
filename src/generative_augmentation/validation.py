"""Every parameter block of the project parsed at the start of a run, so a bad value stops the run before any
long work, naming the parameter in full (each node parses its own blocks again when it runs)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from generative_augmentation.core.classifier import ClassifierConfig
from generative_augmentation.core.clustering import FeatureClusteringConfig
from generative_augmentation.core.config import Config, ConfigError
from generative_augmentation.core.evaluation import EvaluationConfig
from generative_augmentation.core.generation import GenerationConfig, check_arms_covered
from generative_augmentation.core.images import AugmentationConfig, ImageSpec
from generative_augmentation.core.labeling import PseudoLabelingConfig
from generative_augmentation.core.preparation import DatasetConfig, SplitConfig
from generative_augmentation.core.reduction import ReductionConfig
from generative_augmentation.core.runtime import RuntimeConfig
from generative_augmentation.core.scenarios import StudyConfig, study_scenarios

PARAMETER_BLOCKS: dict[str, type[Config]] = {
    "runtime": RuntimeConfig,
    "dataset": DatasetConfig,
    "image": ImageSpec,
    "split": SplitConfig,
    "feature_clustering": FeatureClusteringConfig,
    "generation": GenerationConfig,
    "pseudo_labeling": PseudoLabelingConfig,
    "reduction": ReductionConfig,
    "study": StudyConfig,
    "classifier": ClassifierConfig,
    "augmentation": AugmentationConfig,
    "evaluation": EvaluationConfig,
}


def check_parameters(parameters: Mapping[str, Any]) -> dict[str, Config]:
    """Parse every block (and the classifier overrides of the labeler and the feature extractor); the first bad
    value raises ``ConfigError`` naming it. Returns the parsed blocks."""
    seed = parameters.get("seed")
    if seed is None:  # `seed:` in YAML, or `--params=seed=` on the command line
        raise ConfigError("Parameter seed is empty (null); give a non-negative integer")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"Parameter seed must be a non-negative integer, got {seed!r}")
    parsed = {name: config.parse(parameters.get(name), name) for name, config in PARAMETER_BLOCKS.items()}
    arms = study_scenarios(parameters.get("study"), parameters.get("scenarios"))
    check_generated_classes(parsed, arms)
    classifier = parsed["classifier"]
    labeling = parsed["pseudo_labeling"]
    ClassifierConfig.parse(labeling.labeler, labeling.parameter("labeler"), base=classifier)
    extractor = parsed["feature_clustering"].extractor
    if extractor.classifier_overrides is not None:
        ClassifierConfig.parse(
            extractor.classifier_overrides, extractor.parameter("classifier_overrides"), base=classifier
        )
    return parsed


def check_generated_classes(parsed: Mapping[str, Config], arms: Mapping[str, Any]) -> None:
    """An explicit ``generation.classes`` that leaves out a class an arm draws synthetic images of, as far as the
    parameters alone tell (the class list of the data, ``study.augment_classes``); the generation pipeline checks the
    rest against the data before training."""
    generation, dataset, study = parsed["generation"], parsed["dataset"], parsed["study"]
    if generation.classes is None:
        return
    all_classes = [dataset.class_name(code) for code in dataset.classes] or None
    check_arms_covered(arms, generation.classes, generation, all_classes, study.augment_classes)
