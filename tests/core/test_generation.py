"""The synthetic pool: sizes, the plan (one row per image, seeds, clusters, sources), settings checked early."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from generative_augmentation.core.config import ConfigError
from generative_augmentation.core.generation import (
    GenerationConfig,
    PoolConfig,
    allocate_proportionally,
    plan_pool,
    pool_sizes,
    resolve_pool,
)
from generative_augmentation.core.runtime import derive_seed
from generative_augmentation.core.scenarios import ScenarioConfig
from tests.conftest import study_data

SEED = 7
COUNTS = pd.Series([12, 6, 4], index=["c0", "c1", "c2"])


@pytest.fixture(scope="module")
def manifest() -> pd.DataFrame:
    return study_data({"train": [12, 6, 4], "val": [2, 2, 2], "test": [3, 3, 3]}, size=8)[0]


def config(**values) -> GenerationConfig:
    defaults = {"pool": {"multiple": 1, "oversample": 1.0, "cover_balanced": False}, "min_train_images_per_class": 2}
    return GenerationConfig.parse({**defaults, **values})


def clusters_for(manifest: pd.DataFrame, sizes: dict[str, list[int]]) -> pd.DataFrame:
    """The train images of each class split into clusters of the given sizes (cluster ids 3, 5, ...)."""
    frames = []
    for name, cluster_sizes in sizes.items():
        train = manifest[(manifest["split"] == "train") & (manifest["class_name"] == name)].sort_values("image_id")
        frames.append(
            train[["image_id", "class_name", "label"]].assign(
                cluster=np.repeat(np.arange(len(cluster_sizes)) * 2 + 3, cluster_sizes)
            )
        )
    return pd.concat(frames, ignore_index=True)


def test_pool_size_is_a_multiple_of_the_train_count_times_oversample() -> None:
    assert pool_sizes(COUNTS, ["c1", "c2"], PoolConfig(multiple=4, oversample=1.0)) == {"c1": 24, "c2": 16}
    assert pool_sizes(COUNTS, ["c1", "c2"], PoolConfig(multiple=4, oversample=1.25)) == {"c1": 30, "c2": 20}
    assert pool_sizes(COUNTS, ["c2"], PoolConfig(multiple=0.5, oversample=1.1, cover_balanced=False)) == {"c2": 3}


def test_an_auto_pool_holds_what_the_study_draws() -> None:
    def arms(**kinds: tuple[str, float]) -> dict[str, ScenarioConfig]:
        return {name: ScenarioConfig(kind=kind, ratio=ratio) for name, (kind, ratio) in kinds.items()}

    auto = PoolConfig(oversample=1.0)
    x2 = resolve_pool(auto, arms(real=("real", 0.0), s1=("synthetic", 1.0), r2=("reduced_synthetic", 2.0)))
    assert (x2.multiple, x2.cover_balanced) == (2.0, False)
    assert pool_sizes(COUNTS, ["c1", "c2"], x2) == {"c1": 12, "c2": 8}
    balanced = resolve_pool(auto, arms(real=("real", 0.0), b=("balanced", 0.0)))
    assert (balanced.multiple, balanced.cover_balanced) == (0.0, True)
    assert pool_sizes(COUNTS, ["c1", "c2"], balanced) == {"c1": 6, "c2": 8}  # the gaps to c0's 12
    assert resolve_pool(auto, arms(real=("real", 0.0))).multiple == 1.0  # nothing drawn: a pool to look at
    fixed = resolve_pool(PoolConfig(multiple=4, cover_balanced=False), arms(b=("balanced", 0.0)))
    assert (fixed.multiple, fixed.cover_balanced) == (4, False)  # explicit settings win


def test_the_pool_covers_the_gap_to_the_largest_class_for_the_balanced_scenario() -> None:
    assert pool_sizes(COUNTS, ["c1", "c2"], PoolConfig(multiple=0.5, oversample=1.0)) == {"c1": 6, "c2": 8}
    balanced = PoolConfig(balance_to_largest=True, oversample=1.5)
    assert pool_sizes(COUNTS, ["c0", "c1", "c2"], balanced) == {"c0": 0, "c1": 9, "c2": 12}
    with pytest.raises(ConfigError, match="zero images.*balance_to_largest"):
        pool_sizes(COUNTS, ["c0"], PoolConfig(balance_to_largest=True))


def test_the_plan_covers_the_minority_classes_with_unique_ids_and_derived_seeds(manifest: pd.DataFrame) -> None:
    training_set, plan = plan_pool(manifest, None, config(pool={"multiple": 4, "oversample": 1.25}), SEED)
    assert (training_set["image_id"].str.startswith("train_")).all() and len(training_set) == 22
    assert plan.groupby("intended_class").size().to_dict() == {"c1": 30, "c2": 20}
    assert plan["image_id"].is_unique and plan["seed"].is_unique
    assert (plan["image_key"] == plan["intended_class"] + "/" + plan["image_id"]).all()
    assert plan.loc[0, "seed"] == derive_seed(SEED, "generation", "image", "c1", 0)
    assert (plan["sampler"] == "dpm_solver_sde").all() and (plan["source_image_id"] == "").all()
    again = plan_pool(manifest, None, config(pool={"multiple": 4, "oversample": 1.25}), SEED)[1]
    pd.testing.assert_frame_equal(plan, again)
    other = plan_pool(manifest, None, config(pool={"multiple": 4, "oversample": 1.25}), SEED + 1)[1]
    assert not set(other["seed"]) & set(plan["seed"])


def test_variation_rows_record_a_train_source_of_their_class_and_a_reproducible_strength(manifest) -> None:
    sampling = {"mode": "image_to_image", "strength": [0.25, 0.5, 0.75], "class_strength": {"c2": 0.3}}
    settings = config(pool={"multiple": 3, "oversample": 1.0, "cover_balanced": False}, ddpm={"sampling": sampling})
    training_set, plan = plan_pool(manifest, None, settings, SEED)
    sources = plan.merge(training_set, left_on="source_image_id", right_on="image_id", suffixes=("", "_source"))
    assert len(sources) == len(plan) and (sources["class_name"] == sources["intended_class"]).all()
    assert sources["source_image_id"].str.startswith("train_").all()
    per_source = plan[plan["intended_class"] == "c1"].groupby("source_image_id").size()
    assert len(per_source) == 6 and (per_source == 3).all()  # every c1 train image, three variants each
    assert set(plan.loc[plan["intended_class"] == "c1", "strength"]) == {0.25, 0.5, 0.75}
    assert (plan.loc[plan["intended_class"] == "c2", "strength"] == 0.3).all()
    assert (plan["mode"] == "image_to_image").all()
    pd.testing.assert_frame_equal(plan, plan_pool(manifest, None, settings, SEED)[1])


def test_an_every_class_arm_makes_the_pool_cover_every_class(manifest: pd.DataFrame) -> None:
    arms = {"s": ScenarioConfig(kind="synthetic", ratio=1.0, every_class=True)}
    _, plan = plan_pool(manifest, None, config(pool={"multiple": "auto"}), SEED, arms)
    counts = manifest[manifest["split"] == "train"].groupby("class_name").size()
    planned = plan.groupby("intended_class").size()
    assert set(planned.index) == set(counts.index)
    assert (planned >= counts).all()  # ratio 1: at least each class's own train count (before oversampling)
    _, minority_only = plan_pool(
        manifest, None, config(pool={"multiple": "auto"}), SEED, {"s": ScenarioConfig(kind="synthetic", ratio=1.0)}
    )
    assert set(minority_only["intended_class"]) < set(counts.index)


def test_an_arm_drawing_a_class_the_pool_lacks_is_refused_before_training(manifest: pd.DataFrame) -> None:
    every = {"s": ScenarioConfig(kind="synthetic", ratio=1.0, every_class=True)}
    with pytest.raises(
        ConfigError, match=r"Arm s draws synthetic images of \['c0'\] \(every_class\), which generation.classes"
    ):
        plan_pool(manifest, None, config(classes=["c1", "c2"]), SEED, every)
    own = {"t": ScenarioConfig(kind="synthetic", ratio=1.0, classes=["c2"])}
    with pytest.raises(ConfigError, match=r"Arm t draws synthetic images of \['c2'\]"):
        plan_pool(manifest, None, config(classes=["c1"]), SEED, own)
    study_wide = {"u": ScenarioConfig(kind="synthetic", ratio=1.0)}
    with pytest.raises(ConfigError, match=r"Arm u draws synthetic images of \['c0'\] \(study.augment_classes\)"):
        plan_pool(manifest, None, config(classes=["c1", "c2"]), SEED, study_wide, ["c0", "c1"])
    _, plan = plan_pool(manifest, None, config(classes=["c0", "c1"]), SEED, study_wide, ["c0", "c1"])
    assert sorted(plan["intended_class"].unique()) == ["c0", "c1"]


def test_a_balanced_train_set_generates_every_class(manifest: pd.DataFrame, caplog) -> None:
    balanced = manifest[manifest.groupby(["split", "label"]).cumcount() < 4]
    with caplog.at_level("INFO"):
        _, plan = plan_pool(balanced, None, config(), SEED)
    assert sorted(plan["intended_class"].unique()) == ["c0", "c1", "c2"]
    assert "The train split is balanced (4 images per class): no class is a minority" in caplog.text


def test_shares_are_proportional_with_largest_remainder_rounding() -> None:
    assert allocate_proportionally(10, pd.Series([5, 3, 2])).tolist() == [5, 3, 2]
    assert allocate_proportionally(7, pd.Series([5, 3, 2])).tolist() == [4, 2, 1]
    assert allocate_proportionally(0, pd.Series([1, 1])).tolist() == [0, 0]


def test_each_cluster_gets_a_share_of_the_pool_proportional_to_its_size(manifest: pd.DataFrame) -> None:
    clusters = clusters_for(manifest, {"c0": [12], "c1": [4, 2], "c2": [1, 3]})
    training_set, plan = plan_pool(
        manifest, clusters, config(pool={"multiple": 3, "oversample": 1.0, "cover_balanced": False}), SEED
    )
    assert plan.groupby(["intended_class", "cluster"]).size().to_dict() == {
        ("c1", 3): 12,
        ("c1", 5): 6,
        ("c2", 3): 3,
        ("c2", 5): 9,
    }
    assert plan.groupby("cluster")["cluster_index"].first().to_dict() == {3: 0, 5: 1}
    assert set(training_set["cluster"]) == {3, 5}
    _, ignored = plan_pool(manifest, clusters, config(use_clusters=False), SEED)
    assert (ignored["cluster"] == -1).all()


def test_cluster_settings_and_stale_clusters_are_named(manifest: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match="generation.use_clusters is true but the `clusters` dataset"):
        plan_pool(manifest, None, config(use_clusters=True), SEED)
    with pytest.raises(ConfigError, match="generation.use_clusters"):
        config(use_clusters="sometimes")
    with pytest.raises(ValueError, match="no cluster for 4 train images"):
        plan_pool(manifest, clusters_for(manifest, {"c0": [12], "c1": [6]}), config(), SEED)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"pool": {"multiple": -1}}, r"generation.pool.multiple must be at least 0"),
        ({"pool": {"multiple": "four"}}, r"generation.pool.multiple must be"),
        ({"pool": {"cover_balanced": "sometimes"}}, r"generation.pool.cover_balanced must be"),
        ({"pool": {"oversample": 0.5}}, r"generation.pool.oversample must be at least 1"),
        ({"classes": ["c1", "retina"]}, r"generation.classes names \['retina'\].*known: \['c0', 'c1', 'c2'\]"),
        ({"classes": []}, r"generation.classes is an empty list"),
        ({"min_train_images_per_class": 5}, r"Class 'c2' has 4 train images.*generation.min_train_images_per_class"),
        ({"generator": "vae"}, r"generation.generator must be one of"),
        ({"ddpm": {"sampling": {"sampler": "euler"}}}, r"generation.ddpm.sampling.sampler must be one of"),
        ({"ddpm": {"sampling": {"steps": 0}}}, r"generation.ddpm.sampling.steps must be at least 1"),
        ({"ddpm": {"sampling": {"batch_size": 0}}}, r"generation.ddpm.sampling.batch_size must be at least 1"),
        ({"ddpm": {"sampling": {"guidance_scale": -1}}}, r"generation.ddpm.sampling.guidance_scale must be at least 0"),
        ({"ddpm": {"image_size": 8}}, r"Unknown parameter\(s\) generation.ddpm.image_size"),
        ({"stable_diffusion": {"steps": 0}}, r"generation.stable_diffusion.steps must be at least 1"),
    ],
)
def test_bad_settings_are_named_before_any_work(manifest: pd.DataFrame, values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_pool(manifest, None, config(**values), SEED)
