"""Stable Diffusion XL with LoRA and DreamBooth's prior preservation, on tiny random pipelines built offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from generative_augmentation.core.config import ConfigError
from generative_augmentation.core.generators import generator_class
from generative_augmentation.core.generators.stable_diffusion import StableDiffusionSettings, load_stable_diffusion
from generative_augmentation.core.runtime import derive_seed, torch_generator
from tests.conftest import study_data
from tests.core.test_generators import (
    IMAGE,
    NAMES,
    SIZE,
    crash_after,
    fit_sample_and_round_trip,
    two_tone,
    unet_prediction,
)
from tests.core.tiny_sd import build_tiny_stable_diffusion
from tests.pipelines.test_generation import GENERATION, STUDY, run

LORA = {"rank": 4, "alpha": 8, "train_steps": 4, "batch_size": 2, "learning_rate": 0.01, "checkpoint_every": 2}
PRIOR = {"enabled": True, "class_prompt": "a fundus photo", "class_images": 3, "loss_weight": 0.5}


@pytest.fixture(scope="module")
def xl_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny_sdxl"), xl=True)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny_sd"))


def lora_generator(folder: Path, **changes: object):
    values = {"model": str(folder), "steps": 2, "guidance_scale": 3.0, "batch_size": 2, "lora": LORA}
    settings = StableDiffusionSettings.parse({**values, **changes})
    return generator_class("stable_diffusion")(settings, IMAGE, NAMES, 0, 5, "cpu")


@pytest.mark.parametrize("mode", ["text_to_image", "image_to_image"])
def test_an_xl_model_trains_lora_samples_per_seed_and_round_trips(xl_folder: Path, tmp_path: Path, mode: str) -> None:
    generator = lora_generator(xl_folder, mode=mode, strength=0.6)
    fit_sample_and_round_trip(generator, mode, tmp_path / "lora")
    assert isinstance(generator.pipeline, StableDiffusionXLPipeline)
    assert generator.training["pipeline"] == "StableDiffusionXLPipeline"
    # The adapter file is diffusers' own SDXL LoRA format: the library's loader attaches it to a fresh pipeline.
    fresh = StableDiffusionXLPipeline.from_pretrained(str(xl_folder))
    fresh.load_lora_weights(str(tmp_path / "lora"))
    assert any(".lora_" in name for name, _ in fresh.unet.named_parameters())


def test_xl_lora_training_changes_the_unet_on_xl_inputs(xl_folder: Path) -> None:
    """Training changes the UNet's output on XL inputs: the pooled text and size ids reach the trained model."""
    generator = lora_generator(xl_folder)
    generator.fit(two_tone(), progress=False)
    untrained = lora_generator(xl_folder, lora={**LORA, "train_steps": 1, "learning_rate": 1e-12})
    untrained.fit(two_tone(), progress=False)
    assert not torch.allclose(unet_prediction(generator), unet_prediction(untrained), atol=1e-4)


def test_an_xl_folder_without_its_second_text_encoder_is_named(xl_folder: Path, tmp_path: Path) -> None:
    broken = tmp_path / "xl"
    broken.mkdir()
    for part in ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        (broken / part).symlink_to(xl_folder / part)
    with pytest.raises(ConfigError, match=r"xl is missing: text_encoder_2, tokenizer_2"):
        generator_class("stable_diffusion").check(StableDiffusionSettings(model=str(broken)), NAMES)
    (tmp_path / "bad").mkdir()
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        (tmp_path / "bad" / part).mkdir()
    (tmp_path / "bad" / "model_index.json").write_text("{not json")
    with pytest.raises(ConfigError, match="bad: model_index.json does not read"):
        generator_class("stable_diffusion").check(StableDiffusionSettings(model=str(tmp_path / "bad")), NAMES)


def test_prior_preservation_makes_base_model_class_images_and_adds_their_loss(sd_folder: Path) -> None:
    plain = lora_generator(sd_folder)
    plain.fit(two_tone(), progress=False)
    dreambooth = lora_generator(sd_folder, prior_preservation=PRIOR)
    made = []
    original = type(dreambooth)._class_images

    def keep(self, pipeline, resolution):
        made.append(original(self, pipeline, resolution))
        return made[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(dreambooth), "_class_images", keep)
        losses = dreambooth.fit(two_tone(), progress=False)
    assert dreambooth.training["prior_images"] == 3 and plain.training["prior_images"] == 0
    images = made[0]
    assert images.shape == (3, 32, 32, 3) and images.dtype == torch.uint8
    # The class images are the base model's own (no adapter): the plain pipeline on the class prompt, same seeds.
    pipeline = load_stable_diffusion(str(sd_folder), "cpu")
    dreambooth._use_sampler(pipeline)
    seed = derive_seed(5, "prior-image", 1)
    expected = pipeline(
        prompt=["a fundus photo"],
        negative_prompt=[dreambooth.settings.negative_prompt],
        num_inference_steps=2,
        guidance_scale=3.0,
        height=32,
        width=32,
        generator=[torch_generator(seed)],
        output_type="np",
    ).images[0]
    assert np.abs((expected * 255).round().astype(int) - images[1].numpy().astype(int)).max() <= 1
    # Step 1 starts from the same weights with the same instance batch and noise: the weighted prior term is added.
    assert len(losses) == 4 and losses[0] > plain.training["loss_history"][0]


def test_an_interrupted_dreambooth_run_resumes_exactly_without_remaking_the_class_images(
    sd_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uninterrupted = lora_generator(sd_folder, prior_preservation=PRIOR)
    uninterrupted.fit(two_tone(), progress=False)
    crash_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        lora_generator(sd_folder, prior_preservation=PRIOR).fit(two_tone(), checkpoint_dir=tmp_path, progress=False)
    monkeypatch.undo()
    resumed = lora_generator(sd_folder, prior_preservation=PRIOR)

    def refuse(*_: object) -> None:
        raise AssertionError("the class images were made again instead of read from the checkpoint")

    monkeypatch.setattr(type(resumed), "_class_images", refuse)
    resumed.fit(two_tone(), checkpoint_dir=tmp_path, progress=False)
    assert resumed.training["loss_history"] == uninterrupted.training["loss_history"]
    for key, tensor in uninterrupted.lora_weights.items():
        assert torch.equal(resumed.lora_weights[key], tensor), key
    with pytest.raises(ValueError, match="prior_preservation"):
        lora_generator(sd_folder, prior_preservation={**PRIOR, "loss_weight": 2.0}).fit(
            two_tone(), checkpoint_dir=tmp_path, progress=False
        )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"class_images": 0}, r"generation.stable_diffusion.prior_preservation.class_images must be at least 1"),
        ({"loss_weight": 0}, r"generation.stable_diffusion.prior_preservation.loss_weight must be positive"),
        ({"class_prompt": " "}, r"generation.stable_diffusion.prior_preservation.class_prompt is empty"),
        ({"weight": 1}, r"generation.stable_diffusion.prior_preservation.*weight"),
    ],
)
def test_bad_prior_preservation_settings_name_the_parameter(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        StableDiffusionSettings.parse({"prior_preservation": {**PRIOR, **changes}})


def test_dreambooth_on_an_xl_model_makes_the_pool_through_the_generation_nodes(xl_folder: Path, tmp_path: Path) -> None:
    """The parameter change a user makes: an XL folder as the model and prior preservation on."""
    data = study_data({"train": [12, 6, 4], "val": [2, 2, 2], "test": [3, 3, 3]}, size=SIZE)
    generation = {
        **GENERATION,
        "generator": "stable_diffusion",
        "classes": ["c2"],
        "stable_diffusion": {
            "model": str(xl_folder),
            "steps": 2,
            "guidance_scale": 3.0,
            "prompt_template": "a fundus photo, {class_name}",
            "lora": {**LORA, "train_steps": 2},
            "prior_preservation": PRIOR,
        },
    }
    catalog = run(tmp_path, data, generation, study={**STUDY, "augment_classes": ["c2"]})
    synthetic = catalog.load("synthetic_manifest")
    assert len(synthetic) == 4 and (synthetic["prompt"] == "a fundus photo, c2").all()
    generator = catalog.load("generator")
    assert generator.training["pipeline"] == "StableDiffusionXLPipeline" and generator.training["prior_images"] == 3
    assert len(catalog.load("synthetic_images")) == 4
