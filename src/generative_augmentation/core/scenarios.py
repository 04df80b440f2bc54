"""The arms of a study: what each scenario trains on, and how its training manifest is assembled.

A training manifest has one row per training image: ``image_id``, ``label``, ``class_name``, ``origin`` (``real``,
``synthetic``, or ``duplicate`` for the real images a count-matched control adds) and ``image_key`` (its key in
the real or the synthetic image folder). Validation and test stay real in every scenario: they are not in these
manifests at all.

Kinds:

* ``real``: the real train split;
* ``traditional``: the real train split with ordinary augmentation on the fly (flips, rotations, jitter, crops);
* ``synthetic``: real + ``ratio`` x the class's real count of kept synthetic images, for each augmented class;
* ``balanced``: real + kept synthetic images up to the largest class's count;
* ``reduced_synthetic``: the dominant classes cut to the ``reduction`` selection, + ``ratio`` x synthetic;
* ``count_matched``: real + real train images drawn again, with exactly the count and class mix of the synthetic
  images of the scenario it ``controls`` (a control for "more images" and "other class priors").

Any scenario may set ``augment: true`` (ordinary augmentation on the fly, for synthetic images too) and its own
``classes``. A ``synthetic`` or ``reduced_synthetic`` scenario with ``every_class: true`` gives every class, the
dominant ones included, ``ratio`` x its real count: the synthetic share is then the same in every class, so "looks
synthetic" says nothing about the label (no synthetic shortcut; the study's real-vs-synthetic probe shows whether
the images are told apart at all).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np
import pandas as pd

from generative_augmentation.core.config import Config, ConfigError
from generative_augmentation.core.manifest import kept_synthetic, resolve_classes, split_rows, train_counts
from generative_augmentation.core.runtime import derive_seed, numpy_rng

logger = logging.getLogger(__name__)

TRAINING_COLUMNS = ["image_id", "label", "class_name", "origin", "image_key"]
ORIGINS = ("real", "synthetic", "duplicate")
Kind = Literal["real", "traditional", "synthetic", "balanced", "reduced_synthetic", "count_matched"]
USES_SYNTHETIC = frozenset({"synthetic", "balanced", "reduced_synthetic"})
USES_RATIO = frozenset({"synthetic", "reduced_synthetic"})
BEST_SYNTHETIC = "best_synthetic"  # in a contrast: the synthetic arm with the best mean validation macro-F1
CONTROL_OF_TREATMENT = "count_matched"  # in a contrast: the count-matched control of the treatment


@dataclass(frozen=True)
class ScenarioConfig(Config):
    """One arm of the study (``scenarios.<name>``)."""

    where = "scenarios"
    kind: Kind = "real"
    ratio: float = 0.0
    classes: list[str] | None = None
    augment: bool = False
    controls: str | None = None
    # DA-Fusion's mixing: each batch slot is a synthetic image with this probability; null: the synthetic images
    # are simply part of the training set (concatenation).
    synthetic_probability: float | None = None
    # No synthetic shortcut: every class (dominant ones included) gets ratio x its real count of synthetic images.
    every_class: bool = False
    # Pre-train, then fine-tune (RoentGen-v2's recipe): this share of the step budget on the synthetic images
    # alone, the rest on the real ones alone. null: real and synthetic images trained together throughout.
    pretrain_share: float | None = None
    # The weight of a synthetic image's loss against a real one's (He et al., ICLR 2023, weigh synthetic data down).
    synthetic_loss_weight: float = 1.0
    # Separate BatchNorm statistics for the synthetic images in training (Yu et al. 2023); validation and test are
    # normalised by statistics of the real images only.
    synthetic_batch_norm: bool = False
    # Soft labels from a teacher trained on real images (the labeler of pseudo_labeling; He et al., ICLR 2023): a
    # synthetic image's target is teacher_weight x the teacher's class probabilities + (1 - teacher_weight) x its
    # one-hot label. 0: hard labels.
    teacher_weight: float = 0.0

    def checks(self):
        yield from self.within("synthetic_probability", 0, 1, open_low=True, open_high=True)
        yield from self.within("pretrain_share", 0, 1, open_low=True, open_high=True)
        yield from self.within("teacher_weight", 0, 1)
        yield from self.positive("synthetic_loss_weight")
        defaults = {option.name: option.default for option in fields(self)}
        for name in ("pretrain_share", "synthetic_loss_weight", "synthetic_batch_norm", "teacher_weight"):
            if getattr(self, name) != defaults[name]:
                yield name, self.uses_synthetic, f"applies to arms that draw synthetic images, not {self.kind!r}"
        yield (
            "synthetic_batch_norm",
            not (self.synthetic_batch_norm and self.pretrain_share is not None),
            "and pretrain_share exclude each other: pre-training batches are all synthetic, with no real rows to "
            "keep the statistics apart from",
        )
        yield (
            "pretrain_share",
            self.pretrain_share is None or self.synthetic_probability is None,
            "and synthetic_probability exclude each other: one decides which images each step draws",
        )
        if self.every_class:
            yield (
                "every_class",
                self.kind in USES_RATIO,
                f"applies to the kinds that add ratio x each class's count {sorted(USES_RATIO)}, not {self.kind!r}",
            )
            yield "every_class", self.classes is None, "and classes exclude each other: every_class means all classes"
        if self.synthetic_probability is not None:
            yield (
                "synthetic_probability",
                self.uses_synthetic,
                f"applies to arms that draw synthetic images, not {self.kind!r}",
            )
        yield from self.at_least("ratio", minimum=0)
        if self.kind in USES_RATIO:
            yield "ratio", self.ratio > 0, f"must be positive for kind {self.kind!r}, got {self.ratio}"
        yield (
            "controls",
            (self.kind == "count_matched") == (self.controls is not None),
            ("names the synthetic scenario a count_matched control copies, and only a count_matched scenario sets it"),
        )

    @property
    def uses_synthetic(self) -> bool:
        return self.kind in USES_SYNTHETIC

    @property
    def uses_selection(self) -> bool:
        return self.kind == "reduced_synthetic"

    @property
    def augmented(self) -> bool:
        """Whether training images are augmented on the fly."""
        return self.augment or self.kind == "traditional"


@dataclass(frozen=True)
class StatisticsConfig(Config):
    """The pre-registered analysis: the primary metric, the primary contrasts ``[treatment, control]``, the
    family-wise error rate, the bootstrap, and the fewest replicates an interval needs.

    In a contrast, ``best_synthetic`` is the arm drawing synthetic images with the best mean validation macro-F1
    (chosen on validation images, never test), ``count_matched`` the count-matched control of that treatment, and
    any other name an arm of ``study.arms``.
    """

    where = "study.statistics"
    primary_metric: Literal["f1", "balanced_accuracy", "accuracy", "precision", "minority_recall"] = "f1"
    contrasts: list[list[str]] = field(
        default_factory=lambda: [
            [BEST_SYNTHETIC, "real"],
            [BEST_SYNTHETIC, CONTROL_OF_TREATMENT],
            [BEST_SYNTHETIC, "traditional"],
        ]
    )
    alpha: float = 0.05
    power: float = 0.8
    resamples: int = 2000
    minimum_replicates: int = 3

    def checks(self):
        yield "contrasts", bool(self.contrasts), "is empty: pre-register at least one [treatment, control] pair"
        pairs = all(len(pair) == 2 and pair[0] != pair[1] for pair in self.contrasts)
        yield "contrasts", pairs, f"must list [treatment, control] pairs of two different arms, got {self.contrasts}"
        yield from self.within("alpha", 0, 0.5, open_low=True)
        yield from self.within("power", 0, 1, open_low=True, open_high=True)
        yield from self.at_least("resamples", minimum=100)
        yield from self.at_least("minimum_replicates", minimum=2)


@dataclass(frozen=True)
class StudyConfig(Config):
    """The study: the arms it runs (names of ``scenarios`` entries), the classes that get extra images, the classes
    whose recall is reported as minority recall (null: the augmented ones), and the pre-registered analysis."""

    where = "study"
    arms: list[str] = field(default_factory=lambda: ["real", "traditional", "synthetic_x1", "count_matched_x1"])
    augment_classes: list[str] | None = None
    minority_classes: list[str] | None = None
    statistics: StatisticsConfig = field(default_factory=StatisticsConfig)

    def checks(self):
        yield "arms", bool(self.arms), "is empty: name at least one scenario"
        yield "arms", len(set(self.arms)) == len(self.arms), f"repeats a scenario: {self.arms}"
        bad = [name for name in self.arms if not name.isidentifier()]
        yield "arms", not bad, f"names {bad}, which are not Python identifiers (write synthetic_x1p5, not x1.5)"

    def minority_class_names(self, manifest: pd.DataFrame) -> list[str]:
        """The classes whose recall is minority recall: ``minority_classes``, else the augmented classes."""
        counts = train_counts(manifest)
        if self.minority_classes is not None:
            return resolve_classes(self.minority_classes, counts, self.parameter("minority_classes"))
        return resolve_classes(self.augment_classes, counts, self.parameter("augment_classes"))


def study_scenarios(
    study: StudyConfig | Mapping[str, Any] | None, scenarios: Mapping[str, Any] | None
) -> dict[str, ScenarioConfig]:
    """``{name: ScenarioConfig}`` of the arms ``study.arms`` names (``study`` parsed or not), parsed from
    ``scenarios``, in that order."""
    config = study if isinstance(study, StudyConfig) else StudyConfig.parse(study)
    definitions = dict(scenarios or {})
    unknown = [name for name in config.arms if name not in definitions]
    if unknown:
        raise ConfigError(
            f"Parameter study.arms names {unknown}, which are not defined under scenarios; "
            f"defined: {sorted(definitions)}"
        )
    arms = {name: ScenarioConfig.parse(definitions[name], f"scenarios.{name}") for name in config.arms}
    for name, spec in arms.items():
        if spec.kind == "count_matched":
            controlled = arms.get(spec.controls or "")
            if controlled is None or not controlled.uses_synthetic:
                raise ConfigError(
                    f"Parameter scenarios.{name}.controls must name a synthetic arm of study.arms, "
                    f"got {spec.controls!r}"
                )
    _check_contrasts(config.statistics, arms)
    return arms


def count_matched_control(treatment: str, arms: Mapping[str, ScenarioConfig]) -> str | None:
    """The count_matched arm that controls ``treatment``; else one controlling an arm that draws exactly the same
    synthetic counts and class mix with the same augmentation (same kind, ratio, classes, every_class and augment: a
    recipe arm such as ``pretrained_synthetic_x1`` shares ``synthetic_x1``'s control); else None."""

    def draw(spec: ScenarioConfig) -> tuple:  # the counts and class mix, and the augmentation both arms must share
        return spec.kind, spec.ratio, tuple(spec.classes or ()), spec.every_class, spec.augmented

    controls = {name: spec.controls for name, spec in arms.items() if spec.kind == "count_matched"}
    direct = [name for name, controlled in controls.items() if controlled == treatment]
    if direct:
        return direct[0]
    same = [
        name
        for name, controlled in controls.items()
        if controlled in arms and draw(arms[controlled]) == draw(arms[treatment])
    ]
    return same[0] if same else None


def _check_contrasts(statistics: StatisticsConfig, arms: Mapping[str, ScenarioConfig]) -> None:
    """Every role a pre-registered contrast names must be resolvable whichever synthetic arm validation picks."""
    synthetic = [name for name, spec in arms.items() if spec.uses_synthetic]
    where = statistics.parameter("contrasts")
    for treatment, control in statistics.contrasts:
        for role in (treatment, control):
            if role == BEST_SYNTHETIC and not synthetic:
                raise ConfigError(
                    f"Parameter {where} names {BEST_SYNTHETIC} but no arm of study.arms draws synthetic images"
                )
            if role == CONTROL_OF_TREATMENT:
                candidates = synthetic if treatment == BEST_SYNTHETIC else [treatment]
                missing = [name for name in candidates if name in arms and count_matched_control(name, arms) is None]
                if missing:
                    raise ConfigError(
                        f"Parameter {where} compares {treatment} with its count_matched control, but study.arms has "
                        f"no count_matched arm controlling {missing}: add one (kind count_matched, controls: <arm>)"
                    )
            if role not in (BEST_SYNTHETIC, CONTROL_OF_TREATMENT) and role not in arms:
                raise ConfigError(f"Parameter {where} names {role!r}, which is not in study.arms {list(arms)}")


def synthetic_needs(arms: Mapping[str, ScenarioConfig]) -> tuple[float, bool, bool]:
    """What the study's arms draw from the pool: the largest synthetic ratio (x the class's real train count),
    whether a ``balanced`` arm needs each class's gap to the largest class, and whether an ``every_class`` arm needs
    synthetic images of every class, the dominant ones included."""
    ratios = [spec.ratio for spec in arms.values() if spec.uses_synthetic and spec.kind != "balanced"]
    balanced = any(spec.kind == "balanced" for spec in arms.values())
    return max(ratios, default=0.0), balanced, any(spec.every_class for spec in arms.values())


def assemble(
    spec: ScenarioConfig,
    study: StudyConfig,
    manifest: pd.DataFrame,
    seed: int,
    labeled_synthetic: pd.DataFrame | None = None,
    selected_images: pd.DataFrame | None = None,
    controlled: ScenarioConfig | None = None,
) -> pd.DataFrame:
    """The training manifest of the scenario ``spec`` describes (``controlled``: the arm a count_matched copies)."""
    real = real_training_rows(manifest)
    if spec.kind in ("real", "traditional"):
        return real
    counts = train_counts(manifest)
    if spec.kind == "count_matched":
        if controlled is None:
            raise ValueError(
                f"A count_matched scenario needs the settings of the scenario it controls ({spec.controls})"
            )
        extra = duplicate_rows(real, synthetic_counts(controlled, study, counts), seed)
    else:
        what = f"{spec.kind} scenario (ratio {spec.ratio:g})" if spec.kind in USES_RATIO else f"{spec.kind} scenario"
        extra = synthetic_rows(
            _require(labeled_synthetic, what, "labeled_synthetic"), synthetic_counts(spec, study, counts), seed, what
        )
        if spec.uses_selection:
            real = reduce_dominant(real, _require(selected_images, what, "selected_images"))
    result = pd.concat([real, extra], ignore_index=True)[TRAINING_COLUMNS]
    logger.info(
        "Scenario %s (ratio %g): %s", spec.kind, spec.ratio, result.groupby(["class_name", "origin"]).size().to_dict()
    )
    return result


def real_training_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """The real train split as training-manifest rows (``origin`` = ``real``)."""
    rows = split_rows(manifest, "train")[["image_id", "label", "class_name", "image_key"]].assign(origin="real")
    return rows[TRAINING_COLUMNS]


def synthetic_counts(spec: ScenarioConfig, study: StudyConfig, counts: pd.Series) -> dict[str, int]:
    """Synthetic images per augmented class of a synthetic-kind scenario."""
    if spec.every_class:
        classes = [str(name) for name in counts.index]
    elif spec.classes is not None:
        classes = resolve_classes(spec.classes, counts, spec.parameter("classes"))
    else:
        classes = resolve_classes(study.augment_classes, counts, study.parameter("augment_classes"))
    if spec.kind == "balanced":
        return {name: int(counts.max() - counts[name]) for name in classes}
    return {name: round(spec.ratio * int(counts[name])) for name in classes}


def pool_shortfall(labeled_synthetic: pd.DataFrame, class_name: str, needed: int, kept: int, scenario: str) -> str:
    """What went short and how to fix it: the class's keep rate, why images were dropped, the factor to apply."""
    generated = labeled_synthetic[labeled_synthetic["intended_class"] == class_name]
    if generated.empty:
        return (
            f"The {scenario} needs {needed} kept synthetic images of class {class_name!r} but the pool has none: "
            f"generation made no image of {class_name!r}. Add it to generation.classes (or set that to null when "
            "study.augment_classes is null), and rerun generation and pseudo_labeling"
        )
    reasons = generated.loc[generated["verdict"] != "keep", "drop_reason"].value_counts().to_dict()
    rate = kept / len(generated) if len(generated) else 0.0
    factor = f"at least {needed / kept:.1f}" if kept else "much more"
    return (
        f"The {scenario} needs {needed} kept synthetic images of class {class_name!r} but the filtered pool has "
        f"{kept}: the filter kept {kept} of the {len(generated)} generated ({rate:.0%}; dropped: {reasons}). Multiply "
        f"generation.pool.oversample by {factor} and rerun generation and pseudo_labeling (the trained classifiers "
        "of the other arms are kept: add --only-missing-outputs), lower the arm's ratio, or, when the labeler is too "
        "weak to judge (see labeler_validation.csv; 'disagrees' dominates), set pseudo_labeling.filter.mode: guard_only"
    )


def synthetic_rows(labeled_synthetic: pd.DataFrame, wanted: dict[str, int], seed: int, scenario: str) -> pd.DataFrame:
    """``wanted[class]`` kept synthetic images per class, drawn in a seeded order shared by all scenarios.

    Every scenario takes a prefix of the same per-class permutation, so ``synthetic_x1`` is contained in
    ``synthetic_x2``: a ratio curve measures the ratio, not a different draw.
    """
    kept = kept_synthetic(labeled_synthetic)
    parts = []
    for class_name, count in wanted.items():
        pool = kept[kept["final_class"] == class_name].sort_values("image_id")
        if count > len(pool):
            raise ValueError(pool_shortfall(labeled_synthetic, class_name, count, len(pool), scenario))
        order = numpy_rng(derive_seed(seed, "synthetic_pool", class_name)).permutation(len(pool))[:count]
        chosen = pool.iloc[np.sort(order)]
        parts.append(
            pd.DataFrame(
                {
                    "image_id": chosen["image_id"].to_numpy(),
                    "label": chosen["final_label"].astype(int).to_numpy(),
                    "class_name": class_name,
                    "origin": "synthetic",
                    "image_key": chosen["image_key"].to_numpy(),
                }
            )
        )
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=TRAINING_COLUMNS)


def duplicate_rows(real: pd.DataFrame, wanted: dict[str, int], seed: int) -> pd.DataFrame:
    """``wanted[class]`` real train images of each class drawn again (cycling through a seeded order)."""
    parts = []
    for class_name, count in wanted.items():
        sources = real[real["class_name"] == class_name].sort_values("image_id")
        order = numpy_rng(derive_seed(seed, "count_matched", class_name)).permutation(len(sources))
        picked = sources.iloc[np.resize(order, count)]
        parts.append(
            picked.assign(image_id=picked["image_id"] + "_dup" + np.arange(count).astype(str), origin="duplicate")
        )
    return pd.concat(parts, ignore_index=True)[TRAINING_COLUMNS] if parts else pd.DataFrame(columns=TRAINING_COLUMNS)


def reduce_dominant(real: pd.DataFrame, selected_images: pd.DataFrame) -> pd.DataFrame:
    """Keep only the selected images of the reduced (dominant) classes; other classes stay whole."""
    reduced = set(selected_images["class_name"])
    keep = set(selected_images.loc[selected_images["selected"], "image_id"])
    return real[~real["class_name"].isin(reduced) | real["image_id"].isin(keep)]


def scenario_summary(arms: Mapping[str, ScenarioConfig], manifests: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per scenario: kind, ratio, augmentation and the training-set size by origin."""
    rows = []
    for name, spec in arms.items():
        counts = manifests[name].groupby("origin").size()
        rows.append(
            {
                "scenario": name,
                "kind": spec.kind,
                "ratio": spec.ratio,
                "augment": spec.augmented,
                "train_size": int(counts.sum()),
                **{f"n_{origin}": int(counts.get(origin, 0)) for origin in ORIGINS},
            }
        )
    return pd.DataFrame(rows)


def _require(table: pd.DataFrame | None, scenario: str, what: str) -> pd.DataFrame:
    if table is None or len(table) == 0:
        raise ValueError(f"The {scenario} needs {what}: run the pipelines that make it first")
    return table
