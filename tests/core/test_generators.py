"""Every generator behind one interface: fit, sample with one seed per image, save, load, resume exactly.

The DDPM is tiny (8 px, two UNet levels); Stable Diffusion is a tiny random pipeline built offline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from generative_augmentation.core.generators import GENERATORS, TrainingImages, generator_class, load_generator
from generative_augmentation.core.generators.ddpm import DDPMSettings, condition_indices, min_snr_weights
from generative_augmentation.core.generators.stable_diffusion import StableDiffusionSettings
from generative_augmentation.core.images import ImageSpec
from generative_augmentation.core.training import Checkpointer, latest_checkpoint
from tests.core.tiny_sd import build_tiny_stable_diffusion

SIZE = 8
IMAGE = ImageSpec(size=SIZE, mode="RGB")
NAMES = ["black", "white"]


def two_tone(channels: int = 3, per_class: int = 8) -> TrainingImages:
    """Class 0 is black, class 1 is white: trivially easy to denoise."""
    labels = np.repeat(np.arange(2), per_class).astype(np.int64)
    images = np.zeros((len(labels), SIZE, SIZE, channels), dtype=np.uint8)
    images[labels == 1] = 255
    return TrainingImages(images, labels, np.arange(len(labels)) % 2, NAMES, num_clusters=2)


def ddpm_settings(**changes: object) -> DDPMSettings:
    values = {
        "block_out_channels": [16, 32],
        "train_steps": 6,
        "batch_size": 8,
        "learning_rate": 0.002,
        "warmup_steps": 2,
        "num_train_timesteps": 50,
        "checkpoint_every": 2,
        "sampling": {"sampler": "dpm_solver", "steps": 4},
    }
    return DDPMSettings.parse({**values, **changes})


def ddpm(settings: DDPMSettings | None = None, image: ImageSpec = IMAGE, clusters: int = 0, seed: int = 3):
    return generator_class("ddpm")(settings or ddpm_settings(), image, NAMES, clusters, seed, "cpu")


def rows(labels: list[int], seeds: list[int], generator, clusters: list[int] | None = None) -> pd.DataFrame:
    record = generator.sampling_record(generator.settings, NAMES[0])
    frame = pd.DataFrame({"label": labels, "seed": seeds, "cluster_index": clusters or [0] * len(labels)})
    return frame.assign(**record)


@pytest.fixture(scope="module")
def trained():
    generator = ddpm(ddpm_settings(train_steps=60, warmup_steps=5))
    generator.fit(two_tone(), progress=False)
    return generator


def test_the_registry_holds_every_kind() -> None:
    assert {"ddpm", "stable_diffusion"} <= set(GENERATORS)
    with pytest.raises(ValueError, match=r"generation.generator must be one of \[.*'ddpm'.*got 'gan'"):
        generator_class("gan")


def test_ddpm_training_loss_falls_and_the_classes_come_out_apart(trained) -> None:
    losses = np.array(trained.training["loss_history"])
    assert len(losses) == 60 and np.isfinite(losses).all()
    assert losses[-10:].mean() < 0.7 * losses[:10].mean()
    images = trained.generate(rows([0, 0, 1, 1], [1, 2, 3, 4], trained), progress=False)
    assert images.shape == (4, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert images[2:].mean() > images[:2].mean() + 60  # white class brighter than black class


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weights_cap_the_signal_to_noise_ratio_at_gamma(prediction_type: str) -> None:
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    timesteps = torch.tensor([0, 100, 500, 999])
    alphas = scheduler.alphas_cumprod[timesteps].double()
    snr = alphas / (1 - alphas)  # SNR(t) = alpha_bar / (1 - alpha_bar)
    capped = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64))
    expected = {"epsilon": capped / snr, "v_prediction": capped / (snr + 1), "sample": capped}[prediction_type]
    settings = ddpm_settings(snr_gamma=5.0, prediction_type=prediction_type)
    weights = min_snr_weights(scheduler, timesteps, settings).double()
    assert torch.allclose(weights, expected, rtol=1e-4)
    assert snr[0] > 5 > snr[-1]  # both sides of the cap are exercised
    if prediction_type == "epsilon":
        assert weights[-1] == pytest.approx(1.0) and weights[0] < 0.01  # noisy steps whole, easy steps damped


def test_min_snr_weighting_trains_and_changes_the_weights_learnt() -> None:
    plain = ddpm(ddpm_settings(train_steps=4))
    plain.fit(two_tone(), progress=False)
    weighted = ddpm(ddpm_settings(train_steps=4, snr_gamma=5.0))
    weighted.fit(two_tone(), progress=False)
    assert np.isfinite(weighted.training["loss_history"]).all()
    assert weighted.training["loss_history"] != plain.training["loss_history"]
    with pytest.raises(ValueError, match=r"generation.ddpm.snr_gamma must be positive, got 0"):
        ddpm_settings(snr_gamma=0.0)


@pytest.mark.parametrize("sampler", ["dpm_solver", "dpm_solver_sde", "ddpm"])
def test_each_ddpm_image_depends_only_on_its_own_seed(trained, sampler: str) -> None:
    generator = ddpm(ddpm_settings(sampling={"sampler": sampler, "steps": 5, "batch_size": 3}))
    generator.pipeline = trained.pipeline
    plan = rows([0, 1, 0, 1, 1], [11, 12, 13, 14, 15], generator)
    batch = generator.generate(plan, progress=False)
    alone = generator.generate(plan.iloc[[3]], progress=False)
    assert np.abs(alone[0].astype(int) - batch[3].astype(int)).max() <= 1
    np.testing.assert_array_equal(generator.generate(plan, progress=False), batch)
    assert not np.array_equal(batch[0], batch[2])


def test_guidance_changes_the_samples(trained) -> None:
    plan = rows([1, 1], [5, 6], trained)
    plain = trained.generate(plan.assign(guidance_scale=1.0), progress=False)
    guided = trained.generate(plan.assign(guidance_scale=4.0), progress=False)
    assert not np.array_equal(plain, guided)


@pytest.mark.parametrize("sampler", ["dpm_solver_sde", "ddpm"])
def test_sdedit_variations_stay_near_their_source_at_low_strength_and_depend_on_seed_and_source(
    trained, sampler: str
) -> None:
    def variations(strength: float, indices: list[int]) -> np.ndarray:
        generator = ddpm(ddpm_settings(sampling={"mode": "image_to_image", "sampler": sampler, "strength": strength}))
        generator.pipeline = trained.pipeline
        plan = rows([0, 1, 0, 1], [21, 22, 23, 24], generator).iloc[indices]
        return generator.generate(plan.assign(strength=strength), sources=sources[indices], progress=False)

    rng = np.random.default_rng(0)
    sources = rng.integers(60, 200, size=(4, SIZE, SIZE, 3), dtype=np.uint8)  # mid-grey noise: neither class
    near, far = variations(0.02, [0, 1, 2, 3]), variations(1.0, [0, 1, 2, 3])
    distance = [np.abs(images.astype(int) - sources.astype(int)).mean() for images in (near, far)]
    assert distance[0] < 16 and distance[1] > 3 * distance[0], distance  # a light touch keeps the source
    alone = variations(0.5, [2])
    np.testing.assert_allclose(alone[0].astype(int), variations(0.5, [0, 1, 2, 3])[2].astype(int), atol=1)
    generator = ddpm(ddpm_settings(sampling={"mode": "image_to_image"}))
    generator.pipeline = trained.pipeline
    with pytest.raises(ValueError, match="needs the source images"):
        generator.generate(rows([0], [1], generator), progress=False)


def test_sdedit_strength_settings_are_checked_and_drawn_per_image() -> None:
    for bad, message in (
        ({"strength": 0}, r"generation.ddpm.sampling.strength must be in \(0, 1\], got 0"),
        ({"strength": [0.5, 1.5]}, r"strength must be in \(0, 1\], got \[0.5, 1.5\]"),
        ({"class_strength": {"white": 2.0}}, r"generation.ddpm.sampling.class_strength.white must be in \(0, 1\]"),
    ):
        with pytest.raises(ValueError, match=message):
            ddpm_settings(sampling={"mode": "image_to_image", **bad})
    settings = ddpm_settings(
        sampling={"mode": "image_to_image", "strength": [0.25, 0.75], "class_strength": {"black": 0.3}}
    )
    record = generator_class("ddpm").sampling_record(settings, "white")
    assert record["mode"] == "image_to_image" and record["strength"] == [0.25, 0.75]
    assert generator_class("ddpm").sampling_record(settings, "black")["strength"] == 0.3
    assert generator_class("ddpm").uses_source_images(settings)
    generator_class("ddpm").check(settings, NAMES)
    with pytest.raises(ValueError, match=r"generation.ddpm.sampling.class_strength names \['grey'\].*known"):
        generator_class("ddpm").check(ddpm_settings(sampling={"class_strength": {"grey": 0.3}}), NAMES)


def test_conditions_encode_class_cluster_pairs_and_refuse_out_of_range_values() -> None:
    np.testing.assert_array_equal(
        condition_indices(np.array([0, 1, 2, 2]), np.array([0, 3, 1, 3]), 3, 4), [0, 7, 9, 11]
    )
    with pytest.raises(ValueError, match="clusters are required"):
        condition_indices(np.array([0]), None, 3, 4)
    with pytest.raises(ValueError, match=r"cluster values must be in \[0, 4\)"):
        condition_indices(np.array([0]), np.array([4]), 3, 4)
    with pytest.raises(ValueError, match=r"label values must be in \[0, 3\)"):
        condition_indices(np.array([3]), None, 3, 0)


def test_grayscale_cluster_conditioned_ddpm_trains_and_samples() -> None:
    generator = ddpm(ddpm_settings(train_steps=2), ImageSpec(size=SIZE, mode="L"), clusters=2)
    generator.fit(two_tone(channels=1), progress=False)
    assert generator.pipeline.unet.config.num_class_embeds == 2 * 2 + 1
    images = generator.generate(rows([0, 1], [1, 2], generator, clusters=[1, 0]), progress=False)
    assert images.shape == (2, SIZE, SIZE, 1)


def test_ddpm_round_trips_through_its_folder(trained, tmp_path: Path) -> None:
    folder = trained.save(tmp_path / "generator")
    assert (folder / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = load_generator(folder)
    assert loaded.kind == "ddpm" and loaded.settings == trained.settings and loaded.class_names == NAMES
    assert loaded.training["loss_history"] == pytest.approx(trained.training["loss_history"])
    plan = rows([0, 1], [7, 8], trained)
    np.testing.assert_array_equal(loaded.generate(plan, progress=False), trained.generate(plan, progress=False))
    with pytest.raises(ValueError, match="generator.json is missing"):
        load_generator(tmp_path)


def crash_after(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make the run die (as on a kill) right after the checkpoint of ``step`` is written."""
    save = Checkpointer.save

    def save_then_crash(self, completed, losses):
        path = save(self, completed, losses)
        if completed == step:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(Checkpointer, "save", save_then_crash)


def test_an_interrupted_ddpm_run_resumes_to_the_uninterrupted_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uninterrupted = ddpm()
    uninterrupted.fit(two_tone(), progress=False)
    crash_after(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        ddpm().fit(two_tone(), checkpoint_dir=tmp_path, progress=False)
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path).name == "step-00000004"
    resumed = ddpm()
    resumed.fit(two_tone(), checkpoint_dir=tmp_path, progress=False)
    assert resumed.training["loss_history"] == uninterrupted.training["loss_history"]
    for name, tensor in uninterrupted.pipeline.unet.state_dict().items():
        assert torch.equal(resumed.pipeline.unet.state_dict()[name], tensor), name
    with pytest.raises(ValueError, match="generation.ddpm.learning_rate: checkpoint 0.002, now 0.01"):
        ddpm(ddpm_settings(learning_rate=0.01)).fit(two_tone(), checkpoint_dir=tmp_path, progress=False)


# --- Stable Diffusion with LoRA ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny_sd"))


def sd(folder: Path, **changes: object):
    values = {
        "model": str(folder),
        "steps": 2,
        "guidance_scale": 3.0,
        "batch_size": 2,
        "prompts": {"white": "retina fundus"},
        "lora": {
            "rank": 4,
            "alpha": 8,
            "train_steps": 4,
            "batch_size": 2,
            "learning_rate": 0.01,
            "checkpoint_every": 2,
        },
    }
    return generator_class("stable_diffusion")(
        StableDiffusionSettings.parse({**values, **changes}), IMAGE, NAMES, 0, 5, "cpu"
    )


def unet_prediction(generator) -> torch.Tensor:
    """The UNet's output on fixed inputs: a precise fingerprint of its (LoRA-adapted) weights."""
    pipeline = generator._ready_pipeline()
    inputs = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 16, 16, generator=inputs)
    text = torch.randn(1, 77, pipeline.text_encoder.config.hidden_size, generator=inputs)
    with torch.no_grad():
        return pipeline.unet(latents, 500, text).sample


@pytest.mark.parametrize("mode", ["text_to_image", "image_to_image"])
def test_lora_generator_fits_samples_per_seed_and_round_trips(sd_folder: Path, tmp_path: Path, mode: str) -> None:
    generator = sd(sd_folder, mode=mode, strength=0.6)
    losses = generator.fit(two_tone(), progress=False)
    assert len(losses) == 4 and np.isfinite(losses).all()
    trainable = [name for name, parameter in generator.pipeline.unet.named_parameters() if parameter.requires_grad]
    assert trainable and all(".lora_" in name for name in trainable)
    record = generator.sampling_record(generator.settings, "white")
    assert record["prompt"] == "retina fundus" and record["mode"] == mode
    plan = pd.DataFrame({"label": [1, 0, 1], "seed": [1, 2, 3], "cluster_index": 0}).assign(**record)
    sources = two_tone().images[[9, 0, 10]] if mode == "image_to_image" else None
    batch = generator.generate(plan, sources, progress=False)
    assert batch.shape == (3, SIZE, SIZE, 3) and batch.dtype == np.uint8
    alone = generator.generate(plan.iloc[[2]], None if sources is None else sources[[2]], progress=False)
    assert np.abs(alone[0].astype(int) - batch[2].astype(int)).max() <= 1
    loaded = load_generator(generator.save(tmp_path / "lora"))
    torch.testing.assert_close(unet_prediction(loaded), unet_prediction(generator), rtol=1e-5, atol=1e-6)
    scalings = {module.scaling["default"] for module in loaded.pipeline.unet.modules() if hasattr(module, "scaling")}
    assert scalings == {2.0}  # alpha 8 / rank 4: the adapter is attached as it was trained


def test_an_interrupted_lora_run_resumes_exactly_and_refuses_another_rank(
    sd_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uninterrupted = sd(sd_folder)
    uninterrupted.fit(two_tone(), progress=False)
    crash_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        sd(sd_folder).fit(two_tone(), checkpoint_dir=tmp_path, progress=False)
    monkeypatch.undo()
    resumed = sd(sd_folder)
    resumed.fit(two_tone(), checkpoint_dir=tmp_path, progress=False)
    assert resumed.training["loss_history"] == uninterrupted.training["loss_history"]
    for key, tensor in uninterrupted.lora_weights.items():
        assert torch.equal(resumed.lora_weights[key], tensor), key
    with pytest.raises(ValueError, match="generation.stable_diffusion.lora"):
        sd(sd_folder, lora={"rank": 2, "train_steps": 6}).fit(two_tone(), checkpoint_dir=tmp_path, progress=False)


def test_stable_diffusion_settings_are_checked_against_the_data(sd_folder: Path, tmp_path: Path) -> None:
    kind = generator_class("stable_diffusion")
    with pytest.raises(ValueError, match="generation.stable_diffusion.model is not set"):
        kind.check(StableDiffusionSettings(), NAMES)
    with pytest.raises(ValueError, match="model: Stable Diffusion folder .*absent does not exist"):
        kind.check(StableDiffusionSettings(model=str(tmp_path / "absent")), NAMES)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model_index.json").write_text("{}")
    with pytest.raises(ValueError, match="broken is missing: unet, vae, text_encoder, tokenizer, scheduler"):
        kind.check(StableDiffusionSettings(model=str(tmp_path / "broken")), NAMES)
    with pytest.raises(ValueError, match=r"prompts has prompts for \['glaucoma'\].*known class names"):
        kind.check(StableDiffusionSettings(model=str(sd_folder), prompts={"glaucoma": "x"}), NAMES)
    with pytest.raises(ValueError, match="prompt_template may only use"):
        kind.check(StableDiffusionSettings(model=str(sd_folder), prompt_template="{grade}"), NAMES)
    with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
        StableDiffusionSettings.parse({"strength": 0})
