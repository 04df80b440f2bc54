"""A compact class-conditional GAN for small datasets, with collapse detection.

Hand-written: no maintained pip package offers a class-conditional small-data GAN that trains offline on a CPU.

* Generator: DCGAN-style upsampling (nearest x2, 3x3 conv) from 4x4 to the next power of two at or above the image
  size, each level normalised per pixel (PixelNorm: no batch statistics, so an image depends only on its own
  latent) and modulated by its class (a learnt per-class scale and shift); the class also enters with the latent.
  Images are resized to the working size when it is not a power of two (28 px is generated at 32).
* Discriminator: strided convolutions down to 4x4 with spectral norm on every layer, and a projection head
  (Miyato & Koyama, ICLR 2018): ``D(x, y) = w . phi(x) + embed(y) . phi(x)``.
* Loss: hinge. Small-data remedy: DiffAugment (Zhao et al., NeurIPS 2020): the same kinds of differentiable
  augmentation (colour, translation, cutout) applied to real and generated images before every discriminator
  pass, so the discriminator cannot memorise the few real images.
* Samples come from an exponential moving average of the generator's weights; one seed per image.
* Collapse: every ``collapse.check_every`` steps a fixed batch per class (fixed seeds) is sampled and its diversity
  (mean pairwise distance) divided by that of the class's real train images; below ``collapse.threshold`` the run
  stops naming the class, or, with ``collapse.on_collapse: warn``, logs it and records it in the training record.

The progressive-growing GAN (``progressive_gan.py``) is this GAN with growing networks: it overrides the hooks
:meth:`GANGenerator._adversarial_step`, ``_real_batch``, ``_discriminate`` and ``_resolution``.

Training uses the project's step loop and checkpoints: every random draw of step ``s`` comes from ``(seed, s)``, and
both networks, both optimisers, the EMA weights and the training log are checkpointed, so a resumed run continues
exactly as the uninterrupted one.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from generative_augmentation.core.config import Config
from generative_augmentation.core.generators.base import Generator, TrainingImages, register
from generative_augmentation.core.images import from_signed_tensor, to_signed_tensor
from generative_augmentation.core.runtime import derive_seed, pick_device, seeded, torch_generator
from generative_augmentation.core.training import (
    Checkpointer,
    batch_indices,
    cpu_tensors,
    make_accelerator,
    run_steps,
    step_generator,
)

logger = logging.getLogger(__name__)

AUGMENTATIONS = ("color", "translation", "cutout")
TRANSLATION_RATIO = 0.125  # DiffAugment's defaults: shift by up to 1/8 of the side, cut out a square half the side
CUTOUT_RATIO = 0.5
DIVERSITY_SIDE = 16  # images are average-pooled to at most 16 px before their distances are measured
WEIGHTS_FILE = "generator.safetensors"
LEAK = 0.2


class ModeCollapseError(RuntimeError):
    """The GAN's samples of a class became far less diverse than the class's real images."""


@dataclass(frozen=True)
class GANCollapse(Config):
    """Collapse detection: every ``check_every`` steps from ``start_step`` on (and after the last step), the EMA
    generator samples ``samples_per_class`` images per class with fixed seeds; their mean pairwise distance divided
    by that of (up to ``real_per_class``) real train images of the class is the class's diversity ratio. Below
    ``threshold``: ``fail`` stops the run naming the class, ``warn`` logs it and records it with the generator."""

    where = "generation.gan.collapse"
    check_every: int = 250  # 0: never check
    start_step: int = 500
    samples_per_class: int = 16
    real_per_class: int = 64
    threshold: float = 0.2
    on_collapse: Literal["fail", "warn"] = "fail"

    def checks(self):
        yield from self.at_least("check_every", "start_step", minimum=0)
        yield from self.at_least("samples_per_class", "real_per_class", minimum=2)
        yield from self.at_least("threshold", minimum=0)

    def due(self, completed: int, total: int) -> bool:
        """Whether the check runs after ``completed`` of ``total`` steps."""
        if self.check_every == 0 or completed < self.start_step:
            return False
        return completed % self.check_every == 0 or completed == total


@dataclass(frozen=True)
class AdversarialSettings(Config):
    """What the GAN kinds share: networks' sizes, optimisers, EMA, DiffAugment, checkpoints, collapse detection."""

    steps_parameter: ClassVar[str]  # the field a collapse message suggests lowering
    latent_size: int = 128
    generator_width: int = 32  # channels of the last generator level; lower levels double it, up to 4x
    discriminator_width: int = 32  # channels of the first discriminator level; deeper levels double it, up to 4x
    batch_size: int = 32
    generator_learning_rate: float = 0.0002
    discriminator_learning_rate: float = 0.0002
    betas: tuple[float, float] = (0.0, 0.9)
    ema_decay: float = 0.999
    diffaugment: tuple[Literal["color", "translation", "cutout"], ...] = AUGMENTATIONS
    checkpoint_every: int = 500
    sample_batch_size: int = 64
    collapse: GANCollapse = field(default_factory=GANCollapse)

    def checks(self):
        yield from self.at_least("latent_size", "generator_width", "discriminator_width", "batch_size")
        yield from self.at_least("checkpoint_every", "sample_batch_size")
        yield from self.positive("generator_learning_rate", "discriminator_learning_rate")
        yield (
            "betas",
            len(self.betas) == 2 and all(0 <= beta < 1 for beta in self.betas),
            f"must be two numbers in [0, 1), got {list(self.betas)}",
        )
        yield from self.within("ema_decay", 0, 1, open_high=True)
        yield (
            "diffaugment",
            len(set(self.diffaugment)) == len(self.diffaugment),
            f"must not repeat an augmentation, got {list(self.diffaugment)}",
        )


@dataclass(frozen=True)
class GANSettings(AdversarialSettings):
    """Architecture, training and sampling of the small-data GAN (size, channels and classes come from the data)."""

    where = "generation.gan"
    steps_parameter = "train_steps"
    train_steps: int = 3000

    def checks(self):
        yield from self.at_least("train_steps")
        yield from super().checks()


# Settings that change neither the weights nor the random draws of a step: a resumed run may change them.
RESUMABLE_FIELDS = ("train_steps", "checkpoint_every", "sample_batch_size", "collapse")


# --- networks ----------------------------------------------------------------------------------------------------
def generation_side(size: int) -> int:
    """The side the networks work at: the next power of two at or above ``size`` (at least 4)."""
    return max(4, 1 << math.ceil(math.log2(size)))


def level_widths(side: int, width: int) -> list[int]:
    """Channels at 4x4, 8x8, ..., ``side``: ``width`` at the finest level, doubling towards 4x4 up to 4x."""
    levels = int(math.log2(side // 4))
    return [width * min(2 ** (levels - level), 4) for level in range(levels + 1)]


def pixel_norm(x: torch.Tensor) -> torch.Tensor:
    """Each pixel's feature vector scaled to unit root-mean-square (per image: no batch statistics)."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class ClassModulation(nn.Module):
    """A per-class scale and shift of each channel, starting at the identity."""

    def __init__(self, num_classes: int, channels: int):
        super().__init__()
        self.embedding = nn.Embedding(num_classes, 2 * channels)
        nn.init.zeros_(self.embedding.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        scale, shift = self.embedding(labels)[:, :, None, None].chunk(2, dim=1)
        return x * (1 + scale) + shift


class GANGeneratorNet(nn.Module):
    """(latent, class) -> image in [-1, 1] at ``side`` px."""

    def __init__(self, latent_size: int, num_classes: int, channels: int, side: int, width: int):
        super().__init__()
        widths = level_widths(side, width)
        self.first_width = widths[0]
        self.embedding = nn.Embedding(num_classes, latent_size)
        self.stem = nn.Linear(2 * latent_size, widths[0] * 16)
        self.stem_modulation = ClassModulation(num_classes, widths[0])
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(widths, widths[1:], strict=False))
        self.modulations = nn.ModuleList(ClassModulation(num_classes, b) for b in widths[1:])
        self.to_image = nn.Conv2d(widths[-1], channels, 3, padding=1)

    def forward(self, latents: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        *_, x = self.features(latents, labels)
        return torch.tanh(self.to_image(x))

    def features(self, latents: torch.Tensor, labels: torch.Tensor) -> Iterator[torch.Tensor]:
        """The feature maps at 4x4, 8x8, ..., ``side``, each computed when asked for."""
        inputs = torch.cat([pixel_norm(latents[:, :, None, None])[:, :, 0, 0], self.embedding(labels)], dim=1)
        x = self.stem(inputs).view(len(latents), self.first_width, 4, 4)
        x = F.leaky_relu(self.stem_modulation(pixel_norm(x), labels), LEAK)
        yield x
        for conv, modulation in zip(self.convs, self.modulations, strict=True):
            x = conv(F.interpolate(x, scale_factor=2, mode="nearest"))
            x = F.leaky_relu(modulation(pixel_norm(x), labels), LEAK)
            yield x


class ProjectionDiscriminator(nn.Module):
    """Image at ``side`` px and class -> realness score; spectral norm on every layer.

    ``layers``: the first reads the image, the next halve the side down to 4x4, the last is a 3x3 convolution at 4x4
    (which reads ``extra_channels`` more channels: the progressive GAN's minibatch standard deviation).
    """

    def __init__(self, num_classes: int, channels: int, side: int, width: int, extra_channels: int = 0):
        super().__init__()
        widths = level_widths(side, width)[::-1]  # finest first
        layers: list[nn.Module] = [spectral_norm(nn.Conv2d(channels, widths[0], 3, padding=1))]
        for a, b in zip(widths, widths[1:], strict=False):
            layers += [spectral_norm(nn.Conv2d(a, b, 4, stride=2, padding=1))]
        layers += [spectral_norm(nn.Conv2d(widths[-1] + extra_channels, widths[-1], 3, padding=1))]
        self.layers = nn.ModuleList(layers)
        self.linear = spectral_norm(nn.Linear(widths[-1], 1))
        self.embedding = spectral_norm(nn.Embedding(num_classes, widths[-1]))

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = images
        for layer in self.layers:
            x = F.leaky_relu(layer(x), LEAK)
        return self.project(x, labels)

    def project(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The projection head on the 4x4 features: ``w . phi(x) + embed(y) . phi(x)``."""
        features = x.sum(dim=(2, 3))
        return self.linear(features).squeeze(1) + (self.embedding(labels) * features).sum(dim=1)


def downsample(images: torch.Tensor, side: int) -> torch.Tensor:
    """Images (N, C, H, H) average-pooled to ``side`` px (H a power-of-two multiple of ``side``; as they are at H)."""
    factor = images.shape[-1] // side
    return F.avg_pool2d(images, factor) if factor > 1 else images


# --- DiffAugment -------------------------------------------------------------------------------------------------
def diff_augment(x: torch.Tensor, policy: tuple[str, ...], generator: torch.Generator) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020) of a batch in [-1, 1]: differentiable, every draw from ``generator`` (CPU)."""
    for name in policy:
        x = {"color": _colour, "translation": _translation, "cutout": _cutout}[name](x, generator)
    return x


def _uniform(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.rand((len(x), 1, 1, 1), generator=generator).to(x.device, x.dtype)


def _colour(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    x = x + (_uniform(x, generator) - 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_uniform(x, generator) * 2) + mean  # saturation (nothing on one channel)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(x, generator) + 0.5) + mean  # contrast


def _translation(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to 1/8 of its side, filling with zeros (mid-grey)."""
    batch, _, height, width = x.shape
    shift_h, shift_w = int(height * TRANSLATION_RATIO + 0.5), int(width * TRANSLATION_RATIO + 0.5)
    dh = torch.randint(-shift_h, shift_h + 1, (batch, 1, 1), generator=generator).to(x.device)
    dw = torch.randint(-shift_w, shift_w + 1, (batch, 1, 1), generator=generator).to(x.device)
    grid_b, grid_h, grid_w = torch.meshgrid(
        torch.arange(batch, device=x.device),
        torch.arange(height, device=x.device),
        torch.arange(width, device=x.device),
        indexing="ij",
    )
    grid_h = torch.clamp(grid_h + dh + 1, 0, height + 1)
    grid_w = torch.clamp(grid_w + dw + 1, 0, width + 1)
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)
    return padded[grid_b, grid_h, grid_w].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Zero a square of half the side at a random place in each image."""
    batch, _, height, width = x.shape
    cut_h, cut_w = int(height * CUTOUT_RATIO + 0.5), int(width * CUTOUT_RATIO + 0.5)
    offset_h = torch.randint(0, height + (1 - cut_h % 2), (batch, 1, 1), generator=generator).to(x.device)
    offset_w = torch.randint(0, width + (1 - cut_w % 2), (batch, 1, 1), generator=generator).to(x.device)
    grid_b, grid_h, grid_w = torch.meshgrid(
        torch.arange(batch, device=x.device),
        torch.arange(cut_h, device=x.device),
        torch.arange(cut_w, device=x.device),
        indexing="ij",
    )
    grid_h = torch.clamp(grid_h + offset_h - cut_h // 2, 0, height - 1)
    grid_w = torch.clamp(grid_w + offset_w - cut_w // 2, 0, width - 1)
    mask = torch.ones(batch, height, width, dtype=x.dtype, device=x.device)
    mask[grid_b, grid_h, grid_w] = 0
    return x * mask.unsqueeze(1)


# --- diversity ---------------------------------------------------------------------------------------------------
def pairwise_diversity(images: torch.Tensor) -> float:
    """Mean pairwise root-mean-square distance between images (N, C, H, W) in [-1, 1], after average pooling to at
    most 16 px (so near-copies that differ only in fine texture count as near-copies). 0: identical images."""
    if len(images) < 2:
        raise ValueError(f"Diversity needs at least 2 images, got {len(images)}")
    x = images.detach().float().cpu()
    if x.shape[-1] > DIVERSITY_SIDE:
        x = F.adaptive_avg_pool2d(x, DIVERSITY_SIDE)
    flat = x.flatten(1)
    distances = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist") / math.sqrt(flat.shape[1])
    return float(distances.sum() / (len(flat) * (len(flat) - 1)))


def collapse_message(
    class_name: str, step: int, ratio: float, settings: AdversarialSettings, title: str = "GAN"
) -> str:
    """What a collapse of ``class_name`` reads: the class, the step, the ratio, the threshold, what to change."""
    collapse = settings.collapse
    message = (
        f"The {title} collapsed on class {class_name!r} at step {step}: its samples are {ratio:.3f} times as diverse "
        f"as its real train images, below {collapse.parameter('threshold')} = {collapse.threshold:g}, so its pool "
        f"would be near-copies of a few images"
    )
    if collapse.on_collapse == "warn":
        return f"{message} ({collapse.parameter('on_collapse')} is warn: the samples are kept, the collapse recorded)"
    return (
        f"{message}. Train fewer steps ({settings.parameter(settings.steps_parameter)}), lower "
        f"{settings.parameter('generator_learning_rate')}, choose another generator (generation.generator), or set "
        f"{collapse.parameter('on_collapse')}: warn to keep the samples and have the collapse recorded"
    )


@dataclass
class Networks:
    """What one GAN training run updates: both networks and their optimisers (prepared by accelerate), and the
    moving average of the generator's weights."""

    accelerator: Accelerator
    generator: nn.Module
    discriminator: nn.Module
    optimizer_g: torch.optim.Optimizer
    optimizer_d: torch.optim.Optimizer
    ema: GANGeneratorNet


@dataclass
class TrainingLog:
    """What the GAN records besides the discriminator loss: the generator loss per step, the diversity checks and
    the collapses let through (``on_collapse: warn``). Checkpointed with the run, so a resumed log is whole."""

    generator_losses: list[float] = field(default_factory=list)
    diversity: list[dict[str, Any]] = field(default_factory=list)
    collapses: list[dict[str, Any]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return {"generator_losses": self.generator_losses, "diversity": self.diversity, "collapses": self.collapses}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator_losses = [float(loss) for loss in state["generator_losses"]]
        self.diversity = list(state["diversity"])
        self.collapses = list(state["collapses"])


@register
class GANGenerator(Generator):
    """The small-data class-conditional GAN behind the generator interface (CPU-friendly at 16-64 px)."""

    kind = "gan"
    title = "GAN"  # in log lines and the progress bar
    settings_class = GANSettings
    settings: GANSettings
    resumable_fields: ClassVar[tuple[str, ...]] = RESUMABLE_FIELDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model: GANGeneratorNet | None = None  # the EMA generator

    @property
    def side(self) -> int:
        return generation_side(self.image.size)

    @property
    def total_steps(self) -> int:
        return self.settings.train_steps

    @classmethod
    def sampling_record(cls, settings: GANSettings, class_name: str) -> dict[str, Any]:
        return {
            "mode": "class_conditional",
            "sampler": cls.kind,
            "steps": 1,
            "guidance_scale": float("nan"),
            "strength": float("nan"),
            "prompt": "",
            "negative_prompt": "",
        }

    def build_generator(self) -> GANGeneratorNet:
        settings = self.settings
        return GANGeneratorNet(
            settings.latent_size, len(self.class_names), self.image.channels, self.side, settings.generator_width
        )

    def build_discriminator(self) -> ProjectionDiscriminator:
        return ProjectionDiscriminator(
            len(self.class_names), self.image.channels, self.side, self.settings.discriminator_width
        )

    def latents(self, seeds: np.ndarray) -> torch.Tensor:
        """One latent per seed, each from its own CPU generator: an image depends only on its own seed."""
        size = self.settings.latent_size
        return torch.stack([torch.randn(size, generator=torch_generator(int(seed))) for seed in seeds])

    # --- training --------------------------------------------------------------------------------------------
    def fit(self, data: TrainingImages, checkpoint_dir: Path | None = None, progress: bool = True) -> list[float]:
        settings = self.settings
        expected = (self.image.size, self.image.size, self.image.channels)
        if data.images.shape[1:] != expected:
            raise ValueError(f"Training images are {data.images.shape[1:]}, the generator expects {expected}")
        nets = self._networks(make_accelerator(self.device, mixed_precision=False))
        log = TrainingLog()
        extras = {"ema": nets.ema, "log": log}
        checkpointer = Checkpointer(checkpoint_dir, nets.accelerator, settings, self.resumable_fields, extras=extras)
        start, losses = checkpointer.resume()
        device, total = nets.accelerator.device, self.total_steps
        real = self._working_size(to_signed_tensor(data.images)).to(device)
        labels = torch.from_numpy(np.asarray(data.labels, dtype=np.int64)).to(device)
        references: dict[int, dict[int, float]] = {}  # per side the networks work at
        logger.info(
            "Training the %s on %d images on %s from step %d of %d", self.title, len(real), device, start, total
        )

        def train_step(step: int) -> float:
            loss_d, loss_g = self._adversarial_step(nets, real, labels, step)
            log.generator_losses.append(loss_g)
            return loss_d

        def on_every(completed: int) -> None:
            if settings.collapse.due(completed, total):  # before the checkpoint: it holds the check
                resolution = self._resolution(completed - 1)
                if resolution not in references:
                    references[resolution] = self._reference_diversity(real, labels, resolution)
                self._check_collapse(nets.ema, references[resolution], completed, log)
            if checkpoint_dir is not None and (completed % settings.checkpoint_every == 0 or completed == total):
                checkpointer.save(completed, losses)

        steps_per_second = run_steps(
            train_step,
            start=start,
            total=total,
            losses=losses,
            description=f"{self.title} training",
            every=1,
            on_every=on_every,
            progress=progress,
        )
        self.model = nets.ema.to("cpu").eval()
        self.training = {
            "loss_history": losses,  # the discriminator's hinge loss: near 0 when it tells every image apart
            "generator_loss_history": log.generator_losses,
            "diversity": log.diversity,
            "collapses": log.collapses,
            "steps_per_second": steps_per_second,
            "train_images": len(data.images),
        }
        return losses

    def _networks(self, accelerator: Accelerator) -> Networks:
        """Both networks (seeded initialisation), their optimisers under ``accelerator``, and the EMA copy."""
        settings = self.settings
        with seeded(derive_seed(self.seed, "gan-init")):
            generator, discriminator = self.build_generator(), self.build_discriminator()
        ema = copy.deepcopy(generator).requires_grad_(False).eval().to(accelerator.device)
        optimizer_g = torch.optim.Adam(
            generator.parameters(), lr=settings.generator_learning_rate, betas=settings.betas
        )
        optimizer_d = torch.optim.Adam(
            discriminator.parameters(), lr=settings.discriminator_learning_rate, betas=settings.betas
        )
        prepared = accelerator.prepare(generator, discriminator, optimizer_g, optimizer_d)
        return Networks(accelerator, *prepared, ema)

    def _adversarial_step(
        self, nets: Networks, real: torch.Tensor, labels: torch.Tensor, step: int
    ) -> tuple[float, float]:
        """One discriminator and one generator update; every random draw from ``(seed, step)``. Returns both
        losses."""
        settings, policy, accelerator = self.settings, self.settings.diffaugment, nets.accelerator
        indices = batch_indices(self.seed, step, settings.batch_size, len(real))
        indices = torch.from_numpy(indices[accelerator.process_index :: accelerator.num_processes]).to(real.device)
        draws = step_generator(self.seed, step)
        batch, batch_labels = self._real_batch(real[indices], step), labels[indices]
        # discriminator: hinge loss on augmented real and generated images
        latents = torch.randn((len(indices), settings.latent_size), generator=draws).to(real.device)
        with torch.no_grad():
            fake = nets.generator(latents, batch_labels)
        real_scores, fake_scores = self._discriminate(
            nets.discriminator, diff_augment(batch, policy, draws), diff_augment(fake, policy, draws), batch_labels
        )
        loss_d = F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()
        nets.optimizer_d.zero_grad(set_to_none=True)
        accelerator.backward(loss_d)
        nets.optimizer_d.step()
        # generator: fool the discriminator on augmented images (the gradients this leaves on the discriminator are
        # cleared before its next update)
        latents = torch.randn((len(indices), settings.latent_size), generator=draws).to(real.device)
        fake = nets.generator(latents, batch_labels)
        loss_g = -nets.discriminator(diff_augment(fake, policy, draws), batch_labels).mean()
        nets.optimizer_g.zero_grad(set_to_none=True)
        accelerator.backward(loss_g)
        nets.optimizer_g.step()
        self._update_ema(nets.ema, accelerator.unwrap_model(nets.generator), step)
        return float(loss_d.detach()), float(loss_g.detach())

    def _real_batch(self, batch: torch.Tensor, step: int) -> torch.Tensor:
        """The real images step ``step`` shows the discriminator (the progressive GAN shrinks them)."""
        return batch

    def _discriminate(
        self, discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The scores of real and generated images of ``labels``, in one pass."""
        real_scores, fake_scores = discriminator(torch.cat([real, fake]), torch.cat([labels, labels])).chunk(2)
        return real_scores, fake_scores

    def _resolution(self, step: int) -> int:
        """The side the networks work at in step ``step`` (the progressive GAN grows it)."""
        return self.side

    def _working_size(self, images: torch.Tensor) -> torch.Tensor:
        """Images at the networks' side (a power of two), resized with bilinear interpolation when needed."""
        if images.shape[-1] == self.side:
            return images
        return F.interpolate(images, size=(self.side, self.side), mode="bilinear", antialias=True, align_corners=False)

    def _update_ema(self, ema: nn.Module, generator: nn.Module, step: int) -> None:
        """EMA with warm-up (the decay grows as (1 + step) / (10 + step) up to ``ema_decay``)."""
        decay = min(self.settings.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for averaged, current in zip(ema.parameters(), generator.parameters(), strict=True):
                averaged.lerp_(current, 1 - decay)

    def _reference_diversity(self, real: torch.Tensor, labels: torch.Tensor, resolution: int) -> dict[int, float]:
        """The diversity of (up to ``real_per_class``) real train images of each class with at least two, at
        ``resolution`` px."""
        references = {}
        for label, name in enumerate(self.class_names):
            members = torch.nonzero(labels == label).flatten().cpu().numpy()
            if len(members) < 2:
                logger.warning("Class %r has fewer than 2 train images: its collapse is not checked", name)
                continue
            order = np.random.default_rng(derive_seed(self.seed, "gan-reference", name)).permutation(members)
            chosen = real[order[: self.settings.collapse.real_per_class]]
            references[label] = pairwise_diversity(downsample(chosen, resolution))
        return references

    def class_diversity(self, model: nn.Module, label: int) -> float:
        """The diversity of ``collapse.samples_per_class`` samples of class ``label`` made with fixed seeds."""
        count = self.settings.collapse.samples_per_class
        seeds = np.array([derive_seed(self.seed, "gan-collapse-check", label, index) for index in range(count)])
        device = next(model.parameters()).device
        with torch.no_grad():
            images = model(self.latents(seeds).to(device), torch.full((count,), label, device=device))
        return pairwise_diversity(images)

    def _check_collapse(self, model: nn.Module, references: dict[int, float], step: int, log: TrainingLog) -> None:
        collapse = self.settings.collapse
        for label, reference in references.items():
            name = self.class_names[label]
            diversity = self.class_diversity(model, label)
            ratio = diversity / reference if reference > 0 else float("inf")
            log.diversity.append(
                {"step": step, "class_name": name, "diversity": diversity, "real_diversity": reference, "ratio": ratio}
            )
            if ratio >= collapse.threshold:
                continue
            message = collapse_message(name, step, ratio, self.settings, self.title)
            if collapse.on_collapse == "fail":
                raise ModeCollapseError(message)
            logger.warning(message)
            log.collapses.append({"step": step, "class_name": name, "ratio": ratio, "threshold": collapse.threshold})

    # --- sampling, saving ------------------------------------------------------------------------------------
    def _sample(self, rows: pd.DataFrame, sources: np.ndarray | None, progress: bool) -> np.ndarray:
        if self.model is None:
            raise ValueError(f"The {self.title} generator has not been fitted or loaded")
        labels = rows["label"].to_numpy(dtype=np.int64, copy=True)
        outside = labels[(labels < 0) | (labels >= len(self.class_names))]
        if outside.size:
            raise ValueError(f"label values must be in [0, {len(self.class_names)}); got {sorted(set(outside))[:10]}")
        seeds = rows["seed"].to_numpy(copy=True)
        device = pick_device(self.device)
        model = self.model.to(device).eval()
        images = []
        for start in range(0, len(rows), self.settings.sample_batch_size):
            chunk = slice(start, start + self.settings.sample_batch_size)
            with torch.no_grad():
                batch = model(self.latents(seeds[chunk]).to(device), torch.from_numpy(labels[chunk]).to(device))
            images.append(from_signed_tensor(self._output_size(batch)))
        return np.concatenate(images) if images else self.image.empty()

    def _output_size(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] == self.image.size:
            return images
        size = (self.image.size, self.image.size)
        return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)

    def _save_model(self, folder: Path) -> None:
        if self.model is None:
            raise ValueError(f"The {self.title} generator has not been fitted: nothing to save")
        save_file(cpu_tensors(self.model.state_dict()), str(folder / WEIGHTS_FILE))

    def _load_model(self, folder: Path) -> None:
        model = self.build_generator()
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        self.model = model.eval()
