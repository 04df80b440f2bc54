"""A compact class-conditional progressive-growing GAN (Karras et al., ICLR 2018) for small datasets.

Built on :mod:`gan`'s GAN, whose networks, loss (hinge), DiffAugment, EMA, collapse detection, seeded steps,
checkpoints and sampling it reuses; what it adds is the growth:

* Stages: the networks work at ``start_resolution`` px (4 or 8), then at twice that, ... up to the side the networks
  support (the next power of two at or above ``image.size``; 28 px is grown 4, 8, 16, 32 and resized to 28 as the
  GAN resizes). The first stage trains ``stable_steps``; every later one fades its new level in over
  ``fade_steps`` (alpha from 0 to 1, rising by ``1 / fade_steps`` a step), then trains ``stable_steps`` at alpha 1.
* Generator: the GAN's (PixelNorm at every level, class embedding with the latent, per-class modulation) with an
  image head at every stage's level; at a stage it stops at that stage's level, and while fading in its image is
  ``lerp(upsampled image of the level below, new level's image, alpha)``.
* Discriminator: the GAN's spectral-norm projection discriminator with an image-reading layer at every stage's level
  and the minibatch standard deviation (over groups of ``minibatch_group`` consecutive images) as one more feature map
  before its last convolution; while fading in, the new level's output is blended with the half-size image read by
  the level below. Real and generated images go through it in separate passes, so no group mixes them.
* Real images: average-pooled to the stage's side and, while a stage fades in, blended with their half-side version
  upsampled, as the generator's output is.
* Spectral norm rather than the paper's equalised learning rate: the hinge loss and projection head are the GAN's,
  tuned with a spectral-norm discriminator, which bounds its Lipschitz constant without WGAN-GP's gradient penalty (a
  second backward pass per step on a CPU) and keeps it from memorising a few hundred images.

Every random draw of step ``s`` comes from ``(seed, s)`` and the stage and alpha of a step from its index, so a
resumed run continues exactly as the uninterrupted one.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from generative_augmentation.core.config import ConfigError
from generative_augmentation.core.generators.base import TrainingImages, register
from generative_augmentation.core.generators.gan import (
    LEAK,
    AdversarialSettings,
    GANCollapse,
    GANGenerator,
    GANGeneratorNet,
    Networks,
    ProjectionDiscriminator,
    downsample,
    level_widths,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProgressiveGANCollapse(GANCollapse):
    """The GAN's collapse detection; checks compare samples and real images at the stage's side."""

    where = "generation.progressive_gan.collapse"


@dataclass(frozen=True)
class ProgressiveGANSettings(AdversarialSettings):
    """Growth, architecture, training and sampling of the progressive GAN (size, channels and classes come from the
    data); the train-step count follows from the stages: ``stable_steps + (stages - 1) * (fade_steps +
    stable_steps)``."""

    where = "generation.progressive_gan"
    steps_parameter = "stable_steps"
    start_resolution: int = 4  # side of the first stage: a power of two from 4 up to the networks' side
    fade_steps: int = 200  # steps fading each later stage's new level in (alpha 0 -> 1)
    stable_steps: int = 300  # steps at each stage once faded in (the first stage: only these)
    minibatch_group: int = 4  # images per minibatch-standard-deviation group in the discriminator (1: none)
    ema_decay: float = 0.995  # shorter than the GAN's: the newest level's averaged weights must catch up in a stage
    collapse: ProgressiveGANCollapse = field(default_factory=ProgressiveGANCollapse)

    def checks(self):
        start = self.start_resolution
        yield (
            "start_resolution",
            start >= 4 and start & (start - 1) == 0,
            f"must be a power of two of at least 4, got {start}",
        )
        yield from self.at_least("fade_steps", "stable_steps", "minibatch_group")
        yield from super().checks()


# Settings that change neither the weights nor the random draws of a step: a resumed run may change them.
RESUMABLE_FIELDS = ("checkpoint_every", "sample_batch_size", "collapse")


# --- growth ------------------------------------------------------------------------------------------------------
def stage_resolutions(start: int, side: int) -> list[int]:
    """The sides of the stages: ``start``, twice that, ..., ``side`` (both powers of two, ``start <= side``)."""
    return [start << stage for stage in range(int(math.log2(side // start)) + 1)]


@dataclass(frozen=True)
class GrowthSchedule:
    """Which stage, and how far faded in, each training step is."""

    resolutions: tuple[int, ...]
    fade_steps: int
    stable_steps: int

    @property
    def total_steps(self) -> int:
        return self.stable_steps + (len(self.resolutions) - 1) * (self.fade_steps + self.stable_steps)

    def at(self, step: int) -> tuple[int, float]:
        """(side, alpha) of step ``step`` (0-based): alpha is ``t / fade_steps`` at the ``t``-th step of a fade-in,
        1 in the first stage, in every stable phase and past the last step."""
        if step < self.stable_steps:
            return self.resolutions[0], 1.0
        if step >= self.total_steps:
            return self.resolutions[-1], 1.0
        stage, into = divmod(step - self.stable_steps, self.fade_steps + self.stable_steps)
        return self.resolutions[stage + 1], min(1.0, into / self.fade_steps)

    def describe(self) -> str:
        sides = ", ".join(str(side) for side in self.resolutions)
        return (
            f"stages {sides} px, {self.stable_steps} steps in the first, {self.fade_steps} fading in + "
            f"{self.stable_steps} in each later one: {self.total_steps} train steps"
        )


def level_of(side: int) -> int:
    """The level of a side: 0 at 4x4, 1 at 8x8, ..."""
    return int(math.log2(side // 4))


def real_at(images: torch.Tensor, side: int, alpha: float) -> torch.Tensor:
    """Real images (at the networks' full side) as a stage shows them: average-pooled to ``side`` and, while the stage
    fades in (``alpha < 1``), blended with their half-side version upsampled, as the generator's output is."""
    x = downsample(images, side)
    if alpha < 1:
        x = torch.lerp(F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest"), x, alpha)
    return x


def minibatch_stddev(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """``x`` with one more channel: the standard deviation of each feature over the image's group of consecutive
    images, averaged over features and pixels (groups of the largest size up to ``group_size`` dividing the batch)."""
    count, channels, height, width = x.shape
    size = max(size for size in range(1, min(group_size, count) + 1) if count % size == 0)
    groups = x.reshape(count // size, size, channels, height, width)
    deviation = (groups.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))
    return torch.cat([x, deviation.repeat_interleave(size).view(count, 1, 1, 1).expand(count, 1, height, width)], 1)


class Growing:
    """Where a growing network works: at ``side`` px, its newest level faded in by ``alpha`` (not saved: a built or
    loaded network works at its full side)."""

    start_level: int
    top_level: int
    level: int
    alpha: float

    def grow(self, side: int, alpha: float) -> None:
        self.level, self.alpha = level_of(side), float(alpha)

    @property
    def fading(self) -> bool:
        return self.alpha < 1 and self.level > self.start_level


class ProgressiveGeneratorNet(GANGeneratorNet, Growing):
    """(latent, class) -> image in [-1, 1] at the stage's side: the GAN's generator with an image head per stage."""

    def __init__(self, latent_size: int, num_classes: int, channels: int, side: int, width: int, start: int):
        super().__init__(latent_size, num_classes, channels, side, width)
        widths = level_widths(side, width)
        self.start_level, self.top_level = level_of(start), len(widths) - 1
        self.level, self.alpha = self.top_level, 1.0
        # the image heads of the stages below the top (the top's is the GAN's to_image)
        self.to_images = nn.ModuleList(
            nn.Conv2d(widths[level], channels, 3, padding=1) for level in range(self.start_level, self.top_level)
        )

    def head(self, level: int) -> nn.Module:
        return self.to_image if level == self.top_level else self.to_images[level - self.start_level]

    def forward(self, latents: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        maps = list(itertools.islice(self.features(latents, labels), self.level + 1))
        image = self.head(self.level)(maps[-1])
        if self.fading:
            below = self.head(self.level - 1)(maps[-2])
            image = torch.lerp(F.interpolate(below, scale_factor=2, mode="nearest"), image, self.alpha)
        return torch.tanh(image)


class ProgressiveDiscriminator(ProjectionDiscriminator, Growing):
    """Image at the stage's side and class -> realness score: the GAN's projection discriminator with an image-reading
    layer per stage and the minibatch standard deviation before its last convolution."""

    def __init__(self, num_classes: int, channels: int, side: int, width: int, start: int, group_size: int):
        super().__init__(num_classes, channels, side, width, extra_channels=1)
        widths = level_widths(side, width)
        self.start_level, self.top_level = level_of(start), len(widths) - 1
        self.level, self.alpha = self.top_level, 1.0
        self.group_size = group_size
        # the image readers of the stages below the top (the top's is the GAN's first layer)
        self.from_images = nn.ModuleList(
            spectral_norm(nn.Conv2d(channels, widths[level], 3, padding=1))
            for level in range(self.start_level, self.top_level)
        )

    def reader(self, level: int) -> nn.Module:
        return self.layers[0] if level == self.top_level else self.from_images[level - self.start_level]

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.reader(self.level)(images), LEAK)
        halvings = list(self.layers[1:-1])[self.top_level - self.level :]  # the stage's level down to 4x4
        for index, layer in enumerate(halvings):
            x = F.leaky_relu(layer(x), LEAK)
            if index == 0 and self.fading:
                below = F.leaky_relu(self.reader(self.level - 1)(F.avg_pool2d(images, 2)), LEAK)
                x = torch.lerp(below, x, self.alpha)
        x = F.leaky_relu(self.layers[-1](minibatch_stddev(x, self.group_size)), LEAK)
        return self.project(x, labels)


# --- the generator kind ------------------------------------------------------------------------------------------
@register
class ProgressiveGANGenerator(GANGenerator):
    """The progressive-growing class-conditional GAN behind the generator interface (CPU-friendly at 16-64 px)."""

    kind = "progressive_gan"
    title = "progressive GAN"
    settings_class = ProgressiveGANSettings
    settings: ProgressiveGANSettings
    resumable_fields = RESUMABLE_FIELDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings, side = self.settings, self.side
        if settings.start_resolution > side:
            raise ConfigError(
                f"Parameter {settings.parameter('start_resolution')} must be at most {side}, the side image.size "
                f"{self.image.size} is generated at, got {settings.start_resolution}"
            )
        resolutions = tuple(stage_resolutions(settings.start_resolution, side))
        self.schedule = GrowthSchedule(resolutions, settings.fade_steps, settings.stable_steps)

    @property
    def total_steps(self) -> int:
        return self.schedule.total_steps

    def build_generator(self) -> ProgressiveGeneratorNet:
        settings = self.settings
        return ProgressiveGeneratorNet(
            settings.latent_size,
            len(self.class_names),
            self.image.channels,
            self.side,
            settings.generator_width,
            settings.start_resolution,
        )

    def build_discriminator(self) -> ProgressiveDiscriminator:
        settings = self.settings
        return ProgressiveDiscriminator(
            len(self.class_names),
            self.image.channels,
            self.side,
            settings.discriminator_width,
            settings.start_resolution,
            settings.minibatch_group,
        )

    def fit(self, data: TrainingImages, checkpoint_dir: Path | None = None, progress: bool = True) -> list[float]:
        resized = f" (resized to {self.image.size} px)" if self.side != self.image.size else ""
        logger.info("Progressive GAN: %s%s", self.schedule.describe(), resized)
        losses = super().fit(data, checkpoint_dir, progress)
        self.training["stages"] = list(self.schedule.resolutions)
        return losses

    def _adversarial_step(
        self, nets: Networks, real: torch.Tensor, labels: torch.Tensor, step: int
    ) -> tuple[float, float]:
        side, alpha = self.schedule.at(step)
        for net in (nets.accelerator.unwrap_model(nets.generator), nets.accelerator.unwrap_model(nets.discriminator)):
            net.grow(side, alpha)
        nets.ema.grow(side, alpha)  # collapse checks sample it at the stage's side
        return super()._adversarial_step(nets, real, labels, step)

    def _real_batch(self, batch: torch.Tensor, step: int) -> torch.Tensor:
        return real_at(batch, *self.schedule.at(step))

    def _discriminate(
        self, discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Real and generated images in separate passes: no minibatch-deviation group mixes them."""
        return discriminator(real, labels), discriminator(fake, labels)

    def _resolution(self, step: int) -> int:
        return self.schedule.at(step)[0]
