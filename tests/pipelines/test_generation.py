"""The generation pipeline through Kedro: plan, train, generate, report, with the catalog's own datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_datasets.pandas import CSVDataset, ParquetDataset
from kedro_datasets.partitions import PartitionedDataset

from generative_augmentation.core.generation import POOL_COLUMNS, generate_pool
from generative_augmentation.datasets import GeneratorDataset, OptionalDataset, WorkingFolderDataset
from generative_augmentation.pipelines.generation import create_pipeline
from generative_augmentation.pipelines.generation.nodes import plan_generation, report_generation, train_generator
from tests.conftest import study_data
from tests.core.tiny_sd import build_tiny_stable_diffusion

SIZE, SEED = 8, 7
IMAGE = {"size": SIZE, "mode": "RGB"}
DDPM = {
    "block_out_channels": [16, 32],
    "train_steps": 4,
    "batch_size": 8,
    "warmup_steps": 1,
    "num_train_timesteps": 50,
    "checkpoint_every": 2,
    "sampling": {"sampler": "dpm_solver", "steps": 3, "batch_size": 16},
}
GENERATION = {
    "pool": {"multiple": 1, "oversample": 1.0, "cover_balanced": False},
    "min_train_images_per_class": 2,
    "device": "cpu",
    "ddpm": DDPM,
    "report": {"images_per_row": 3},
}


STUDY = {"arms": ["real", "s"], "statistics": {"contrasts": [["s", "real"]]}}
SCENARIOS = {"real": {"kind": "real"}, "s": {"kind": "synthetic", "ratio": 1.0}}


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, dict]:
    return study_data({"train": [12, 6, 4], "val": [2, 2, 2], "test": [3, 3, 3]}, size=SIZE)


def run(
    tmp_path: Path,
    data: tuple[pd.DataFrame, dict],
    generation: dict[str, Any],
    seed: int = SEED,
    runner=None,
    study: dict[str, Any] = STUDY,
) -> DataCatalog:
    """The pipeline with memory inputs; the pool, its manifest and the generator through the real file datasets
    (run by ``runner``, by default the SequentialRunner)."""
    manifest, images = data
    catalog = DataCatalog(
        {
            "manifest": MemoryDataset(manifest),
            "real_images": MemoryDataset(images, copy_mode="assign"),
            "clusters": OptionalDataset({"type": "pandas.ParquetDataset", "filepath": str(tmp_path / "clusters.pq")}),
            "generator_checkpoints": WorkingFolderDataset(str(tmp_path / "checkpoints")),
            "params:generation": MemoryDataset(generation),
            "params:image": MemoryDataset(IMAGE),
            "params:seed": MemoryDataset(seed),
            "params:study": MemoryDataset(study),
            "params:scenarios": MemoryDataset(SCENARIOS),
            "generator": GeneratorDataset(str(tmp_path / "generator")),
            "generator_training_log": CSVDataset(filepath=str(tmp_path / "training_log.csv")),
            "synthetic_manifest": ParquetDataset(filepath=str(tmp_path / "synthetic_manifest.parquet")),
            "synthetic_images": PartitionedDataset(
                path=str(tmp_path / "synthetic"), dataset="pillow.ImageDataset", filename_suffix=".png"
            ),
        }
    )
    (runner or SequentialRunner()).run(create_pipeline(), catalog)
    return catalog


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory: pytest.TempPathFactory, data) -> DataCatalog:
    return run(tmp_path_factory.mktemp("ddpm"), data, GENERATION)


def test_the_pipeline_reads_only_real_data_and_parameters() -> None:
    assert create_pipeline().inputs() == {
        "manifest",
        "clusters",
        "real_images",
        "generator_checkpoints",
        "params:generation",
        "params:image",
        "params:seed",
        "params:study",
        "params:scenarios",
    }


def test_the_pool_has_one_png_per_manifest_row_with_its_settings(ddpm_run: DataCatalog) -> None:
    synthetic = ddpm_run.load("synthetic_manifest")
    assert list(synthetic.columns) == POOL_COLUMNS
    assert synthetic.groupby("intended_class").size().to_dict() == {"c1": 6, "c2": 4}
    assert (synthetic["generator"] == "ddpm").all() and synthetic["steps"].eq(3).all()
    images = ddpm_run.load("synthetic_images")
    assert set(images) == set(synthetic["image_key"])
    assert all(load().size == (SIZE, SIZE) for load in images.values())
    generator = ddpm_run.load("generator")
    assert generator.kind == "ddpm" and generator.image.size == SIZE and len(generator.training["loss_history"]) == 4


def test_one_manifest_row_regenerates_its_image_from_the_saved_generator(ddpm_run: DataCatalog, data) -> None:
    synthetic, images = ddpm_run.load("synthetic_manifest"), ddpm_run.load("synthetic_images")
    row = synthetic.iloc[[7]]
    again = generate_pool(ddpm_run.load("generator"), row, data[1], progress=False)
    original = np.asarray(images[row["image_key"].iloc[0]]())
    assert np.abs(again[0].astype(int) - original.astype(int)).max() <= 1


def test_same_seed_same_pool_other_seed_other_seeds(tmp_path: Path, ddpm_run: DataCatalog, data) -> None:
    again = run(tmp_path / "again", data, GENERATION)
    pd.testing.assert_frame_equal(again.load("synthetic_manifest"), ddpm_run.load("synthetic_manifest"))
    first, second = ddpm_run.load("synthetic_images"), again.load("synthetic_images")
    for key, load in first.items():
        np.testing.assert_array_equal(np.asarray(load()), np.asarray(second[key]()))
    _, other = plan_generation(data[0], None, GENERATION, SEED + 1, STUDY, SCENARIOS)
    assert not set(other["seed"]) & set(ddpm_run.load("synthetic_manifest")["seed"])


def test_the_report_has_grids_a_loss_curve_metrics_and_the_pool_summary(ddpm_run: DataCatalog, data) -> None:
    grids, curve, metrics, summary = report_generation(
        ddpm_run.load("generator"),
        ddpm_run.load("generator_training_log"),
        ddpm_run.load("synthetic_manifest"),
        ddpm_run.load("synthetic_images"),
        plan_generation(data[0], None, GENERATION, SEED, STUDY, SCENARIOS)[0],
        data[1],
        GENERATION,
    )
    assert set(grids) == {"overview.png", "c1.png", "c2.png"}
    assert len(grids["overview.png"].axes) == 4 * 3 and len(grids["c1.png"].axes) == 2 * 3
    for name in ("c1", "c2"):  # each class's grid: its real images above its synthetic ones
        row_labels = [axis.get_ylabel() for axis in grids[f"{name}.png"].axes if axis.get_ylabel()]
        assert row_labels == [f"real\n{name}", f"synthetic\n{name}"]
    overview_rows = [axis.get_ylabel() for axis in grids["overview.png"].axes if axis.get_ylabel()]
    assert overview_rows == ["real\nc1", "synthetic\nc1", "real\nc2", "synthetic\nc2"]
    assert [line.get_label() for line in curve.axes[0].get_lines()] == ["raw", "moving average (1)"]
    assert metrics["pool_size"]["value"] == 10 and len(metrics["loss"]) == 4
    assert summary.set_index("class_name")["synthetic"].to_dict() == {"c0": 0, "c1": 6, "c2": 4}


def test_checkpoints_resume_refuse_a_changed_configuration_and_go_after_success(tmp_path: Path, data) -> None:
    manifest, images = data
    keep = {**GENERATION, "keep_checkpoints": True}
    training_set, _ = plan_generation(manifest, None, keep, SEED, STUDY, SCENARIOS)
    _, first = train_generator(training_set, manifest, images, tmp_path, keep, IMAGE, SEED)
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.startswith("ddpm-") and [path.name for path in run_dir.iterdir()] == ["step-00000004"]
    longer = {**keep, "ddpm": {**DDPM, "train_steps": 6}}
    _, resumed = train_generator(training_set, manifest, images, tmp_path, longer, IMAGE, SEED)
    np.testing.assert_array_equal(resumed["loss"].to_numpy()[:4], first["loss"].to_numpy())
    changed = {**keep, "ddpm": {**DDPM, "train_steps": 6, "learning_rate": 0.01}}
    with pytest.raises(ValueError, match=r"generation.ddpm.learning_rate: checkpoint 0.001, now 0.01"):
        train_generator(training_set, manifest, images, tmp_path, changed, IMAGE, SEED)
    train_generator(training_set, manifest, images, tmp_path, {**longer, "keep_checkpoints": False}, IMAGE, SEED)
    assert not run_dir.exists()


@pytest.mark.parametrize("mode", ["text_to_image", "image_to_image"])
def test_stable_diffusion_lora_makes_the_pool_through_the_same_nodes(tmp_path: Path, data, mode: str) -> None:
    folder = build_tiny_stable_diffusion(tmp_path / "sd")
    generation = {
        **GENERATION,
        "generator": "stable_diffusion",
        "classes": ["c2"],
        "stable_diffusion": {
            "model": str(folder),
            "mode": mode,
            "strength": 0.6,
            "steps": 2,
            "guidance_scale": 3.0,
            "prompt_template": "a fundus photo, {class_name}",
            "negative_prompt": "blurry",
            "lora": {"rank": 4, "alpha": 8, "train_steps": 2, "batch_size": 2, "checkpoint_every": 2},
        },
    }
    catalog = run(tmp_path, data, generation, study={**STUDY, "augment_classes": ["c2"]})
    synthetic = catalog.load("synthetic_manifest")
    assert len(synthetic) == 4 and (synthetic["prompt"] == "a fundus photo, c2").all()
    assert (synthetic["negative_prompt"] == "blurry").all() and (synthetic["mode"] == mode).all()
    assert catalog.load("generator").kind == "stable_diffusion"
    if mode == "image_to_image":
        train_c2 = set(data[0].query("split == 'train' and class_name == 'c2'")["image_id"])
        assert synthetic["strength"].eq(0.6).all() and set(synthetic["source_image_id"]) == train_c2
    else:
        assert synthetic["strength"].isna().all() and (synthetic["source_image_id"] == "").all()


@pytest.mark.parametrize(
    ("kind", "steps", "total", "stages"),
    [
        ("gan", {"train_steps": 4}, 4, None),
        ("progressive_gan", {"stable_steps": 2, "fade_steps": 1}, 5, [4, 8]),  # 2 steps at 4 px, 1 + 2 at 8 px
    ],
)
def test_each_gan_kind_makes_the_pool_through_the_same_nodes_and_one_row_regenerates_its_image(
    tmp_path: Path,
    data,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    steps: dict[str, int],
    total: int,
    stages: list[int] | None,
) -> None:
    gan = {
        **steps,
        "latent_size": 16,
        "generator_width": 8,
        "discriminator_width": 8,
        "batch_size": 8,
        "checkpoint_every": 2,
        # Any tiny model is "collapsed" against a threshold of 1000: warn lets the pool be made and says so.
        "collapse": {
            "check_every": 2,
            "start_step": 0,
            "samples_per_class": 4,
            "threshold": 1000,
            "on_collapse": "warn",
        },
    }
    catalog = run(tmp_path, data, {**GENERATION, "generator": kind, kind: gan})
    synthetic, images = catalog.load("synthetic_manifest"), catalog.load("synthetic_images")
    assert synthetic.groupby("intended_class").size().to_dict() == {"c1": 6, "c2": 4}
    assert (synthetic["generator"] == kind).all() and (synthetic["sampler"] == kind).all()
    assert set(images) == set(synthetic["image_key"]) and all(load().size == (SIZE, SIZE) for load in images.values())
    generator = catalog.load("generator")
    assert generator.kind == kind and len(catalog.load("generator_training_log")) == total
    assert generator.training.get("stages") == stages  # the progressive GAN's sides, stage by stage
    assert {row["class_name"] for row in generator.training["diversity"]} == {"c0", "c1", "c2"}
    with caplog.at_level("WARNING"):
        _, _, metrics, summary = report_generation(
            generator,
            catalog.load("generator_training_log"),
            synthetic,
            images,
            plan_generation(data[0], None, GENERATION, SEED, STUDY, SCENARIOS)[0],
            data[1],
            GENERATION,
        )
    assert f"{kind}: class c1 collapsed at step 2" in caplog.text and "may be near-copies" in caplog.text
    checks = [row for row in generator.training["diversity"] if row["class_name"] == "c1"]
    assert metrics["diversity_ratio.c1"] == [{"value": row["ratio"], "step": row["step"]} for row in checks]
    assert summary.set_index("class_name")["diversity_ratio"]["c1"] == checks[-1]["ratio"]
    row = synthetic.iloc[[7]]
    again = generate_pool(generator, row, data[1], progress=False)
    np.testing.assert_array_equal(again[0], np.asarray(images[row["image_key"].iloc[0]]()))


def test_one_model_per_class_makes_the_pool_through_the_same_nodes_and_one_row_regenerates_its_image(
    tmp_path: Path, data
) -> None:
    generation = {**GENERATION, "generator": "per_group", "per_group": {"base": "ddpm", "by": "class"}}
    catalog = run(tmp_path, data, generation)
    synthetic, images = catalog.load("synthetic_manifest"), catalog.load("synthetic_images")
    assert synthetic.groupby("intended_class").size().to_dict() == {"c1": 6, "c2": 4}
    assert (synthetic["generator"] == "per_group").all()
    generator = catalog.load("generator")  # saved and loaded back through the catalog's folder dataset
    assert generator.kind == "per_group" and sorted(generator.models) == [(0, 0), (1, 0), (2, 0)]
    assert len(catalog.load("generator_training_log")) == 3 * DDPM["train_steps"]  # one training per class
    row = synthetic.iloc[[7]]
    again = generate_pool(generator, row, data[1], progress=False)
    np.testing.assert_array_equal(again[0], np.asarray(images[row["image_key"].iloc[0]]()))


class Killed(BaseException):
    """Stands for a kill: nothing catches it on the way out."""


def test_a_run_killed_while_sampling_resumes_with_the_missing_chunks_and_a_byte_identical_pool(
    tmp_path: Path, ddpm_run: DataCatalog, data, monkeypatch: pytest.MonkeyPatch
) -> None:
    generator, plan = ddpm_run.load("generator"), ddpm_run.load("synthetic_manifest")
    uninterrupted = generate_pool(generator, plan, data[1], progress=False, chunk_size=4)
    cache, calls, dying = tmp_path / "samples", [], [True]
    real_generate = type(generator).generate

    def generate_then_die(self, rows, sources=None, progress=True):
        calls.append(len(rows))
        if len(calls) == 2 and dying:
            dying.clear()
            raise Killed  # as a kill would, after the first chunk was kept
        return real_generate(self, rows, sources, progress)

    monkeypatch.setattr(type(generator), "generate", generate_then_die)
    with pytest.raises(Killed):
        generate_pool(generator, plan, data[1], progress=False, cache=cache, chunk_size=4)
    assert len(list(cache.glob("chunk-*.npy"))) == 1 and not list(cache.glob(".partial-*"))
    calls.clear()
    resumed = generate_pool(generator, plan, data[1], progress=False, cache=cache, chunk_size=4)
    assert calls == [4, 2]  # the kept first chunk is not sampled again
    np.testing.assert_array_equal(resumed, uninterrupted)
