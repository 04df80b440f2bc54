"""Stable Diffusion LoRA training and generation on a tiny random pipeline built offline."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from generative_augmentation.core import checkpoints
from generative_augmentation.core.checkpoints import latest_checkpoint
from generative_augmentation.core.stable_diffusion import (
    LoraTrainingConfig,
    LoraTrainingResult,
    generate_image_to_image,
    generate_text_to_image,
    load_lora,
    load_stable_diffusion,
    pipeline_resolution,
    save_lora,
    train_lora,
    validate_pipeline_folder,
)
from tests.core.tiny_sd import build_tiny_stable_diffusion

PROMPTS = ["a fundus photo", "retina", "a fundus photo", "retina"]


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture
def pipeline(sd_folder: Path) -> StableDiffusionPipeline:
    return load_stable_diffusion(sd_folder, device="cpu")


@pytest.fixture(scope="module")
def training_images() -> np.ndarray:
    """Four 20x24 images (non-square, smaller than the 32 px pipeline resolution)."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(4, 20, 24, 3), dtype=np.uint8)


def lora_config(**overrides: object) -> LoraTrainingConfig:
    settings = {
        "rank": 4,
        "alpha": 8,
        "train_steps": 4,
        "batch_size": 2,
        "learning_rate": 1e-2,
        "checkpoint_every": 2,
    }
    return LoraTrainingConfig(**{**settings, **overrides})


def unet_prediction(pipeline: StableDiffusionPipeline) -> torch.Tensor:
    """The UNet's output on fixed inputs: a precise fingerprint of its (LoRA-adapted) weights."""
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 16, 16, generator=generator)
    text = torch.randn(1, 77, pipeline.text_encoder.config.hidden_size, generator=generator)
    with torch.no_grad():
        return pipeline.unet(latents, 500, text).sample


def test_tiny_pipeline_loads_back_without_a_safety_checker(sd_folder: Path) -> None:
    loaded = StableDiffusionPipeline.from_pretrained(sd_folder)
    assert loaded.safety_checker is None
    pipeline = load_stable_diffusion(str(sd_folder), device="cpu")
    assert pipeline_resolution(pipeline) == 32
    assert pipeline.safety_checker is None


def test_missing_folder_and_missing_parts_are_named(sd_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_stable_diffusion(tmp_path / "absent")
    broken = Path(shutil.copytree(sd_folder, tmp_path / "broken"))
    shutil.rmtree(broken / "vae")
    shutil.rmtree(broken / "tokenizer")
    with pytest.raises(ValueError, match="broken is missing: vae, tokenizer"):
        load_stable_diffusion(broken)
    (broken / "model_index.json").unlink()
    with pytest.raises(ValueError, match="model_index.json"):
        validate_pipeline_folder(broken)


def test_lora_training_changes_only_the_lora_weights(
    pipeline: StableDiffusionPipeline, training_images: np.ndarray
) -> None:
    modules = {"unet": pipeline.unet, "vae": pipeline.vae, "text_encoder": pipeline.text_encoder}
    before = {
        f"{name}.{key}": value.clone() for name, module in modules.items() for key, value in module.state_dict().items()
    }
    result = train_lora(pipeline, training_images, PROMPTS, lora_config(), progress=False)
    after = {
        f"{name}.{key.replace('.base_layer', '')}": value
        for name, module in modules.items()
        for key, value in module.state_dict().items()
    }
    lora_keys = {key for key in after if ".lora_" in key}
    assert lora_keys and lora_keys.isdisjoint(before)
    assert set(after) - lora_keys == set(before)
    assert all(torch.equal(after[key], value) for key, value in before.items())
    assert any(key.endswith("lora_B.default.weight") and after[key].abs().sum() > 0 for key in lora_keys)
    assert len(result.loss_history) == 4 and np.isfinite(result.loss_history).all()
    trainable = [name for name, parameter in pipeline.unet.named_parameters() if parameter.requires_grad]
    assert trainable and all(".lora_" in name for name in trainable)
    assert all(".lora" in key for key in result.lora_state_dict)


def test_interrupted_lora_training_resumes_to_the_uninterrupted_weights(
    sd_folder: Path, training_images: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = lora_config(train_steps=6)
    uninterrupted = train_lora(load_stable_diffusion(sd_folder), training_images, PROMPTS, config, progress=False)

    real_save = checkpoints.save_checkpoint

    def save_then_crash(root, checkpoint, **kwargs):
        path = real_save(root, checkpoint, **kwargs)
        if checkpoint.step == 4:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(checkpoints, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_lora(load_stable_diffusion(sd_folder), training_images, PROMPTS, config, tmp_path, progress=False)
    monkeypatch.setattr(checkpoints, "save_checkpoint", real_save)
    assert latest_checkpoint(tmp_path).name == "step-00000004"

    resumed = train_lora(load_stable_diffusion(sd_folder), training_images, PROMPTS, config, tmp_path, progress=False)
    assert resumed.loss_history == uninterrupted.loss_history
    assert resumed.lora_state_dict.keys() == uninterrupted.lora_state_dict.keys()
    for key, tensor in uninterrupted.lora_state_dict.items():
        assert torch.equal(resumed.lora_state_dict[key], tensor), key

    with pytest.raises(ValueError, match="rank"):
        train_lora(
            load_stable_diffusion(sd_folder),
            training_images,
            PROMPTS,
            lora_config(train_steps=6, rank=2),
            tmp_path,
            progress=False,
        )


def test_text_to_image_shapes_and_per_image_seeds(pipeline: StableDiffusionPipeline) -> None:
    options = {"steps": 3, "guidance_scale": 5.0, "progress": False}
    batch = generate_text_to_image(pipeline, PROMPTS[:3], "blurry", [1, 2, 3], batch_size=2, **options)
    assert batch.shape == (3, 32, 32, 3) and batch.dtype == np.uint8
    alone = generate_text_to_image(pipeline, PROMPTS[2:3], "blurry", [3], **options)
    assert np.abs(alone[0].astype(int) - batch[2].astype(int)).max() <= 1
    np.testing.assert_array_equal(
        generate_text_to_image(pipeline, PROMPTS[:3], "blurry", [1, 2, 3], batch_size=2, **options), batch
    )
    assert not np.array_equal(batch[0], generate_text_to_image(pipeline, PROMPTS[:1], "blurry", [9], **options)[0])
    wide = generate_text_to_image(pipeline, PROMPTS[:1], None, [1], height=16, width=48, **options)
    assert wide.shape == (1, 16, 48, 3)
    with pytest.raises(ValueError, match="one seed per image"):
        generate_text_to_image(pipeline, PROMPTS[:2], None, [1], **options)


def test_image_to_image_shapes_and_per_image_seeds(
    pipeline: StableDiffusionPipeline, training_images: np.ndarray
) -> None:
    grayscale = training_images[:3, ..., :1]
    options = {"strength": 0.7, "steps": 4, "guidance_scale": 5.0, "progress": False}
    batch = generate_image_to_image(pipeline, grayscale, PROMPTS[:3], None, [4, 5, 6], batch_size=2, **options)
    assert batch.shape == (3, 32, 32, 3) and batch.dtype == np.uint8
    alone = generate_image_to_image(pipeline, grayscale[1:2], PROMPTS[1:2], None, [5], **options)
    assert np.abs(alone[0].astype(int) - batch[1].astype(int)).max() <= 1
    repeated = generate_image_to_image(pipeline, grayscale, PROMPTS[:3], None, [4, 5, 6], batch_size=2, **options)
    np.testing.assert_array_equal(repeated, batch)
    reseeded = generate_image_to_image(pipeline, grayscale[1:2], PROMPTS[1:2], None, [50], **options)
    assert not np.array_equal(reseeded[0], batch[1])


def test_lora_weights_round_trip_through_safetensors(
    sd_folder: Path, training_images: np.ndarray, tmp_path: Path
) -> None:
    base_prediction = unet_prediction(load_stable_diffusion(sd_folder))
    trained_pipeline = load_stable_diffusion(sd_folder)
    result: LoraTrainingResult = train_lora(trained_pipeline, training_images, PROMPTS, lora_config(), progress=False)
    trained_prediction = unet_prediction(trained_pipeline)
    assert not torch.allclose(trained_prediction, base_prediction)

    folder = save_lora(result, tmp_path / "lora")
    assert (folder / "pytorch_lora_weights.safetensors").is_file()
    reloaded = load_lora(load_stable_diffusion(sd_folder), folder)
    torch.testing.assert_close(unet_prediction(reloaded), trained_prediction, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="does not exist"):
        load_lora(reloaded, tmp_path / "absent")


def test_training_rejects_mismatched_inputs(pipeline: StableDiffusionPipeline, training_images: np.ndarray) -> None:
    with pytest.raises(ValueError, match="3 prompts for 4 images"):
        train_lora(pipeline, training_images, PROMPTS[:3], lora_config(), progress=False)
    with pytest.raises(ValueError, match="non-empty uint8"):
        train_lora(pipeline, training_images.astype(np.float32), PROMPTS, lora_config(), progress=False)
