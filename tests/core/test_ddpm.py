"""Class-conditional DDPM: training, exact resumption, per-image seeded sampling, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from generative_augmentation.core import checkpoints
from generative_augmentation.core.checkpoints import latest_checkpoint
from generative_augmentation.core.ddpm import (
    DDPMConfig,
    DDPMTrainingResult,
    build_unet,
    condition_indices,
    load_generator,
    sample_ddpm,
    save_generator,
    train_ddpm,
)

SIZE = 8


def tiny_config(**overrides: object) -> DDPMConfig:
    settings = {
        "image_size": SIZE,
        "channels": 3,
        "num_classes": 2,
        "block_out_channels": (16, 32),
        "train_steps": 6,
        "batch_size": 8,
        "learning_rate": 2e-3,
        "warmup_steps": 2,
        "num_train_timesteps": 50,
        "checkpoint_every": 2,
        "seed": 3,
    }
    return DDPMConfig(**{**settings, **overrides})


def two_tone_dataset(channels: int = 3, per_class: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Class 0 is black, class 1 is white: trivially easy to denoise."""
    labels = np.repeat(np.arange(2), per_class).astype(np.int64)
    images = np.zeros((len(labels), SIZE, SIZE, channels), dtype=np.uint8)
    images[labels == 1] = 255
    return images, labels


@pytest.fixture(scope="module")
def trained() -> DDPMTrainingResult:
    images, labels = two_tone_dataset()
    return train_ddpm(images, labels, tiny_config(train_steps=50, warmup_steps=5), progress=False)


def test_config_round_trips_through_dict() -> None:
    config = tiny_config(num_clusters=3)
    assert DDPMConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="not_a_field"):
        DDPMConfig.from_dict({**config.to_dict(), "not_a_field": 1})
    with pytest.raises(ValueError, match="image_size"):
        tiny_config(image_size=9)


def test_conditions_encode_class_cluster_pairs_with_a_final_null_slot() -> None:
    config = tiny_config(num_classes=3, num_clusters=4)
    conditions = condition_indices(config, np.array([0, 1, 2, 2]), np.array([0, 3, 1, 3]))
    np.testing.assert_array_equal(conditions, [0, 7, 9, 11])
    assert config.null_condition == 12
    assert build_unet(config).class_embedding.num_embeddings == 13
    with pytest.raises(ValueError, match="clusters are required"):
        condition_indices(config, np.array([0]))
    with pytest.raises(ValueError, match="cluster values"):
        condition_indices(config, np.array([0]), np.array([4]))


def test_training_loss_is_finite_and_decreases(trained: DDPMTrainingResult) -> None:
    losses = np.array(trained.loss_history)
    assert len(losses) == 50
    assert np.isfinite(losses).all()
    assert losses[-10:].mean() < 0.7 * losses[:10].mean()
    assert trained.steps_per_second > 0
    assert set(trained.state_dict) == set(build_unet(trained.config).state_dict())
    assert all(tensor.device.type == "cpu" for tensor in trained.state_dict.values())


@pytest.mark.parametrize("sampler", ["dpm_solver", "dpm_solver_sde", "ddpm"])
def test_each_image_depends_only_on_its_own_seed(trained: DDPMTrainingResult, sampler: str) -> None:
    labels, seeds = np.array([0, 1, 0, 1, 1]), [11, 12, 13, 14, 15]
    options = {"num_inference_steps": 8, "sampler": sampler, "progress": False}
    batch = sample_ddpm(trained.state_dict, trained.config, labels, seeds, batch_size=3, **options)
    assert batch.shape == (5, SIZE, SIZE, 3) and batch.dtype == np.uint8
    alone = sample_ddpm(trained.state_dict, trained.config, labels[3:4], seeds[3:4], **options)
    assert np.abs(alone[0].astype(int) - batch[3].astype(int)).max() <= 1
    again = sample_ddpm(trained.state_dict, trained.config, labels, seeds, batch_size=5, **options)
    assert np.abs(again.astype(int) - batch.astype(int)).max() <= 1
    repeated = sample_ddpm(trained.state_dict, trained.config, labels, seeds, batch_size=3, **options)
    np.testing.assert_array_equal(repeated, batch)
    assert not np.array_equal(batch[0], batch[2])


def test_guidance_scale_changes_the_samples(trained: DDPMTrainingResult) -> None:
    args = (trained.state_dict, trained.config, np.array([1, 1]), [5, 6])
    plain = sample_ddpm(*args, guidance_scale=1.0, num_inference_steps=6, progress=False)
    guided = sample_ddpm(*args, guidance_scale=4.0, num_inference_steps=6, progress=False)
    assert not np.array_equal(plain, guided)


def test_grayscale_and_cluster_conditioned_training_and_sampling() -> None:
    images, labels = two_tone_dataset(channels=1)
    clusters = np.arange(len(labels)) % 2
    config = tiny_config(channels=1, num_clusters=2, train_steps=2)
    result = train_ddpm(images, labels, config, clusters=clusters, progress=False)
    samples = sample_ddpm(
        result.state_dict,
        config,
        np.array([0, 1]),
        [1, 2],
        clusters=np.array([1, 0]),
        num_inference_steps=3,
        progress=False,
    )
    assert samples.shape == (2, SIZE, SIZE, 1) and samples.dtype == np.uint8
    with pytest.raises(ValueError, match="clusters are required"):
        sample_ddpm(result.state_dict, config, np.array([0]), [1], progress=False)


def test_interrupted_training_resumes_to_the_uninterrupted_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, labels = two_tone_dataset()
    config = tiny_config()
    uninterrupted = train_ddpm(images, labels, config, progress=False)

    real_save = checkpoints.save_checkpoint

    def save_then_crash(root, checkpoint, **kwargs):
        path = real_save(root, checkpoint, **kwargs)
        if checkpoint.step == 4:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(checkpoints, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_ddpm(images, labels, config, checkpoint_dir=tmp_path, progress=False)
    assert latest_checkpoint(tmp_path).name == "step-00000004"
    monkeypatch.setattr(checkpoints, "save_checkpoint", real_save)

    resumed = train_ddpm(images, labels, config, checkpoint_dir=tmp_path, progress=False)
    assert resumed.loss_history == uninterrupted.loss_history
    for name, tensor in uninterrupted.state_dict.items():
        assert torch.equal(resumed.state_dict[name], tensor), name
    assert latest_checkpoint(tmp_path).name == "step-00000006"


def test_raising_train_steps_continues_from_the_last_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images, labels = two_tone_dataset()
    first = train_ddpm(images, labels, tiny_config(train_steps=4), checkpoint_dir=tmp_path, progress=False)
    with caplog.at_level("INFO", logger="generative_augmentation"):
        extended = train_ddpm(images, labels, tiny_config(train_steps=6), checkpoint_dir=tmp_path, progress=False)
    assert "(step 4)" in caplog.text
    assert extended.loss_history[:4] == first.loss_history
    assert len(extended.loss_history) == 6
    assert latest_checkpoint(tmp_path).name == "step-00000006"


def test_resuming_with_a_changed_config_names_the_field(tmp_path: Path) -> None:
    images, labels = two_tone_dataset()
    train_ddpm(images, labels, tiny_config(train_steps=2), checkpoint_dir=tmp_path, progress=False)
    changed = tiny_config(train_steps=2, learning_rate=1e-4)
    with pytest.raises(ValueError, match="learning_rate") as error:
        train_ddpm(images, labels, changed, checkpoint_dir=tmp_path, progress=False)
    assert "Delete the folder" in str(error.value)


def test_too_few_images_in_a_class_names_the_class() -> None:
    images, labels = two_tone_dataset()
    keep = np.r_[np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)[:1]]
    with pytest.raises(ValueError, match="class 1 has 1 training images"):
        train_ddpm(images[keep], labels[keep], tiny_config(), progress=False)


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (np.zeros((0, SIZE, SIZE, 3), np.uint8), np.zeros(0, np.int64), "non-empty"),
        (np.zeros((4, SIZE, SIZE, 3), np.uint8), np.array([0, 1, 2, 1]), r"label values must be in \[0, 2\)"),
        (np.zeros((4, 16, 16, 3), np.uint8), np.array([0, 1, 0, 1]), "shape"),
        (np.zeros((4, SIZE, SIZE, 3), np.uint8), np.array([0, 1, 0]), "3 labels for 4 images"),
    ],
)
def test_invalid_training_data_is_rejected(images: np.ndarray, labels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        train_ddpm(images, labels, tiny_config(), progress=False)


def test_generator_round_trips_through_a_folder(trained: DDPMTrainingResult, tmp_path: Path) -> None:
    folder = save_generator(trained, tmp_path / "generator")
    assert {"model.safetensors", "config.json"} <= {path.name for path in folder.iterdir()}
    loaded = load_generator(folder)
    assert loaded.config == trained.config
    assert loaded.loss_history == pytest.approx(trained.loss_history)
    for name, tensor in trained.state_dict.items():
        assert torch.equal(loaded.state_dict[name], tensor)
    args = (np.array([0, 1]), [7, 8])
    expected = sample_ddpm(trained.state_dict, trained.config, *args, num_inference_steps=4, progress=False)
    actual = sample_ddpm(loaded.state_dict, loaded.config, *args, num_inference_steps=4, progress=False)
    np.testing.assert_array_equal(actual, expected)
    with pytest.raises(ValueError, match="model.safetensors"):
        load_generator(tmp_path)
