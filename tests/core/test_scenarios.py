"""The arms of a study: what each scenario trains on, and the checks of the study's parameters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from generative_augmentation.core.config import ConfigError
from generative_augmentation.core.scenarios import (
    ScenarioConfig,
    StudyConfig,
    assemble,
    scenario_summary,
    study_scenarios,
)

COUNTS = {"a": 20, "b": 8, "c": 4}
STUDY = StudyConfig()


@pytest.fixture
def manifest() -> pd.DataFrame:
    rows = []
    for label, (name, count) in enumerate(COUNTS.items()):
        for split, n in (("train", count), ("val", 3), ("test", 3)):
            rows += [
                {
                    "image_id": f"{split}_{name}_{i}",
                    "label": label,
                    "class_name": name,
                    "split": split,
                    "image_key": f"{split}/{name}/{split}_{name}_{i}",
                }
                for i in range(n)
            ]
    return pd.DataFrame(rows)


@pytest.fixture
def labeled_synthetic() -> pd.DataFrame:
    rows = []
    for label, name in ((1, "b"), (2, "c")):
        for i in range(40):
            image_id = f"syn_{name}_{i:03d}"
            rows.append(
                {
                    "image_id": image_id,
                    "image_key": f"{name}/{image_id}",
                    "verdict": "drop" if i % 5 == 0 else "keep",
                    "drop_reason": "disagrees" if i % 5 == 0 else None,
                    "intended_class": name,
                    "final_class": name,
                    "final_label": label,
                }
            )
    return pd.DataFrame(rows)


def spec(kind: str, ratio: float = 0.0, **extra) -> ScenarioConfig:
    return ScenarioConfig.parse({"kind": kind, "ratio": ratio, **extra}, "scenarios.test")


def test_real_and_traditional_train_on_the_train_split_only(manifest: pd.DataFrame) -> None:
    for kind in ("real", "traditional"):
        table = assemble(spec(kind), STUDY, manifest, 0)
        assert len(table) == sum(COUNTS.values()) and set(table["origin"]) == {"real"}
        assert table["image_id"].str.startswith("train_").all()
    assert spec("traditional").augmented and not spec("real").augmented and spec("synthetic", 1, augment=True).augmented


def test_a_synthetic_ratio_adds_kept_images_of_the_minority_classes(manifest, labeled_synthetic) -> None:
    x2 = assemble(spec("synthetic", 2.0), STUDY, manifest, 0, labeled_synthetic)
    added = x2[x2["origin"] == "synthetic"]
    assert added.groupby("class_name").size().to_dict() == {"b": 16, "c": 8}
    kept = set(labeled_synthetic.loc[labeled_synthetic["verdict"] == "keep", "image_id"])
    assert set(added["image_id"]) <= kept and added["image_id"].is_unique
    x1 = assemble(spec("synthetic", 1.0), STUDY, manifest, 0, labeled_synthetic)
    assert set(x1.loc[x1["origin"] == "synthetic", "image_id"]) <= set(added["image_id"])


def test_a_count_matched_control_has_exactly_the_count_and_class_mix_of_its_synthetic_arm(
    manifest, labeled_synthetic
) -> None:
    synthetic = assemble(spec("synthetic", 1.5), STUDY, manifest, 0, labeled_synthetic)
    control = assemble(spec("count_matched", controls="s"), STUDY, manifest, 0, controlled=spec("synthetic", 1.5))
    extra = control[control["origin"] == "duplicate"]
    assert len(control) == len(synthetic)
    assert (
        extra.groupby("class_name").size().to_dict()
        == synthetic[synthetic["origin"] == "synthetic"].groupby("class_name").size().to_dict()
    )
    train = set(manifest.loc[manifest["split"] == "train", "image_key"])
    assert set(extra["image_key"]) <= train and control["image_id"].is_unique


def test_same_seed_same_manifest_other_seed_other_draw(manifest, labeled_synthetic) -> None:
    first = assemble(spec("synthetic", 1.0), STUDY, manifest, 7, labeled_synthetic)
    pd.testing.assert_frame_equal(first, assemble(spec("synthetic", 1.0), STUDY, manifest, 7, labeled_synthetic))
    assert not first["image_id"].equals(
        assemble(spec("synthetic", 1.0), STUDY, manifest, 8, labeled_synthetic)["image_id"]
    )


def test_balanced_fills_up_to_the_largest_class(manifest, labeled_synthetic) -> None:
    table = assemble(spec("balanced"), STUDY, manifest, 0, labeled_synthetic)
    assert table.groupby("class_name").size().to_dict() == {"a": 20, "b": 20, "c": 20}


def test_reduced_scenario_keeps_only_the_selected_dominant_images(manifest, labeled_synthetic) -> None:
    selected = pd.DataFrame(
        {"image_id": [f"train_a_{i}" for i in range(20)], "class_name": "a", "selected": np.arange(20) < 6}
    )
    table = assemble(spec("reduced_synthetic", 1.0), STUDY, manifest, 0, labeled_synthetic, selected)
    assert table.groupby(["class_name", "origin"]).size().to_dict() == {
        ("a", "real"): 6,
        ("b", "real"): 8,
        ("b", "synthetic"): 8,
        ("c", "real"): 4,
        ("c", "synthetic"): 4,
    }


def test_a_scenario_may_name_its_own_classes_and_the_summary_counts_origins(manifest, labeled_synthetic) -> None:
    table = assemble(spec("synthetic", 1.0, classes=["c"]), STUDY, manifest, 0, labeled_synthetic)
    assert table[table["origin"] == "synthetic"]["class_name"].unique().tolist() == ["c"]
    summary = scenario_summary({"s": spec("synthetic", 1.0)}, {"s": table})
    assert summary.iloc[0][["train_size", "n_real", "n_synthetic", "n_duplicate"]].tolist() == [36, 32, 4, 0]


def test_every_class_gives_every_class_the_same_synthetic_share(manifest, labeled_synthetic) -> None:
    pool = pd.concat(
        [
            labeled_synthetic,
            pd.DataFrame(
                {
                    "image_id": [f"syn_a_{i:03d}" for i in range(40)],
                    "image_key": [f"a/syn_a_{i:03d}" for i in range(40)],
                    "verdict": "keep",
                    "final_class": "a",
                    "final_label": 0,
                }
            ),
        ],
        ignore_index=True,
    )
    table = assemble(spec("synthetic", 1.5, every_class=True), STUDY, manifest, 0, pool)
    by_origin = table.groupby(["class_name", "origin"]).size().unstack()
    assert by_origin["synthetic"].to_dict() == {"a": 30, "b": 12, "c": 6}  # the dominant class 'a' too
    share = by_origin["synthetic"] / by_origin.sum(axis=1)
    assert np.allclose(share, 0.6)  # 1.5 / 2.5 in every class: being synthetic says nothing about the label
    with pytest.raises(ValueError, match=r"needs 30 kept synthetic images of class 'a' but the pool has none") as gap:
        assemble(spec("synthetic", 1.5, every_class=True), STUDY, manifest, 0, labeled_synthetic)
    assert "generation made no image of 'a'. Add it to generation.classes" in str(gap.value)
    assert "oversample" not in str(gap.value)  # more of the same pool would never hold class 'a


def test_missing_inputs_and_a_small_pool_are_named(manifest, labeled_synthetic) -> None:
    with pytest.raises(
        ValueError, match=r"needs 40 kept synthetic images of class 'b' but the filtered pool has 32"
    ) as short:
        assemble(spec("synthetic", 5.0), STUDY, manifest, 0, labeled_synthetic)
    assert "kept 32 of the 40 generated (80%; dropped: {'disagrees': 8})" in str(short.value)
    assert "Multiply generation.pool.oversample by at least 1.2" in str(short.value) and "guard_only" in str(
        short.value
    )
    with pytest.raises(ValueError, match="needs labeled_synthetic"):
        assemble(spec("synthetic", 1.0), STUDY, manifest, 0, pd.DataFrame())
    with pytest.raises(ValueError, match=r"scenarios.test.classes names \['zz'\]"):
        assemble(spec("synthetic", 1.0, classes=["zz"]), STUDY, manifest, 0, labeled_synthetic)
    with pytest.raises(ValueError, match="study.augment_classes is an empty list"):
        assemble(spec("synthetic", 1.0), StudyConfig(augment_classes=[]), manifest, 0, labeled_synthetic)


@pytest.mark.parametrize(
    ("scenarios", "arms", "message"),
    [
        ({"bad": {"kind": "mixup"}}, ["bad"], r"scenarios.bad.kind must be one of \["),
        ({"bad": {"kind": "synthetic", "ratio": -1}}, ["bad"], r"scenarios.bad.ratio must be at least 0"),
        ({"bad": {"kind": "synthetic"}}, ["bad"], r"scenarios.bad.ratio must be positive for kind 'synthetic'"),
        ({"bad": {"kind": "count_matched"}}, ["bad"], r"scenarios.bad.controls names the synthetic scenario"),
        (
            {"c": {"kind": "count_matched", "controls": "r"}, "r": {"kind": "real"}},
            ["c", "r"],
            r"scenarios.c.controls must name a synthetic arm",
        ),
        ({"real": {"kind": "real"}}, ["real", "absent"], r"study.arms names \['absent'\], which are not defined"),
        ({"real": {"kind": "real"}}, [], r"study.arms is empty"),
        ({"x1.5": {"kind": "real"}}, ["x1.5"], r"not Python identifiers \(write synthetic_x1p5"),
        (
            {"bad": {"kind": "balanced", "every_class": True}},
            ["bad"],
            r"scenarios.bad.every_class applies to the kinds",
        ),
        (
            {"bad": {"kind": "synthetic", "ratio": 1.0, "every_class": True, "classes": ["b"]}},
            ["bad"],
            r"scenarios.bad.every_class and classes exclude each other",
        ),
        ({"bad": {"kind": "real", "pretrain_share": 0.5}}, ["bad"], r"scenarios.bad.pretrain_share applies to arms"),
        (
            {"bad": {"kind": "synthetic", "ratio": 1, "pretrain_share": 1.0}},
            ["bad"],
            r"pretrain_share must be in \(0, 1\)",
        ),
        (
            {"bad": {"kind": "synthetic", "ratio": 1, "pretrain_share": 0.5, "synthetic_probability": 0.5}},
            ["bad"],
            r"scenarios.bad.pretrain_share and synthetic_probability exclude each other",
        ),
        (
            {"bad": {"kind": "synthetic", "ratio": 1, "synthetic_loss_weight": 0}},
            ["bad"],
            r"synthetic_loss_weight must be positive",
        ),
        (
            {"bad": {"kind": "traditional", "synthetic_loss_weight": 0.5}},
            ["bad"],
            r"synthetic_loss_weight applies to arms",
        ),
        ({"bad": {"kind": "real", "teacher_weight": 0.5}}, ["bad"], r"scenarios.bad.teacher_weight applies to arms"),
        (
            {"bad": {"kind": "synthetic", "ratio": 1, "teacher_weight": 1.5}},
            ["bad"],
            r"scenarios.bad.teacher_weight must be in \[0, 1\], got 1.5",
        ),
    ],
)
def test_bad_study_parameters_are_refused(scenarios: dict, arms: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        study_scenarios({"arms": arms, "statistics": {"contrasts": [["p", "q"]]}}, scenarios)  # arms fail first


SYNTHETIC_STUDY = {"s": {"kind": "synthetic", "ratio": 1.0}, "r": {"kind": "real"}, "t": {"kind": "traditional"}}


@pytest.mark.parametrize(
    ("contrasts", "message"),
    [
        ([], r"study.statistics.contrasts is empty"),
        ([["s", "s"]], r"study.statistics.contrasts must list \[treatment, control\] pairs of two different arms"),
        ([["s", "r", "t"]], r"must list \[treatment, control\] pairs"),
        ([["s", "absent"]], r"study.statistics.contrasts names 'absent', which is not in study.arms"),
        ([["best_synthetic", "count_matched"]], r"no count_matched arm controlling \['s'\]"),
    ],
)
def test_bad_contrasts_are_refused_before_anything_runs(contrasts: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        study_scenarios({"arms": ["r", "t", "s"], "statistics": {"contrasts": contrasts}}, SYNTHETIC_STUDY)
    with pytest.raises(ConfigError, match=r"names best_synthetic but no arm of study.arms draws synthetic images"):
        study_scenarios({"arms": ["r", "t"], "statistics": {"contrasts": [["best_synthetic", "r"]]}}, SYNTHETIC_STUDY)


def test_a_recipe_arm_shares_the_control_of_the_arm_with_the_same_draw() -> None:
    from generative_augmentation.core.scenarios import count_matched_control

    arms = {
        "synthetic_x1": spec("synthetic", 1.0),
        "count_matched_x1": spec("count_matched", controls="synthetic_x1"),
        "pretrained_x1": spec("synthetic", 1.0, pretrain_share=0.3),
        "taught_x1": spec("synthetic", 1.0, teacher_weight=0.5, synthetic_loss_weight=0.5),
        "every_x1": spec("synthetic", 1.0, every_class=True),
        "synthetic_x2": spec("synthetic", 2.0),
    }
    assert count_matched_control("synthetic_x1", arms) == "count_matched_x1"
    assert count_matched_control("pretrained_x1", arms) == "count_matched_x1"  # same counts and class mix
    assert count_matched_control("taught_x1", arms) == "count_matched_x1"
    assert count_matched_control("every_x1", arms) is None  # another class mix
    assert count_matched_control("synthetic_x2", arms) is None  # twice the count
    arms["augmented_x1"] = spec("synthetic", 1.0, augment=True)
    assert count_matched_control("augmented_x1", arms) is None  # its control must be augmented too
