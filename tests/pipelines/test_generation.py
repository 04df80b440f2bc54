"""The generation pipeline on tiny data: pool planning, DDPM and Stable Diffusion end to end, bad input."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_datasets.pandas import ParquetDataset
from kedro_datasets.partitions import PartitionedDataset
from PIL import Image

from generative_augmentation.core.runtime import derive_seed
from generative_augmentation.datasets import OptionalDataset, SafetensorsModelDataset
from generative_augmentation.pipelines.generation import create_pipeline
from generative_augmentation.pipelines.generation.nodes import (
    MANIFEST_COLUMNS,
    _stable_diffusion_with_lora,
    allocate_proportionally,
    generate_images,
    generate_synthetic_pool,
    plan_generation,
    pool_sizes,
    report_generation,
    target_classes,
    train_generator,
)
from tests.conftest import class_image
from tests.core.tiny_sd import build_tiny_stable_diffusion

SIZE = 8
IMAGE = {"size": SIZE, "mode": "RGB"}
SEED = 7
CLASSES = ["c0", "c1", "c2"]
TRAIN_COUNTS = [12, 6, 4]


def deep_update(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        merged[key] = deep_update(merged[key], value) if isinstance(value, dict) and key in merged else value
    return merged


def params(**overrides: Any) -> dict[str, Any]:
    """Tiny generation parameters (8 px, a 2-level UNet, a few steps); ``overrides`` merge in deeply."""
    base = {
        "generator": "ddpm",
        "classes": None,
        "pool": {"multiple": 1, "balance_to_largest": False, "oversample": 1.0, "cover_balanced": False},
        "use_clusters": "auto",
        "min_train_images_per_class": 2,
        "checkpoint_dir": None,
        "keep_checkpoints": False,
        "device": "cpu",
        "ddpm": {
            "block_out_channels": [16, 32],
            "train_steps": 4,
            "batch_size": 8,
            "learning_rate": 0.002,
            "warmup_steps": 1,
            "num_train_timesteps": 50,
            "checkpoint_every": 2,
            "sampling": {"sampler": "dpm_solver", "steps": 3, "guidance_scale": 2.0, "batch_size": 16},
        },
        "stable_diffusion": {
            "model": None,
            "mode": "text_to_image",
            "strength": 0.6,
            "sampler": "dpm_solver",
            "steps": 2,
            "guidance_scale": 3.0,
            "batch_size": 4,
            "prompt_template": "a fundus photo, {class_name}",
            "prompts": {"c1": "retina fundus"},
            "negative_prompt": "blurry",
            "lora": {
                "rank": 4,
                "alpha": 8,
                "train_steps": 2,
                "batch_size": 2,
                "learning_rate": 0.01,
                "checkpoint_every": 2,
            },
        },
        "report": {"images_per_row": 3},
    }
    return deep_update(base, overrides)


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, dict[str, Image.Image]]:
    """A manifest and its PNG partitions: 3 classes with 12 / 6 / 4 train images, plus val and test."""
    rng = np.random.default_rng(0)
    rows, images = [], {}
    for split, counts in (("train", TRAIN_COUNTS), ("val", [2, 2, 2]), ("test", [3, 3, 3])):
        for label, count in enumerate(counts):
            for index in range(count):
                image_id = f"{split}_{label}_{index:03d}"
                key = f"{split}/{CLASSES[label]}/{image_id}"
                rows.append(
                    {
                        "image_id": image_id,
                        "label": label,
                        "class_name": CLASSES[label],
                        "split": split,
                        "image_key": key,
                    }
                )
                images[key] = Image.fromarray(class_image(label, rng, SIZE))
    return pd.DataFrame(rows), images


@pytest.fixture(scope="module")
def ddpm_run(data: tuple[pd.DataFrame, dict]) -> dict[str, Any]:
    """One planned, trained and generated tiny DDPM pool, shared by the tests that only read it."""
    manifest, images = data
    training_set, plan = plan_generation(manifest, None, params(), SEED)
    generator, log = train_generator(training_set, images, params(), IMAGE, SEED)
    partitions, synthetic = generate_synthetic_pool(generator, plan, images, params(), IMAGE)
    return {"training_set": training_set, "plan": plan, "generator": generator, "log": log,
            "partitions": partitions, "manifest": synthetic}  # fmt: skip


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny_sd"))


def counts_series() -> pd.Series:
    return pd.Series(TRAIN_COUNTS, index=CLASSES)


def clusters_for(manifest: pd.DataFrame, sizes: dict[str, list[int]]) -> pd.DataFrame:
    """A clusters table: the train images of each class split into clusters of the given sizes (ids 3, 5, ...)."""
    frames = []
    for name, cluster_sizes in sizes.items():
        train = manifest[(manifest["split"] == "train") & (manifest["class_name"] == name)].sort_values("image_id")
        ids = np.repeat(np.arange(len(cluster_sizes)) * 2 + 3, cluster_sizes)
        frames.append(train[["image_id", "class_name", "label"]].assign(cluster=ids))
    return pd.concat(frames, ignore_index=True)


# --- pool sizing -------------------------------------------------------------------------------------------------
def test_pool_size_is_a_multiple_of_the_train_count_times_oversample() -> None:
    assert pool_sizes(counts_series(), ["c1", "c2"], {"multiple": 4}) == {"c1": 24, "c2": 16}
    assert pool_sizes(counts_series(), ["c1", "c2"], {"multiple": 4, "oversample": 1.25}) == {"c1": 30, "c2": 20}
    assert pool_sizes(counts_series(), ["c2"], {"multiple": 0.5, "oversample": 1.1, "cover_balanced": False}) == {
        "c2": 3
    }


def test_pool_covers_the_gap_to_the_largest_class_for_the_balanced_scenario() -> None:
    assert pool_sizes(counts_series(), ["c1", "c2"], {"multiple": 0.5}) == {"c1": 6, "c2": 8}
    assert pool_sizes(counts_series(), ["c1", "c2"], {"multiple": 0.5, "cover_balanced": False}) == {"c1": 3, "c2": 2}


def test_balance_to_largest_fills_the_gap_to_the_largest_class() -> None:
    pool = {"multiple": 4, "balance_to_largest": True}
    assert pool_sizes(counts_series(), ["c0", "c1", "c2"], pool) == {"c0": 0, "c1": 6, "c2": 8}
    assert pool_sizes(counts_series(), ["c1", "c2"], {**pool, "oversample": 1.5}) == {"c1": 9, "c2": 12}


def test_default_classes_are_those_below_the_largest_and_a_list_keeps_label_order() -> None:
    assert target_classes(None, counts_series()) == ["c1", "c2"]
    assert target_classes(["c2", "c0"], counts_series()) == ["c0", "c2"]
    assert target_classes("c1", counts_series()) == ["c1"]
    with pytest.raises(ValueError, match="every class has 5 train images"):
        target_classes(None, pd.Series([5, 5], index=["a", "b"]))


def test_the_plan_covers_the_default_classes_with_unique_ids_and_seeds(data: tuple[pd.DataFrame, dict]) -> None:
    manifest, _ = data
    training_set, plan = plan_generation(manifest, None, params(pool={"multiple": 4, "oversample": 1.25}), SEED)
    assert set(training_set["image_id"].str.split("_").str[0]) == {"train"}
    assert plan.groupby("intended_class").size().to_dict() == {"c1": 30, "c2": 20}
    assert plan["image_id"].is_unique and plan["seed"].is_unique
    assert (plan["image_key"] == plan["intended_class"] + "/" + plan["image_id"]).all()
    assert plan.loc[0, "seed"] == derive_seed(SEED, "generation", "image", "c1", 0)


# --- clusters ----------------------------------------------------------------------------------------------------
def test_shares_are_proportional_with_largest_remainder_rounding() -> None:
    assert allocate_proportionally(10, pd.Series([5, 3, 2])).tolist() == [5, 3, 2]
    assert allocate_proportionally(7, pd.Series([5, 3, 2])).tolist() == [4, 2, 1]
    assert allocate_proportionally(0, pd.Series([1, 1])).tolist() == [0, 0]


def test_each_cluster_gets_a_share_of_the_pool_proportional_to_its_size(data: tuple[pd.DataFrame, dict]) -> None:
    manifest, _ = data
    clusters = clusters_for(manifest, {"c0": [12], "c1": [4, 2], "c2": [1, 3]})
    training_set, plan = plan_generation(manifest, clusters, params(pool={"multiple": 3}), SEED)
    assert plan.groupby(["intended_class", "cluster"]).size().to_dict() == {
        ("c1", 3): 12, ("c1", 5): 6, ("c2", 3): 3, ("c2", 5): 9,
    }  # fmt: skip
    assert plan.groupby("cluster")["cluster_index"].first().to_dict() == {3: 0, 5: 1}
    assert set(training_set["cluster"]) == {3, 5}
    _, ignored = plan_generation(manifest, clusters, params(use_clusters=False), SEED)
    assert (ignored["cluster"] == -1).all()


def test_cluster_conditioned_ddpm_generates_each_clusters_share(data: tuple[pd.DataFrame, dict]) -> None:
    manifest, images = data
    clusters = clusters_for(manifest, {"c0": [6, 6], "c1": [3, 3], "c2": [2, 2]})
    settings = params(use_clusters=True, ddpm={"train_steps": 2})
    training_set, plan = plan_generation(manifest, clusters, settings, SEED)
    generator, _ = train_generator(training_set, images, settings, IMAGE, SEED)
    assert generator["config"]["ddpm"]["num_clusters"] == 2
    partitions, synthetic = generate_synthetic_pool(generator, plan, images, settings, IMAGE)
    assert synthetic.groupby(["intended_class", "cluster"]).size().to_dict() == {
        ("c1", 3): 3, ("c1", 5): 3, ("c2", 3): 2, ("c2", 5): 2,
    }  # fmt: skip
    assert len(partitions) == 10


def test_cluster_parameters_and_stale_clusters_are_named(data: tuple[pd.DataFrame, dict]) -> None:
    manifest, _ = data
    with pytest.raises(ValueError, match="generation.use_clusters is true"):
        plan_generation(manifest, None, params(use_clusters=True), SEED)
    with pytest.raises(ValueError, match="generation.use_clusters must be one of"):
        plan_generation(manifest, None, params(use_clusters="sometimes"), SEED)
    stale = clusters_for(manifest, {"c0": [12], "c1": [6]})
    with pytest.raises(ValueError, match="no cluster for 4 train images"):
        plan_generation(manifest, stale, params(), SEED)


# --- DDPM end to end ---------------------------------------------------------------------------------------------
def test_ddpm_pool_has_the_manifest_columns_and_one_png_per_row(ddpm_run: dict[str, Any]) -> None:
    synthetic, partitions = ddpm_run["manifest"], ddpm_run["partitions"]
    required = {"image_id", "intended_class", "label", "generator", "seed", "cluster", "prompt", "path", "image_key"}
    assert required <= set(synthetic.columns) and list(synthetic.columns) == MANIFEST_COLUMNS
    assert synthetic.groupby("intended_class").size().to_dict() == {"c1": 6, "c2": 4}
    assert (synthetic["label"] == synthetic["intended_class"].map({"c1": 1, "c2": 2})).all()
    assert (synthetic["generator"] == "ddpm").all() and (synthetic["cluster"] == -1).all()
    assert (synthetic["prompt"] == "").all() and (synthetic["path"] == synthetic["image_key"]).all()
    assert synthetic["seed"].dtype == np.int64 and synthetic["steps"].eq(3).all()
    assert list(partitions) == synthetic["image_key"].tolist()
    assert all(image.size == (SIZE, SIZE) and image.mode == "RGB" for image in partitions.values())
    assert ddpm_run["log"]["loss"].notna().all() and len(ddpm_run["log"]) == 4


def test_one_manifest_row_regenerates_its_image(ddpm_run: dict[str, Any], data: tuple[pd.DataFrame, dict]) -> None:
    synthetic, partitions = ddpm_run["manifest"], ddpm_run["partitions"]
    row = synthetic.iloc[[7]]
    again = generate_images(ddpm_run["generator"], row, data[1], params(), IMAGE)
    original = np.asarray(partitions[row["image_key"].iloc[0]])
    assert np.abs(again[0].astype(int) - original.astype(int)).max() <= 1


def test_same_seed_same_pool_other_seed_other_pool(ddpm_run: dict[str, Any], data: tuple[pd.DataFrame, dict]) -> None:
    manifest, images = data
    training_set, plan = plan_generation(manifest, None, params(), SEED)
    pd.testing.assert_frame_equal(plan, ddpm_run["plan"])
    generator, _ = train_generator(training_set, images, params(), IMAGE, SEED)
    for name, tensor in ddpm_run["generator"]["state_dict"].items():
        assert np.array_equal(tensor.numpy(), generator["state_dict"][name].numpy()), name
    partitions, _ = generate_synthetic_pool(generator, plan, images, params(), IMAGE)
    for key, image in partitions.items():
        np.testing.assert_array_equal(np.asarray(image), np.asarray(ddpm_run["partitions"][key]))
    _, other_plan = plan_generation(manifest, None, params(), SEED + 1)
    assert not set(other_plan["seed"]) & set(plan["seed"])


def test_report_has_grids_loss_curve_metrics_and_summary(
    ddpm_run: dict[str, Any], data: tuple[pd.DataFrame, dict]
) -> None:
    grids, curve, metrics, summary = report_generation(
        ddpm_run["generator"], ddpm_run["log"], ddpm_run["manifest"], ddpm_run["partitions"],
        ddpm_run["training_set"], data[1], params(), IMAGE,
    )  # fmt: skip
    assert set(grids) == {"overview.png", "c1.png", "c2.png"}
    assert len(grids["overview.png"].axes) == 5 * 3 and curve.axes
    assert metrics["generation.pool_size"]["value"] == 10 and len(metrics["generation.loss"]) == 4
    assert summary.set_index("class_name")["synthetic"].to_dict() == {"c0": 0, "c1": 6, "c2": 4}


# --- checkpoints and resumption ----------------------------------------------------------------------------------
def test_a_rerun_resumes_from_checkpoints_and_refuses_a_changed_configuration(
    data: tuple[pd.DataFrame, dict], tmp_path: Path
) -> None:
    manifest, images = data
    settings = params(checkpoint_dir=str(tmp_path), keep_checkpoints=True)
    training_set, _ = plan_generation(manifest, None, settings, SEED)
    _, first = train_generator(training_set, images, settings, IMAGE, SEED)
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.startswith("ddpm-") and any(run_dir.iterdir())
    longer = deep_update(settings, {"ddpm": {"train_steps": 6}})
    _, resumed = train_generator(training_set, images, longer, IMAGE, SEED)
    np.testing.assert_array_equal(resumed["loss"].to_numpy()[:4], first["loss"].to_numpy())
    changed = deep_update(longer, {"ddpm": {"learning_rate": 0.01}})
    with pytest.raises(ValueError, match=r"generation.checkpoint_dir .*generation.ddpm.learning_rate"):
        train_generator(training_set, images, changed, IMAGE, SEED)
    train_generator(training_set, images, {**longer, "keep_checkpoints": False}, IMAGE, SEED)
    assert not run_dir.exists()


# --- bad input ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pool": {"multiple": 0}}, "generation.pool.multiple must be positive"),
        ({"pool": {"multiple": "four"}}, "generation.pool.multiple must be a number"),
        ({"pool": {"oversample": 0.5}}, "generation.pool.oversample must be at least 1"),
        ({"classes": ["c0"], "pool": {"balance_to_largest": True}}, "zero images.*balance_to_largest"),
        (
            {"classes": ["c1", "retina"]},
            r"generation.classes names \['retina'\].*known class names: \['c0', 'c1', 'c2'\]",
        ),
        ({"classes": []}, "generation.classes is an empty list"),
        ({"min_train_images_per_class": 5}, "Class 'c2' has 4 train images.*generation.min_train_images_per_class"),
        ({"generator": "gan"}, "generation.generator must be one of"),
        ({"ddpm": {"sampling": {"sampler": "euler"}}}, "ddpm.sampling.sampler must be one of.*dpm_solver_sde"),
    ],
)
def test_bad_parameters_are_named(data: tuple[pd.DataFrame, dict], overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_generation(data[0], None, params(**overrides), SEED)


def test_bad_ddpm_settings_are_named(data: tuple[pd.DataFrame, dict]) -> None:
    manifest, images = data
    training_set, _ = plan_generation(manifest, None, params(), SEED)
    with pytest.raises(ValueError, match="Invalid generation.ddpm parameters.*image_size must be divisible by 4"):
        train_generator(
            training_set, images, params(ddpm={"block_out_channels": [8, 16, 16]}), {"size": 6, "mode": "RGB"}, SEED
        )
    with pytest.raises(ValueError, match="generation.ddpm must not set.*image_size"):
        train_generator(training_set, images, params(ddpm={"image_size": 8}), IMAGE, SEED)


def test_stable_diffusion_bad_input_is_named(data: tuple[pd.DataFrame, dict], sd_folder: Path, tmp_path: Path) -> None:
    manifest = data[0]
    sd_params = {"generator": "stable_diffusion"}
    with pytest.raises(ValueError, match="generation.stable_diffusion.model is not set"):
        plan_generation(manifest, None, params(**sd_params), SEED)
    with pytest.raises(ValueError, match="generation.stable_diffusion.model: .*does not exist"):
        plan_generation(manifest, None, params(**sd_params, stable_diffusion={"model": str(tmp_path / "absent")}), SEED)
    malformed = tmp_path / "malformed"
    malformed.mkdir()
    (malformed / "model_index.json").write_text("{}")
    with pytest.raises(ValueError, match="generation.stable_diffusion.model: .*missing: unet, vae"):
        plan_generation(manifest, None, params(**sd_params, stable_diffusion={"model": str(malformed)}), SEED)
    unknown_prompt = {"model": str(sd_folder), "prompts": {"c1": "x", "glaucoma": "enlarged optic cup"}}
    with pytest.raises(ValueError, match=r"stable_diffusion.prompts .*\['glaucoma'\].*known class names: \['c0'"):
        plan_generation(manifest, None, params(**sd_params, stable_diffusion=unknown_prompt), SEED)
    with pytest.raises(ValueError, match="generation.stable_diffusion.strength must be in"):
        plan_generation(
            manifest, None, params(**sd_params, stable_diffusion={"model": str(sd_folder), "strength": 0}), SEED
        )
    broken = tmp_path / "broken"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        (broken / part).mkdir(parents=True)
    (broken / "model_index.json").write_text("{}")
    training_set, _ = plan_generation(
        manifest, None, params(**sd_params, stable_diffusion={"model": str(broken)}), SEED
    )
    with pytest.raises(ValueError, match="generation.stable_diffusion.model .* does not load"):
        train_generator(
            training_set, data[1], params(**sd_params, stable_diffusion={"model": str(broken)}), IMAGE, SEED
        )


# --- Stable Diffusion end to end ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["text_to_image", "image_to_image"])
def test_stable_diffusion_lora_generates_the_pool(data: tuple[pd.DataFrame, dict], sd_folder: Path, mode: str) -> None:
    manifest, images = data
    settings = params(
        generator="stable_diffusion", classes=["c2"], stable_diffusion={"model": str(sd_folder), "mode": mode}
    )
    training_set, plan = plan_generation(manifest, None, settings, SEED)
    generator, log = train_generator(training_set, images, settings, IMAGE, SEED)
    assert generator["config"]["prompts"] == {
        "c0": "a fundus photo, c0",
        "c1": "retina fundus",
        "c2": "a fundus photo, c2",
    }
    assert len(log) == 2 and generator["state_dict"]
    partitions, synthetic = generate_synthetic_pool(generator, plan, images, settings, IMAGE)
    assert len(synthetic) == 4 and (synthetic["intended_class"] == "c2").all()
    assert (synthetic["prompt"] == "a fundus photo, c2").all() and (synthetic["negative_prompt"] == "blurry").all()
    assert (synthetic["generator"] == "stable_diffusion").all() and (synthetic["mode"] == mode).all()
    assert all(image.size == (SIZE, SIZE) for image in partitions.values())
    if mode == "image_to_image":
        assert synthetic["strength"].eq(0.6).all()
        assert synthetic["source_image_id"].isin(training_set.loc[training_set["label"] == 2, "image_id"]).all()
        assert synthetic["source_image_id"].is_unique
    else:
        assert synthetic["strength"].isna().all() and (synthetic["source_image_id"] == "").all()
        row = synthetic.iloc[[2]]
        again = generate_images(generator, row, images, settings, IMAGE)
        assert np.abs(again[0].astype(int) - np.asarray(partitions[row["image_key"].iloc[0]]).astype(int)).max() <= 1
        pipeline = _stable_diffusion_with_lora(generator, settings)
        scalings = {module.scaling["default"] for module in pipeline.unet.modules() if hasattr(module, "scaling")}
        assert scalings == {2.0}  # alpha 8 / rank 4: the adapter is attached as it was trained


# --- wiring ------------------------------------------------------------------------------------------------------
def test_the_pipeline_runs_through_kedro_with_an_in_memory_catalog(
    data: tuple[pd.DataFrame, dict], tmp_path: Path
) -> None:
    """Memory inputs; the pool, its manifest and the weights go through the file datasets the real catalog uses."""
    manifest, images = data
    catalog = DataCatalog(
        {
            "manifest": MemoryDataset(manifest),
            "real_images": MemoryDataset(images),
            "clusters": OptionalDataset({"type": "pandas.ParquetDataset", "filepath": str(tmp_path / "clusters.pq")}),
            "params:generation": MemoryDataset(params(ddpm={"train_steps": 2})),
            "params:image": MemoryDataset(IMAGE),
            "params:seed": MemoryDataset(SEED),
            "generator": SafetensorsModelDataset(filepath=str(tmp_path / "generator.safetensors")),
            "synthetic_manifest": ParquetDataset(filepath=str(tmp_path / "synthetic_manifest.parquet")),
            "synthetic_images": PartitionedDataset(
                path=str(tmp_path / "synthetic"), dataset="pillow.ImageDataset", filename_suffix=".png"
            ),
        }
    )
    pipeline = create_pipeline()
    assert pipeline.inputs() == {
        "manifest",
        "clusters",
        "real_images",
        "params:generation",
        "params:image",
        "params:seed",
    }
    outputs = SequentialRunner().run(pipeline, catalog)
    synthetic = catalog.load("synthetic_manifest")
    assert len(synthetic) == 10 and set(catalog.load("synthetic_images")) == set(synthetic["image_key"])
    assert sorted(path.name for path in (tmp_path / "synthetic").iterdir()) == ["c1", "c2"]
    assert catalog.load("generator")["config"]["ddpm"]["image_size"] == SIZE
    assert "overview.png" in outputs["generation_sample_grids"].load()
    assert outputs["generation_pool_summary"].load()["synthetic"].sum() == 10
