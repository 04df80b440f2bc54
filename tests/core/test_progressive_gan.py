"""The progressive-growing GAN (`generation.generator: progressive_gan`): its stages and fade-in, its networks at
each stage, fitting and sampling with one seed per image, an exact resume, a safetensors round trip, its settings'
checks and the GAN's collapse detection.

The networks are tiny (8-channel levels, a 16-number latent) and trained for a handful of steps at 8 px (stages 4
and 8) unless a test is about the working size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from generative_augmentation.core.config import ConfigError
from generative_augmentation.core.generation import GenerationConfig
from generative_augmentation.core.generators import generator_class, load_generator
from generative_augmentation.core.generators.gan import WEIGHTS_FILE, ModeCollapseError, pairwise_diversity
from generative_augmentation.core.generators.progressive_gan import (
    GrowthSchedule,
    ProgressiveGANSettings,
    minibatch_stddev,
    real_at,
    stage_resolutions,
)
from generative_augmentation.core.images import ImageSpec, to_signed_tensor
from generative_augmentation.core.training import latest_checkpoint, make_accelerator
from tests.core.test_generators import (
    IMAGE,
    NAMES,
    check_bad_settings_named_in_full,
    check_each_image_depends_only_on_its_own_seed_and_class,
    check_round_trip,
    gan_settings,
    noisy_two_tone,
    rows,
)

TINY = gan_settings().to_dict()  # the GAN tests' tiny networks, batches, checkpoints and collapse checks
COLLAPSE = TINY.pop("collapse")  # every 2 steps from step 0, 4 samples per class
del TINY["train_steps"]  # the progressive GAN's follow from its stages


def settings(**changes: object) -> ProgressiveGANSettings:
    """Stages 4 and 8 px at 8 px: 2 steps at 4 px, 4 fading 8 px in, 2 at 8 px."""
    values = {**TINY, "fade_steps": 4, "stable_steps": 2, "collapse": COLLAPSE}
    return ProgressiveGANSettings.parse({**values, **changes})


def pgan(values: ProgressiveGANSettings | None = None, image: ImageSpec = IMAGE, seed: int = 3):
    return generator_class("progressive_gan")(values or settings(), image, NAMES, 0, seed, "cpu")


@pytest.fixture(scope="module")
def trained():
    generator = pgan(settings(stable_steps=6))  # 6 at 4 px, 4 fading 8 px in, 6 at 8 px
    generator.fit(noisy_two_tone(), progress=False)
    return generator


# --- growth ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "start", "stages"),
    [
        (28, 4, [4, 8, 16, 32]),  # generated at 32 px, resized to 28
        (32, 4, [4, 8, 16, 32]),
        (32, 8, [8, 16, 32]),
        (64, 4, [4, 8, 16, 32, 64]),
        (16, 16, [16]),  # one stage: no growth, no fade-in
    ],
)
def test_the_stages_double_from_the_start_resolution_to_the_generated_side(size: int, start: int, stages) -> None:
    assert stage_resolutions(start, stages[-1]) == stages
    generator = pgan(settings(start_resolution=start, fade_steps=3, stable_steps=5), ImageSpec(size=size, mode="RGB"))
    assert list(generator.schedule.resolutions) == stages
    assert generator.total_steps == 5 + (len(stages) - 1) * (3 + 5)
    assert (
        "train steps" in generator.schedule.describe() and str(generator.total_steps) in generator.schedule.describe()
    )


def test_alpha_ramps_from_zero_to_one_over_the_fade_in_then_stays_at_one() -> None:
    schedule = GrowthSchedule((4, 8, 16), fade_steps=4, stable_steps=2)
    assert schedule.total_steps == 14
    assert [schedule.at(step) for step in range(schedule.total_steps)] == [
        (4, 1.0),
        (4, 1.0),  # the first stage: stable only
        (8, 0.0),
        (8, 0.25),
        (8, 0.5),
        (8, 0.75),  # 8 px fading in
        (8, 1.0),
        (8, 1.0),
        (16, 0.0),
        (16, 0.25),
        (16, 0.5),
        (16, 0.75),
        (16, 1.0),
        (16, 1.0),
    ]
    assert schedule.at(100) == (16, 1.0)  # past the end: the full side


def test_real_images_are_pooled_to_the_stage_and_blended_with_the_stage_below_while_it_fades_in() -> None:
    images = torch.rand(3, 2, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    at_8 = F.avg_pool2d(images, 2)
    assert torch.equal(real_at(images, 16, 1.0), images)
    assert torch.allclose(real_at(images, 8, 1.0), at_8)
    below = F.interpolate(F.avg_pool2d(at_8, 2), scale_factor=2, mode="nearest")
    assert torch.allclose(real_at(images, 8, 0.0), below)
    assert torch.allclose(real_at(images, 8, 0.25), 0.75 * below + 0.25 * at_8)
    assert real_at(images, 4, 0.5).shape == (3, 2, 4, 4)


def test_a_training_step_grows_all_three_networks_and_shows_real_images_at_its_stage() -> None:
    generator = pgan()  # 2 steps at 4 px, then 8 px fading in over 4 steps
    nets = generator._networks(make_accelerator("cpu", mixed_precision=False))
    data = noisy_two_tone()
    real, labels = to_signed_tensor(data.images), torch.from_numpy(data.labels)
    for step, (level, alpha) in [(0, (0, 1.0)), (3, (1, 0.25)), (6, (1, 1.0))]:
        generator._adversarial_step(nets, real, labels, step)
        for net in (nets.generator, nets.discriminator, nets.ema):  # the EMA: collapse checks sample it
            assert (net.level, net.alpha) == (level, alpha), (step, type(net).__name__)
    assert torch.allclose(generator._real_batch(real, 0), F.avg_pool2d(real, 2))
    assert torch.allclose(generator._real_batch(real, 3), real_at(real, 8, 0.25))
    assert not torch.allclose(generator._real_batch(real, 3), real)
    assert torch.equal(generator._real_batch(real, 6), real)


def test_a_level_fading_in_at_alpha_zero_shows_the_stage_below() -> None:
    generator = pgan(image=ImageSpec(size=16, mode="RGB"))
    net, discriminator = generator.build_generator().eval(), generator.build_discriminator().eval()
    latents, labels = torch.randn(4, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 1, 0])
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        assert net(latents, labels).shape == (4, 3, 16, 16)  # built at the full side
        net.grow(4, 1.0)
        below = net(latents, labels)
        net.grow(8, 0.0)
        fading = net(latents, labels)
        net.grow(8, 1.0)
        new = net(latents, labels)
        discriminator.grow(4, 1.0)
        scores_below = discriminator(F.avg_pool2d(images, 2), labels)
        discriminator.grow(8, 0.0)
        scores_fading = discriminator(images, labels)
        discriminator.grow(8, 1.0)
        scores_new = discriminator(images, labels)
    assert below.shape == (4, 3, 4, 4) and fading.shape == new.shape == (4, 3, 8, 8)
    assert torch.allclose(fading, F.interpolate(below, scale_factor=2, mode="nearest"))
    assert not torch.allclose(fading, new)
    assert torch.allclose(scores_fading, scores_below) and not torch.allclose(scores_new, scores_below)


def test_the_minibatch_deviation_is_shared_within_groups_of_consecutive_images_only() -> None:
    x = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    x[:4] = x[0]  # the first group: four copies
    out = minibatch_stddev(x, 4)
    assert out.shape == (8, 4, 4, 4) and torch.equal(out[:, :3], x)
    assert out[:4, 3].max() < 1e-3 and out[4:, 3].min() > 0.1  # no deviation in the group of copies
    assert torch.equal(out[4:, 3], minibatch_stddev(x[4:], 4)[:, 3])  # a group ignores the other images
    six = minibatch_stddev(x[:6], 4)[:, 3]  # groups of 3, the largest size up to 4 that divides 6
    assert six[:3].max() < 1e-3 and len(six[3:].unique()) == 1 and six[3:].min() > 0.1


def test_real_and_generated_images_never_share_a_minibatch_deviation_group() -> None:
    generator = pgan()
    discriminator = generator.build_discriminator().eval()
    draw = torch.Generator().manual_seed(0)
    real, labels = torch.rand(6, 3, 8, 8, generator=draw), torch.tensor([0, 1] * 3)  # 6 + 6: groups of 4 would mix
    with torch.no_grad():
        scores = [
            generator._discriminate(discriminator, real, torch.rand(6, 3, 8, 8, generator=draw), labels) for _ in "ab"
        ]
    assert torch.equal(scores[0][0], scores[1][0]) and not torch.equal(scores[0][1], scores[1][1])


# --- fitting, sampling, saving -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "mode"), [(28, "RGB"), (16, "L")])
def test_the_progressive_gan_fits_and_samples_each_working_size_and_colour_mode(size: int, mode: str) -> None:
    image = ImageSpec(size=size, mode=mode)
    generator = pgan(settings(fade_steps=1, stable_steps=1, collapse={"check_every": 0}), image)
    losses = generator.fit(noisy_two_tone(image.channels, size), progress=False)
    stages = [4, 8, 16, 32] if size == 28 else [4, 8, 16]
    assert len(losses) == 1 + 2 * (len(stages) - 1) and np.isfinite(losses).all()
    assert generator.training["stages"] == stages and len(generator.training["generator_loss_history"]) == len(losses)
    assert generator.model.level == generator.model.top_level and generator.model.alpha == 1.0
    images = generator.generate(rows([0, 1, 1], [1, 2, 3], generator), progress=False)
    assert images.shape == (3, size, size, image.channels) and images.dtype == np.uint8
    assert generator.sampling_record(generator.settings, "white")["sampler"] == "progressive_gan"


def test_each_image_depends_only_on_its_own_seed_and_class(trained) -> None:
    check_each_image_depends_only_on_its_own_seed_and_class(trained)


def test_the_progressive_gan_round_trips_through_safetensors_without_pickles(
    trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pickles(*args, **kwargs):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", no_pickles)
    loaded = check_round_trip(trained, tmp_path / "generator")
    assert loaded.kind == "progressive_gan" and loaded.training["stages"] == [4, 8]
    assert sorted(path.name for path in (tmp_path / "generator").iterdir()) == ["generator.json", WEIGHTS_FILE]


def test_an_interrupted_run_resumes_mid_fade_in_to_the_uninterrupted_weights_and_log(tmp_path: Path) -> None:
    uninterrupted = pgan()  # 2 steps at 4 px, 4 fading 8 px in (steps 2-5), 2 at 8 px
    uninterrupted.fit(noisy_two_tone(), progress=False)
    interrupted = pgan()
    step = interrupted._adversarial_step

    def killed_at_step_4(nets, real, labels, index):
        if index == 4:  # after the checkpoint of step 4, halfway through the fade-in
            raise KeyboardInterrupt
        return step(nets, real, labels, index)

    interrupted._adversarial_step = killed_at_step_4
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(noisy_two_tone(), checkpoint_dir=tmp_path, progress=False)
    assert latest_checkpoint(tmp_path).name == "step-00000004"
    resumed = pgan(settings(collapse={**COLLAPSE, "threshold": 0}))  # collapse settings may change
    resumed.fit(noisy_two_tone(), checkpoint_dir=tmp_path, progress=False)
    for key in ("loss_history", "generator_loss_history", "diversity", "stages"):
        assert resumed.training[key] == uninterrupted.training[key], key
    assert len(resumed.training["loss_history"]) == 8
    assert [row["step"] for row in resumed.training["diversity"]] == [2, 2, 4, 4, 6, 6, 8, 8]
    for name, tensor in uninterrupted.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
    with pytest.raises(ValueError, match="generation.progressive_gan.fade_steps: checkpoint 4, now 3"):
        pgan(settings(fade_steps=3)).fit(noisy_two_tone(), checkpoint_dir=tmp_path, progress=False)


# --- settings ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"start_resolution": 6}, r"generation.progressive_gan.start_resolution must be a power of two of at least 4"),
        ({"start_resolution": 2}, r"generation.progressive_gan.start_resolution must be a power of two .*, got 2"),
        ({"fade_steps": 0}, r"generation.progressive_gan.fade_steps must be at least 1, got 0"),
        ({"stable_steps": 0}, r"generation.progressive_gan.stable_steps must be at least 1, got 0"),
        ({"minibatch_group": 0}, r"generation.progressive_gan.minibatch_group must be at least 1"),
        ({"batch_size": 0}, r"generation.progressive_gan.batch_size must be at least 1, got 0"),
        ({"ema_decay": 1.0}, r"generation.progressive_gan.ema_decay must be in \[0, 1\)"),
        ({"collapse": {"threshold": -1}}, r"generation.progressive_gan.collapse.threshold must be at least 0"),
        ({"train_steps": 100}, r"Unknown parameter\(s\) generation.progressive_gan.train_steps"),
    ],
)
def test_bad_progressive_gan_settings_are_named_in_full(values: dict, message: str) -> None:
    check_bad_settings_named_in_full("progressive_gan", values, message)


def test_a_start_resolution_above_the_generated_side_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"generation.progressive_gan.start_resolution must be at most 32, the side"):
        pgan(settings(start_resolution=64), ImageSpec(size=28, mode="RGB"))
    assert pgan(settings(start_resolution=32), ImageSpec(size=28, mode="RGB")).schedule.resolutions == (32,)


def test_the_generation_block_chooses_the_progressive_gan_with_its_own_parameter_names() -> None:
    config = GenerationConfig.parse({"generator": "progressive_gan", "progressive_gan": {"stable_steps": 7}})
    assert config.generator_class is generator_class("progressive_gan")
    assert config.settings == ProgressiveGANSettings(stable_steps=7)
    defaults = ProgressiveGANSettings()
    assert defaults.collapse.parameter("threshold") == "generation.progressive_gan.collapse.threshold"


# --- collapse ----------------------------------------------------------------------------------------------------
def test_a_collapse_stops_the_run_before_its_checkpoint_naming_the_class_and_the_parameters(tmp_path: Path) -> None:
    strict = {**COLLAPSE, "start_step": 4, "threshold": 1000.0}  # any model trips it
    with pytest.raises(ModeCollapseError) as raised:
        pgan(settings(collapse=strict)).fit(noisy_two_tone(), checkpoint_dir=tmp_path, progress=False)
    message = str(raised.value)
    assert "The progressive GAN collapsed on class 'black' at step 4" in message
    assert "generation.progressive_gan.collapse.threshold = 1000" in message
    assert "generation.progressive_gan.stable_steps" in message and "collapse.on_collapse: warn" in message
    assert latest_checkpoint(tmp_path).name == "step-00000002"  # the collapsed step is not checkpointed


def test_with_warn_collapses_are_logged_and_recorded_and_checks_compare_at_the_stage_side(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    generator = pgan(settings(collapse={**COLLAPSE, "threshold": 1000.0, "on_collapse": "warn"}))
    data = noisy_two_tone()
    with caplog.at_level("WARNING"):
        generator.fit(data, progress=False)
    record = generator.training
    assert [(row["step"], row["class_name"]) for row in record["collapses"]] == [
        (step, name) for step in (2, 4, 6, 8) for name in NAMES
    ]
    assert "collapsed on class 'white' at step 8" in caplog.text and "on_collapse is warn" in caplog.text
    real = to_signed_tensor(data.images[data.labels == 0])
    by_step = {row["step"]: row["real_diversity"] for row in record["diversity"] if row["class_name"] == "black"}
    assert by_step[2] == pytest.approx(pairwise_diversity(F.avg_pool2d(real, 2)))  # step 2 ran at 4 px
    assert by_step[8] == pytest.approx(pairwise_diversity(real))  # the last steps at 8 px
    assert by_step[2] != pytest.approx(by_step[8])
    assert load_generator(generator.save(tmp_path / "warned")).training["collapses"] == record["collapses"]
