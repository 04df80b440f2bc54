import numpy as np
import pandas as pd
import pytest

from generative_augmentation.pipelines.hybrid_assembly.nodes import assemble_scenario, scenario_table
from generative_augmentation.scenarios import configured_scenarios, validate_scenario

COUNTS = {"a": 20, "b": 8, "c": 4}


@pytest.fixture
def manifest() -> pd.DataFrame:
    rows = []
    for label, (name, count) in enumerate(COUNTS.items()):
        for split, n in (("train", count), ("val", 3), ("test", 3)):
            rows += [{"image_id": f"{split}_{name}_{i}", "label": label, "class_name": name, "split": split,
                      "image_key": f"{split}/{name}/{split}_{name}_{i}"} for i in range(n)]  # fmt: skip
    return pd.DataFrame(rows)


@pytest.fixture
def labeled_synthetic() -> pd.DataFrame:
    rows = []
    for label, name in ((1, "b"), (2, "c")):
        for i in range(40):
            verdict = "drop" if i % 5 == 0 else "keep"
            image_id = f"syn_{name}_{i:03d}"
            rows.append({"image_id": image_id, "image_key": f"{name}/{image_id}", "verdict": verdict,
                         "final_class": name, "final_label": label})  # fmt: skip
    return pd.DataFrame(rows)


def spec(name: str, kind: str, ratio: float = 0.0, **extra) -> dict:
    return {**validate_scenario(name, {"kind": kind, "ratio": ratio, **extra}), "name": name}


def test_real_scenario_is_the_train_split_only(manifest: pd.DataFrame) -> None:
    real = assemble_scenario(manifest, spec("real", "real"), {}, 0)
    assert len(real) == sum(COUNTS.values())
    assert set(real["origin"]) == {"real"} and real["image_id"].str.startswith("train_").all()


def test_synthetic_ratio_adds_kept_images_of_minority_classes(manifest, labeled_synthetic) -> None:
    x2 = assemble_scenario(manifest, spec("s2", "synthetic", 2.0), {}, 0, labeled_synthetic)
    added = x2[x2["origin"] == "synthetic"]
    assert added.groupby("class_name").size().to_dict() == {"b": 16, "c": 8}
    kept = set(labeled_synthetic.loc[labeled_synthetic["verdict"] == "keep", "image_id"])
    assert set(added["image_id"]) <= kept and added["image_id"].is_unique
    x1 = assemble_scenario(manifest, spec("s1", "synthetic", 1.0), {}, 0, labeled_synthetic)
    assert set(x1.loc[x1["origin"] == "synthetic", "image_id"]) <= set(added["image_id"])


def test_same_seed_same_manifest_other_seed_other_draw(manifest, labeled_synthetic) -> None:
    first = assemble_scenario(manifest, spec("s", "synthetic", 1.0), {}, 7, labeled_synthetic)
    again = assemble_scenario(manifest, spec("s", "synthetic", 1.0), {}, 7, labeled_synthetic)
    other = assemble_scenario(manifest, spec("s", "synthetic", 1.0), {}, 8, labeled_synthetic)
    pd.testing.assert_frame_equal(first, again)
    assert not first["image_id"].equals(other["image_id"])


def test_traditional_copies_come_from_train_with_their_own_seeds(manifest) -> None:
    table = assemble_scenario(manifest, spec("t", "traditional", 1.5), {}, 0)
    copies = table[table["origin"] == "traditional"]
    assert copies.groupby("class_name").size().to_dict() == {"b": 12, "c": 6}
    assert copies["image_key"].str.startswith("train/").all()
    assert copies["augment_seed"].nunique() == len(copies) and table["image_id"].is_unique


def test_balanced_fills_up_to_the_largest_class(manifest, labeled_synthetic) -> None:
    table = assemble_scenario(manifest, spec("bal", "balanced"), {}, 0, labeled_synthetic)
    assert table.groupby("class_name").size().to_dict() == {"a": 20, "b": 20, "c": 20}


def test_reduced_scenario_keeps_only_selected_dominant_images(manifest, labeled_synthetic) -> None:
    selected = pd.DataFrame(
        {"image_id": [f"train_a_{i}" for i in range(20)], "class_name": "a", "selected": np.arange(20) < 6}
    )
    table = assemble_scenario(manifest, spec("r", "reduced_synthetic", 1.0), {}, 0, labeled_synthetic, selected)
    assert table.groupby(["class_name", "origin"]).size().to_dict() == {
        ("a", "real"): 6, ("b", "real"): 8, ("b", "synthetic"): 8, ("c", "real"): 4, ("c", "synthetic"): 4,
    }  # fmt: skip


def test_scenario_classes_parameter_is_honoured(manifest, labeled_synthetic) -> None:
    table = assemble_scenario(manifest, spec("s", "synthetic", 1.0, classes=["c"]), {}, 0, labeled_synthetic)
    assert table[table["origin"] == "synthetic"]["class_name"].unique().tolist() == ["c"]
    summary = scenario_table({"s": {"kind": "synthetic", "ratio": 1.0}}, s=table)
    assert summary.iloc[0][["train_size", "n_real", "n_synthetic"]].tolist() == [36, 32, 4]


def test_pool_too_small_names_class_and_counts(manifest, labeled_synthetic) -> None:
    with pytest.raises(ValueError, match=r"needs 40 kept synthetic images of class 'b' but the filtered pool has 32"):
        assemble_scenario(manifest, spec("s5", "synthetic", 5.0), {}, 0, labeled_synthetic)


def test_no_classes_to_augment_is_refused(manifest, labeled_synthetic) -> None:
    with pytest.raises(ValueError, match="No classes to augment"):
        assemble_scenario(manifest, spec("s", "synthetic", 1.0), {"augment_classes": []}, 0, labeled_synthetic)


def test_unknown_class_to_augment_is_named(manifest, labeled_synthetic) -> None:
    with pytest.raises(ValueError, match=r"\['zz'\] in hybrid_assembly.scenarios.s.classes"):
        assemble_scenario(manifest, spec("s", "synthetic", 1.0, classes=["zz"]), {}, 0, labeled_synthetic)


def test_synthetic_scenario_without_pool_is_refused(manifest) -> None:
    with pytest.raises(ValueError, match="needs labeled_synthetic"):
        assemble_scenario(manifest, spec("s", "synthetic", 1.0), {}, 0, pd.DataFrame())


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        ({"kind": "mixup"}, "Unknown scenario kind 'mixup' in hybrid_assembly.scenarios.bad.kind"),
        ({"kind": "synthetic", "ratio": -1}, r"hybrid_assembly.scenarios.bad.ratio must be at least 0"),
        ({"kind": "traditional"}, r"hybrid_assembly.scenarios.bad.ratio is required"),
    ],
)
def test_bad_scenarios_are_refused(scenario: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        configured_scenarios({"hybrid_assembly": {"scenarios": {"bad": scenario}}})


def test_scenario_name_must_be_an_identifier() -> None:
    with pytest.raises(ValueError, match="x1p5, not x1.5"):
        configured_scenarios({"hybrid_assembly": {"scenarios": {"synthetic_x1.5": {"kind": "real"}}}})
