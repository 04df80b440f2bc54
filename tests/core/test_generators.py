"""Every generator behind one interface: fit, sample with one seed per image, save, load, resume exactly.

The DDPM is tiny (8 px, two UNet levels); the GAN has 8-channel levels and a 16-number latent; Stable Diffusion is
a tiny random pipeline built offline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from generative_augmentation.core.config import ConfigError
from generative_augmentation.core.generation import GenerationConfig
from generative_augmentation.core.generators import GENERATORS, TrainingImages, generator_class, load_generator
from generative_augmentation.core.generators.ddpm import DDPMSettings, condition_indices, min_snr_weights
from generative_augmentation.core.generators.gan import (
    WEIGHTS_FILE,
    GANSettings,
    ModeCollapseError,
    TrainingLog,
    generation_side,
    pairwise_diversity,
)
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
    assert {"ddpm", "gan", "stable_diffusion"} <= set(GENERATORS)
    with pytest.raises(ValueError, match=r"generation.generator must be one of \['ddpm', 'gan', .*got 'vae'"):
        generator_class("vae")


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


# --- the small-data GAN ------------------------------------------------------------------------------------------
def gan_settings(**changes: object) -> GANSettings:
    values = {
        "latent_size": 16,
        "generator_width": 8,
        "discriminator_width": 8,
        "train_steps": 6,
        "batch_size": 8,
        "checkpoint_every": 2,
        "sample_batch_size": 3,
        "collapse": {"check_every": 2, "start_step": 0, "samples_per_class": 4, "real_per_class": 8},
    }
    return GANSettings.parse({**values, **changes})


def gan(settings: GANSettings | None = None, image: ImageSpec = IMAGE, seed: int = 3):
    return generator_class("gan")(settings or gan_settings(), image, NAMES, 0, seed, "cpu")


def noisy_two_tone(channels: int = 3, size: int = SIZE, per_class: int = 8) -> TrainingImages:
    """Dark noise and bright noise: the real images of each class differ, so their diversity is measurable."""
    labels = np.repeat(np.arange(2), per_class).astype(np.int64)
    images = np.random.default_rng(0).integers(0, 100, (len(labels), size, size, channels), dtype=np.uint8)
    images[labels == 1] += 155
    return TrainingImages(images, labels, np.zeros(len(labels), dtype=np.int64), NAMES, num_clusters=0)


@pytest.fixture(scope="module")
def trained_gan():
    generator = gan(gan_settings(train_steps=20))
    generator.fit(noisy_two_tone(), progress=False)
    return generator


@pytest.mark.parametrize(("size", "mode"), [(16, "L"), (28, "RGB"), (32, "RGB"), (64, "L")])
def test_the_gan_fits_and_samples_each_working_size_and_colour_mode(size: int, mode: str) -> None:
    image = ImageSpec(size=size, mode=mode)
    generator = gan(gan_settings(train_steps=2, collapse={"check_every": 0}), image)
    losses = generator.fit(noisy_two_tone(image.channels, size), progress=False)
    assert len(losses) == 2 and np.isfinite(losses).all()
    assert len(generator.training["generator_loss_history"]) == 2 and generator.training["diversity"] == []
    assert generation_side(size) == (32 if size == 28 else size)  # 28 px is generated at 32 and resized
    images = generator.generate(rows([0, 1, 1], [1, 2, 3], generator), progress=False)
    assert images.shape == (3, size, size, image.channels) and images.dtype == np.uint8
    assert generator.sampling_record(generator.settings, "white")["sampler"] == "gan"
    assert not generator.conditions_on_clusters(generator.settings)


def check_each_image_depends_only_on_its_own_seed_and_class(generator) -> None:
    """A fitted GAN kind (``sample_batch_size`` 3): one row's image alone equals it in a batch, a plan samples the same
    twice, the same seed and class give the same image, another seed or class another."""
    plan = rows([0, 1, 0, 1, 1], [11, 12, 13, 14, 12], generator)
    batch = generator.generate(plan, progress=False)  # sample_batch_size 3: two chunks
    alone = generator.generate(plan.iloc[[3]], progress=False)
    assert np.abs(alone[0].astype(int) - batch[3].astype(int)).max() <= 1
    np.testing.assert_array_equal(generator.generate(plan, progress=False), batch)
    assert np.abs(batch[1].astype(int) - batch[4].astype(int)).max() <= 1  # same seed, same class: same image
    assert not np.array_equal(batch[0], batch[2])  # another seed: another image
    swapped = generator.generate(plan.iloc[[1]].assign(label=0), progress=False)
    assert not np.array_equal(swapped[0], batch[1])  # the same seed in another class: another image


def check_round_trip(generator, folder: Path):
    """Save a fitted GAN kind to ``folder`` and load it back: the same record and the same samples; returns it."""
    generator.save(folder)
    assert (folder / WEIGHTS_FILE).is_file()
    loaded = load_generator(folder)
    assert loaded.kind == generator.kind and loaded.settings == generator.settings and loaded.class_names == NAMES
    assert loaded.training == generator.training  # losses, diversity log, collapses
    assert loaded.fingerprint() == generator.fingerprint()
    plan = rows([0, 1, 1], [7, 8, 9], generator)
    np.testing.assert_array_equal(loaded.generate(plan, progress=False), generator.generate(plan, progress=False))
    return loaded


def check_bad_settings_named_in_full(kind: str, values: dict, message: str) -> None:
    """Bad ``generation.<kind>`` values are refused naming the parameter, alone and in the generation block."""
    with pytest.raises(ConfigError, match=message):
        generator_class(kind).settings_class.parse(values)
    with pytest.raises(ConfigError, match=message):
        GenerationConfig.parse({"generator": kind, kind: values})


def test_each_gan_image_depends_only_on_its_own_seed(trained_gan) -> None:
    check_each_image_depends_only_on_its_own_seed_and_class(trained_gan)
    with pytest.raises(ValueError, match=r"label values must be in \[0, 2\)"):
        trained_gan.generate(rows([2], [1], trained_gan), progress=False)


def test_the_gan_round_trips_through_its_folder(trained_gan, tmp_path: Path) -> None:
    assert check_round_trip(trained_gan, tmp_path / "generator").kind == "gan"


def test_an_interrupted_gan_run_resumes_to_the_uninterrupted_weights_and_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uninterrupted = gan()
    uninterrupted.fit(noisy_two_tone(), progress=False)
    crash_after(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        gan().fit(noisy_two_tone(), checkpoint_dir=tmp_path, progress=False)
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path).name == "step-00000004"
    resumed = gan(gan_settings(collapse={"check_every": 2, "start_step": 0, "samples_per_class": 4, "threshold": 0}))
    resumed.fit(noisy_two_tone(), checkpoint_dir=tmp_path, progress=False)  # collapse settings may change
    for key in ("loss_history", "generator_loss_history", "diversity"):
        assert resumed.training[key] == uninterrupted.training[key], key
    assert [row["step"] for row in resumed.training["diversity"]] == [2, 2, 4, 4, 6, 6]
    for name, tensor in uninterrupted.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
    with pytest.raises(ValueError, match="generation.gan.discriminator_learning_rate: checkpoint 0.0002, now 0.001"):
        gan(gan_settings(discriminator_learning_rate=0.001)).fit(
            noisy_two_tone(), checkpoint_dir=tmp_path, progress=False
        )


def test_gan_diversity_is_near_zero_for_near_copies_and_large_for_varied_images() -> None:
    rng = torch.Generator().manual_seed(0)
    varied = torch.rand(8, 3, 32, 32, generator=rng) * 2 - 1
    one = varied[:1].repeat(8, 1, 1, 1)
    assert pairwise_diversity(one) == 0
    near_copies = one + 0.01 * torch.randn(8, 3, 32, 32, generator=rng)
    checkerboard = (torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 0.4 - 0.2
    textured = one + checkerboard * torch.randint(0, 2, (8, 1, 1, 1), generator=rng)  # fine texture only
    assert pairwise_diversity(varied) > 0.1
    for copies in (near_copies, textured):
        assert pairwise_diversity(copies) < 0.05 * pairwise_diversity(varied)
    with pytest.raises(ValueError, match="at least 2 images"):
        pairwise_diversity(varied[:1])


class IgnoresItsLatent(torch.nn.Module):
    """A collapsed generator: one image per class whatever the latent."""

    def __init__(self) -> None:
        super().__init__()
        self.image = torch.nn.Parameter(torch.zeros(2, 3, SIZE, SIZE))

    def forward(self, latents: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.image[labels]


def test_a_collapsed_gan_stops_the_run_naming_the_class_step_ratio_and_parameter() -> None:
    generator = gan(gan_settings(collapse={"start_step": 0}))  # the default threshold
    references = {0: 0.3, 1: 0.3}
    with pytest.raises(ModeCollapseError) as raised:
        generator._check_collapse(IgnoresItsLatent(), references, 250, TrainingLog())
    message = str(raised.value)
    assert "The GAN collapsed on class 'black' at step 250" in message and "0.000 times as diverse" in message
    assert (
        "generation.gan.collapse.threshold = 0.2" in message and "generation.gan.collapse.on_collapse: warn" in message
    )
    healthy = gan(gan_settings(train_steps=4))
    healthy.fit(noisy_two_tone(), progress=False)  # the default threshold does not trip on an ordinary model
    assert healthy.training["collapses"] == [] and len(healthy.training["diversity"]) == 4


def test_gan_collapse_checks_stop_the_run_before_the_checkpoint_or_are_recorded_with_warn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    strict = {"check_every": 2, "start_step": 4, "samples_per_class": 4, "threshold": 1000.0}  # any model trips it
    with pytest.raises(ModeCollapseError, match=r"class 'black' at step 4: .* below generation.gan.collapse.thr"):
        gan(gan_settings(collapse=strict)).fit(noisy_two_tone(), checkpoint_dir=tmp_path, progress=False)
    assert latest_checkpoint(tmp_path).name == "step-00000002"  # the collapsed step is not checkpointed
    warned = gan(gan_settings(collapse={**strict, "on_collapse": "warn"}))
    with caplog.at_level("WARNING"):
        warned.fit(noisy_two_tone(), progress=False)
    record = warned.training
    assert [(row["step"], row["class_name"]) for row in record["diversity"]] == [
        (4, "black"),
        (4, "white"),
        (6, "black"),
        (6, "white"),
    ]
    assert all(row["ratio"] == row["diversity"] / row["real_diversity"] for row in record["diversity"])
    assert [(row["step"], row["class_name"]) for row in record["collapses"]] == [
        (4, "black"),
        (4, "white"),
        (6, "black"),
        (6, "white"),
    ]
    assert record["collapses"][0]["threshold"] == 1000.0
    assert "collapsed on class 'white' at step 6" in caplog.text and "on_collapse is warn" in caplog.text
    assert load_generator(warned.save(tmp_path / "warned")).training["collapses"] == record["collapses"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"train_steps": 0}, r"generation.gan.train_steps must be at least 1, got 0"),
        ({"batch_size": 0}, r"generation.gan.batch_size must be at least 1, got 0"),
        ({"generator_learning_rate": 0}, r"generation.gan.generator_learning_rate must be positive"),
        ({"betas": [0.5]}, r"generation.gan.betas must be two numbers in \[0, 1\), got \[0.5\]"),
        ({"betas": [0.5, 1.0]}, r"generation.gan.betas must be two numbers in \[0, 1\)"),
        ({"ema_decay": 1.0}, r"generation.gan.ema_decay must be in \[0, 1\)"),
        ({"diffaugment": ["zoom"]}, r"generation.gan.diffaugment\[0\] must be one of \['color', 'translation', 'cu"),
        ({"collapse": {"threshold": -1}}, r"generation.gan.collapse.threshold must be at least 0"),
        ({"collapse": {"samples_per_class": 1}}, r"generation.gan.collapse.samples_per_class must be at least 2"),
        ({"collapse": {"on_collapse": "ignore"}}, r"generation.gan.collapse.on_collapse must be one of \['fail', 'w"),
        ({"learning_rate": 0.1}, r"Unknown parameter\(s\) generation.gan.learning_rate"),
    ],
)
def test_bad_gan_settings_are_named_in_full(values: dict, message: str) -> None:
    check_bad_settings_named_in_full("gan", values, message)


def test_the_generation_block_chooses_the_gan() -> None:
    config = GenerationConfig.parse({"generator": "gan", "gan": {"train_steps": 7}})
    assert config.generator_class is generator_class("gan") and config.settings == GANSettings(train_steps=7)


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
    """The UNet's output on fixed inputs (with an XL UNet's pooled text and size ids): a precise fingerprint of its
    (LoRA-adapted) weights."""
    unet = generator._ready_pipeline().unet
    inputs = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 16, 16, generator=inputs)
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=inputs)
    extra = {}
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.add_embedding.linear_1.in_features - 6 * unet.config.addition_time_embed_dim
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, pooled, generator=inputs),
            "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]]),
        }
    with torch.no_grad():
        return unet(latents, 500, text, **extra).sample


def fit_sample_and_round_trip(generator, mode: str, folder: Path):
    """Fit the LoRA generator; check that only the adapter trains, that a row alone gives its image of a batch and
    that the saved adapter reloads to the same UNet; returns the loaded generator."""
    losses = generator.fit(two_tone(), progress=False)
    assert len(losses) == 4 and np.isfinite(losses).all()
    trainable = [name for name, parameter in generator.pipeline.unet.named_parameters() if parameter.requires_grad]
    assert trainable and all(".lora_" in name for name in trainable)
    record = generator.sampling_record(generator.settings, "white")
    assert record["mode"] == mode
    plan = pd.DataFrame({"label": [1, 0, 1], "seed": [1, 2, 3], "cluster_index": 0}).assign(**record)
    sources = two_tone().images[[9, 0, 10]] if mode == "image_to_image" else None
    batch = generator.generate(plan, sources, progress=False)
    assert batch.shape == (3, SIZE, SIZE, 3) and batch.dtype == np.uint8
    alone = generator.generate(plan.iloc[[2]], None if sources is None else sources[[2]], progress=False)
    assert np.abs(alone[0].astype(int) - batch[2].astype(int)).max() <= 1
    loaded = load_generator(generator.save(folder))
    torch.testing.assert_close(unet_prediction(loaded), unet_prediction(generator), rtol=1e-5, atol=1e-6)
    return loaded


@pytest.mark.parametrize("mode", ["text_to_image", "image_to_image"])
def test_lora_generator_fits_samples_per_seed_and_round_trips(sd_folder: Path, tmp_path: Path, mode: str) -> None:
    generator = sd(sd_folder, mode=mode, strength=0.6)
    assert generator.sampling_record(generator.settings, "white")["prompt"] == "retina fundus"
    loaded = fit_sample_and_round_trip(generator, mode, tmp_path / "lora")
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
