"""A class-conditional pixel-space DDPM (diffusers ``UNet2DModel``) with classifier-free guidance.

Conditioning: the UNet's class embedding has ``num_conditions + 1`` slots. Without clusters the condition is the
label; with ``num_clusters`` clusters per class, the pair (label, cluster) maps to
``label * num_clusters + cluster``. The last slot is the "null" condition of classifier-free guidance (training
replaces the condition with it with probability ``cond_dropout``).

The trained model is a :class:`ConditionalDDPMPipeline`, a small diffusers ``DiffusionPipeline`` that saves and
loads itself (``save_pretrained`` / ``from_pretrained``: safetensors weights and JSON configs). Training runs under
accelerate (one CPU, one GPU, or ``accelerate launch`` over several GPUs) with the project's step loop, so every
random draw of step ``s`` comes from ``(seed, s)`` and an interrupted run resumes exactly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler, UNet2DModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel, compute_snr
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from generative_augmentation.core.config import Config, ConfigError
from generative_augmentation.core.generators.base import Generator, TrainingImages, register
from generative_augmentation.core.images import from_signed_tensor, to_signed_tensor
from generative_augmentation.core.runtime import derive_seed, pick_device, seeded, torch_generator
from generative_augmentation.core.training import (
    Checkpointer,
    batch_indices,
    make_accelerator,
    optimisation_step,
    run_steps,
    step_generator,
)

logger = logging.getLogger(__name__)

SAMPLERS = ("dpm_solver", "dpm_solver_sde", "ddpm")
EMA_WARMUP_POWER = 3 / 4
PIPELINE_FOLDER = "pipeline"


@dataclass(frozen=True)
class DDPMSampling(Config):
    """How the pool is sampled: ``dpm_solver_sde`` (SDE-DPM-Solver++), ``dpm_solver`` (DPM-Solver++) or ``ddpm``
    (1000-step ancestral, slow); ``steps`` for the solvers; classifier-free ``guidance_scale``; images per batch.

    ``mode: image_to_image`` is SDEdit (the recipe of DA-Fusion and of Real Guidance): a real train image of the
    class is noised to ``strength`` (0: the image itself, 1: pure noise) and denoised under its class with
    guidance, over the last ``strength`` share of the schedule. ``strength`` is one value or a list drawn from per
    image (DA-Fusion: 0.25, 0.5, 0.75, 1.0); ``class_strength`` overrides it per class (Real Guidance: lower for a
    class with more real images).
    """

    where = "generation.ddpm.sampling"
    mode: Literal["class_conditional", "image_to_image"] = "class_conditional"
    sampler: Literal["dpm_solver", "dpm_solver_sde", "ddpm"] = "dpm_solver_sde"
    steps: int = 20
    guidance_scale: float = 2.0
    strength: float | list[float] = 0.5
    class_strength: dict[str, float | list[float]] = field(default_factory=dict)
    batch_size: int = 32

    def checks(self):
        yield from self.at_least("steps")
        yield from self.at_least("guidance_scale", minimum=0)  # 1: no guidance
        yield from self.at_least("batch_size")
        for name, value in {"strength": self.strength, **self.class_strength}.items():
            values = value if isinstance(value, list) else [value]
            where = "strength" if name == "strength" else f"class_strength.{name}"
            yield where, bool(values) and all(0 < v <= 1 for v in values), f"must be in (0, 1], got {value}"

    def strength_of(self, class_name: str) -> float | list[float]:
        """The strength (or the strengths to draw from) of ``class_name``'s images."""
        return self.class_strength.get(class_name, self.strength)


@dataclass(frozen=True)
class DDPMSettings(Config):
    """Architecture, noise schedule, training and sampling of the DDPM (size, channels and classes come from the
    data)."""

    where = "generation.ddpm"
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    train_steps: int = 2000
    batch_size: int = 16
    learning_rate: float = 0.001
    warmup_steps: int = 100
    weight_decay: float = 1e-6
    max_grad_norm: float = 1.0
    ema_decay: float = 0.995
    cond_dropout: float = 0.1
    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"] = "squaredcos_cap_v2"
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "v_prediction"
    horizontal_flip: bool = False
    # Min-SNR-gamma loss weighting (Hang et al., ICCV 2023; diffusers' training examples use 5.0): each timestep's
    # loss weighed by min(SNR, gamma), so the many easy low-noise steps do not dominate. null: the plain mean.
    snr_gamma: float | None = None
    checkpoint_every: int = 500
    mixed_precision: bool = True
    sampling: DDPMSampling = field(default_factory=DDPMSampling)

    def checks(self):
        yield (
            "block_out_channels",
            len(self.block_out_channels) >= 2 and min(self.block_out_channels) > 0,
            (f"must list at least 2 positive widths, got {list(self.block_out_channels)}"),
        )
        yield from self.at_least(
            *("layers_per_block", "train_steps", "batch_size", "checkpoint_every", "num_train_timesteps")
        )
        yield from self.positive("learning_rate")
        yield from self.at_least("warmup_steps", minimum=0)
        yield from self.within("ema_decay", 0, 1, open_high=True)
        yield from self.within("cond_dropout", 0, 1, open_high=True)
        if self.snr_gamma is not None:
            yield from self.positive("snr_gamma")


RESUMABLE_FIELDS = ("train_steps", "checkpoint_every", "mixed_precision", "sampling")


class ConditionalDDPMPipeline(DiffusionPipeline):
    """Class- (and cluster-) conditional sampling with classifier-free guidance; one seed per image."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler, num_clusters: int = 0):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(num_clusters=num_clusters)

    @property
    def num_classes(self) -> int:
        return (self.unet.config.num_class_embeds - 1) // max(1, self.config.num_clusters)

    @property
    def null_condition(self) -> int:
        return self.unet.config.num_class_embeds - 1

    def conditions(self, labels: np.ndarray, clusters: np.ndarray | None) -> np.ndarray:
        """Class-embedding indices of ``labels`` (and ``clusters``), validated."""
        return condition_indices(labels, clusters, self.num_classes, self.config.num_clusters)

    @torch.no_grad()
    def __call__(
        self,
        labels: np.ndarray,
        seeds: np.ndarray,
        clusters: np.ndarray | None = None,
        sampler: str = "dpm_solver_sde",
        num_inference_steps: int = 20,
        guidance_scale: float = 2.0,
        batch_size: int = 32,
        progress: bool = True,
        sources: np.ndarray | None = None,
        strength: float = 1.0,
    ) -> np.ndarray:
        """One uint8 image (N, H, W, C) per label; image ``i`` depends only on ``seeds[i]`` (and its condition and
        source image).

        ``dpm_solver`` runs DPM-Solver++, ``dpm_solver_sde`` its stochastic variant (fresh noise at each step from
        the image's own generator), ``ddpm`` ancestral sampling over every training timestep. Guidance:
        ``eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)``. With ``sources`` (uint8, one per label),
        SDEdit: each source is noised to the timestep ``strength`` of the way into the schedule and denoised from
        there, as diffusers' image-to-image pipelines do (``get_timesteps`` and ``add_noise``).
        """
        conditions = self.conditions(labels, clusters)
        seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
        if len(seeds) != len(conditions):
            raise ValueError(f"{len(seeds)} seeds for {len(conditions)} labels: give one seed per image")
        if sampler not in SAMPLERS:
            raise ValueError(f"Unknown sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
        if sources is not None and len(sources) != len(conditions):
            raise ValueError(f"{len(sources)} source images for {len(conditions)} labels: give one per image")
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        steps = self.scheduler.config.num_train_timesteps if sampler == "ddpm" else int(num_inference_steps)
        chunks = [slice(start, start + batch_size) for start in range(0, len(conditions), batch_size)]
        what = f"SDEdit at strength {strength:g}" if sources is not None else "from noise"
        logger.info(
            "Sampling %d images %s with %s (%d steps, guidance %.2f)", len(seeds), what, sampler, steps, guidance_scale
        )
        images = []
        with tqdm(total=len(chunks) * steps, desc=f"sampling ({sampler})", disable=not progress) as bar:
            for chunk in chunks:
                source = sources[chunk] if sources is not None else None
                images.append(
                    self._denoise(
                        conditions[chunk], seeds[chunk], sampler, steps, guidance_scale, bar, source, strength
                    )
                )
        channels, size = self.unet.config.in_channels, self.unet.config.sample_size
        return np.concatenate(images) if images else np.zeros((0, size, size, channels), np.uint8)

    def _denoise(
        self,
        conditions: np.ndarray,
        seeds: np.ndarray,
        sampler: str,
        steps: int,
        guidance: float,
        bar: tqdm,
        sources: np.ndarray | None = None,
        strength: float = 1.0,
    ) -> np.ndarray:
        scheduler = self._inference_scheduler(sampler)
        scheduler.set_timesteps(steps, device=self.device)
        generators = [torch_generator(int(seed)) for seed in seeds]  # CPU noise: the same image on any device
        config = self.unet.config
        shape = (len(seeds), config.in_channels, config.sample_size, config.sample_size)
        noise = randn_tensor(shape, generator=generators, device=self.device)
        timesteps = scheduler.timesteps
        if sources is None:
            sample = noise * scheduler.init_noise_sigma
        else:
            # diffusers' image-to-image recipe: skip the first (1 - strength) share of the schedule, then noise the
            # clean source to the first remaining timestep
            start = (steps - min(max(int(steps * strength), 1), steps)) * scheduler.order
            timesteps = timesteps[start:]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(start)
            clean = to_signed_tensor(sources).to(self.device)
            sample = scheduler.add_noise(clean, noise, timesteps[:1].repeat(len(seeds)))
            bar.update(start // scheduler.order)
        condition = torch.as_tensor(conditions, device=self.device)
        for timestep in timesteps:
            model_input = scheduler.scale_model_input(sample, timestep)
            prediction = self._guided_prediction(model_input, timestep, condition, guidance)
            sample = scheduler.step(prediction, timestep, sample, generator=generators).prev_sample
            bar.update(1)
        return from_signed_tensor(sample)

    def _inference_scheduler(self, sampler: str) -> DDPMScheduler | DPMSolverMultistepScheduler:
        # Built from the three settings that define the noise schedule, not with ``from_config``: a config read back
        # from disk carries values (timestep_spacing, ...) that an in-memory one leaves to each class's defaults.
        schedule = {
            key: self.scheduler.config[key] for key in ("num_train_timesteps", "beta_schedule", "prediction_type")
        }
        if sampler == "ddpm":
            return DDPMScheduler(**schedule)
        return DPMSolverMultistepScheduler(
            **schedule,
            algorithm_type="sde-dpmsolver++" if sampler == "dpm_solver_sde" else "dpmsolver++",
            # Clip each step's x0 estimate to the data range [-1, 1], as the DDPM sampler's clip_sample does:
            # without it, epsilon prediction at t ~ T (alpha ~ 0 under squaredcos_cap_v2) blows the first step up.
            thresholding=True,
            sample_max_value=1.0,
        )

    def _guided_prediction(
        self, sample: torch.Tensor, timestep: torch.Tensor, condition: torch.Tensor, guidance: float
    ) -> torch.Tensor:
        """Classifier-free guidance with the conditional and unconditional passes in one forward."""
        if guidance == 1.0:
            return self.unet(sample, timestep, class_labels=condition).sample
        null = torch.full_like(condition, self.null_condition)
        both = self.unet(torch.cat([sample, sample]), timestep, class_labels=torch.cat([condition, null])).sample
        conditional, unconditional = both.chunk(2)
        return unconditional + guidance * (conditional - unconditional)


def condition_indices(
    labels: np.ndarray, clusters: np.ndarray | None, num_classes: int, num_clusters: int
) -> np.ndarray:
    """Class-embedding indices of ``labels`` (and ``clusters`` when the model conditions on them)."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    _check_range("label", labels, num_classes)
    if num_clusters == 0:
        return labels
    if clusters is None:
        raise ValueError(f"The model conditions on {num_clusters} clusters per class: clusters are required")
    clusters = np.asarray(clusters, dtype=np.int64).reshape(-1)
    if clusters.shape != labels.shape:
        raise ValueError(f"{len(clusters)} clusters for {len(labels)} labels")
    _check_range("cluster", clusters, num_clusters)
    return labels * num_clusters + clusters


def _check_range(name: str, values: np.ndarray, upper: int) -> None:
    outside = values[(values < 0) | (values >= upper)]
    if outside.size:
        raise ValueError(f"{name} values must be in [0, {upper}); got {sorted(set(outside.tolist()))[:10]}")


def per_image_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mean squared error of each image of a batch."""
    return F.mse_loss(prediction.float(), target.float(), reduction="none").flatten(1).mean(dim=1)


def min_snr_weights(noise_scheduler: DDPMScheduler, timesteps: torch.Tensor, settings: DDPMSettings) -> torch.Tensor:
    """Min-SNR-gamma weights per image, as diffusers' train_text_to_image example computes them: min(SNR, gamma),
    divided by SNR for an epsilon target and by SNR + 1 for a velocity target, so that each target's loss weighs
    the implied clean-image error by min(SNR, gamma)."""
    snr = compute_snr(noise_scheduler, timesteps)
    weights = torch.clamp(snr, max=settings.snr_gamma)
    if settings.prediction_type == "epsilon":
        return weights / snr
    if settings.prediction_type == "v_prediction":
        return weights / (snr + 1)
    return weights


@register
class DDPMGenerator(Generator):
    """The pixel DDPM behind the generator interface (CPU-friendly at 28-64 px)."""

    kind = "ddpm"
    settings_class = DDPMSettings
    settings: DDPMSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pipeline: ConditionalDDPMPipeline | None = None

    @classmethod
    def conditions_on_clusters(cls, settings: Config) -> bool:
        return True

    @classmethod
    def uses_source_images(cls, settings: DDPMSettings) -> bool:
        return settings.sampling.mode == "image_to_image"

    @classmethod
    def check(cls, settings: DDPMSettings, class_names: list[str]) -> None:
        unknown = sorted(set(settings.sampling.class_strength) - set(class_names))
        if unknown:
            raise ConfigError(
                f"Parameter {settings.sampling.parameter('class_strength')} names {unknown}, which the data does not "
                f"have; known: {class_names}"
            )

    @classmethod
    def sampling_record(cls, settings: DDPMSettings, class_name: str) -> dict[str, Any]:
        sampling = settings.sampling
        steps = settings.num_train_timesteps if sampling.sampler == "ddpm" else sampling.steps
        variation = sampling.mode == "image_to_image"
        return {
            "mode": sampling.mode,
            "sampler": sampling.sampler,
            "steps": steps,
            "guidance_scale": sampling.guidance_scale,
            "strength": sampling.strength_of(class_name) if variation else float("nan"),
            "prompt": "",
            "negative_prompt": "",
        }

    def build_unet(self) -> UNet2DModel:
        """The class-conditional UNet; self-attention only in the lowest-resolution block."""
        widths = self.settings.block_out_channels
        return UNet2DModel(
            sample_size=self.image.size,
            in_channels=self.image.channels,
            out_channels=self.image.channels,
            block_out_channels=widths,
            layers_per_block=self.settings.layers_per_block,
            down_block_types=("DownBlock2D",) * (len(widths) - 1) + ("AttnDownBlock2D",),
            up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (len(widths) - 1),
            norm_num_groups=int(np.gcd.reduce([32, *widths])),
            num_class_embeds=len(self.class_names) * max(1, self.num_clusters) + 1,
        )

    def noise_scheduler(self) -> DDPMScheduler:
        return DDPMScheduler(
            num_train_timesteps=self.settings.num_train_timesteps,
            beta_schedule=self.settings.beta_schedule,
            prediction_type=self.settings.prediction_type,
        )

    def fit(self, data: TrainingImages, checkpoint_dir: Path | None = None, progress: bool = True) -> list[float]:
        settings = self.settings
        expected = (self.image.size, self.image.size, self.image.channels)
        if data.images.shape[1:] != expected:
            raise ValueError(f"Training images are {data.images.shape[1:]}, the generator expects {expected}")
        conditions = torch.from_numpy(
            condition_indices(
                data.labels, data.clusters if self.num_clusters else None, len(self.class_names), self.num_clusters
            )
        )
        accelerator = make_accelerator(self.device, settings.mixed_precision)
        with seeded(derive_seed(self.seed, "unet-init")):
            unet = self.build_unet()
        optimizer = torch.optim.AdamW(unet.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
        lr_scheduler = get_cosine_schedule_with_warmup(optimizer, settings.warmup_steps, settings.train_steps)
        unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
        ema = EMAModel(unet.parameters(), decay=settings.ema_decay, use_ema_warmup=True, power=EMA_WARMUP_POWER)
        checkpointer = Checkpointer(checkpoint_dir, accelerator, settings, RESUMABLE_FIELDS, extras={"ema": ema})
        start, losses = checkpointer.resume()
        noise_scheduler = self.noise_scheduler()
        clean_images = to_signed_tensor(data.images).to(accelerator.device)
        logger.info("Training the DDPM on %d images on %s from step %d", len(clean_images), accelerator.device, start)

        def train_step(step: int) -> float:
            indices = batch_indices(self.seed, step, settings.batch_size, len(clean_images))
            indices = indices[accelerator.process_index :: accelerator.num_processes]
            generator = step_generator(self.seed, step)
            loss = self._loss(unet, noise_scheduler, clean_images, conditions, indices, generator, accelerator)
            optimisation_step(
                accelerator, loss, optimizer, lr_scheduler, list(unet.parameters()), settings.max_grad_norm
            )
            ema.step(unet.parameters())
            return float(loss.detach())

        def checkpoint(completed: int) -> None:
            checkpointer.save(completed, losses)

        steps_per_second = run_steps(
            train_step,
            start=start,
            total=settings.train_steps,
            losses=losses,
            description="DDPM training",
            every=settings.checkpoint_every if checkpoint_dir else 0,
            on_every=checkpoint,
            progress=progress,
        )
        unet = accelerator.unwrap_model(unet)
        ema.copy_to(unet.parameters())
        self.pipeline = ConditionalDDPMPipeline(unet.to("cpu").eval(), noise_scheduler, self.num_clusters)
        self.training = {"loss_history": losses, "steps_per_second": steps_per_second, "train_images": len(data.images)}
        return losses

    def _loss(
        self,
        unet: UNet2DModel,
        noise_scheduler: DDPMScheduler,
        images: torch.Tensor,
        conditions: torch.Tensor,
        indices: np.ndarray,
        generator: torch.Generator,
        accelerator: Any,
    ) -> torch.Tensor:
        """The denoising loss of one batch; every random draw comes from the step's ``generator``."""
        size, settings = len(indices), self.settings
        flip = torch.rand(size, generator=generator) < 0.5
        noise = torch.randn((size, *images.shape[1:]), generator=generator)
        timesteps = torch.randint(0, settings.num_train_timesteps, (size,), generator=generator)
        dropped = torch.rand(size, generator=generator) < settings.cond_dropout
        device = images.device
        clean = images[torch.from_numpy(indices).to(device)]
        if settings.horizontal_flip:
            clean = torch.where(flip.to(device)[:, None, None, None], clean.flip(-1), clean)
        null = len(self.class_names) * max(1, self.num_clusters)
        condition = torch.where(dropped, null, conditions[torch.from_numpy(indices)]).to(device)
        noise, timesteps = noise.to(device), timesteps.to(device)
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        with accelerator.autocast():
            prediction = unet(noisy, timesteps, class_labels=condition).sample
        if settings.prediction_type == "epsilon":
            target = noise
        elif settings.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(clean, noise, timesteps)
        else:
            target = clean
        if settings.snr_gamma is None:
            return F.mse_loss(prediction.float(), target.float())
        return (per_image_mse(prediction, target) * min_snr_weights(noise_scheduler, timesteps, settings)).mean()

    def _sample(self, rows: pd.DataFrame, sources: np.ndarray | None, progress: bool) -> np.ndarray:
        if self.pipeline is None:
            raise ValueError("The DDPM generator has not been fitted or loaded")
        self.pipeline.to(pick_device(self.device))
        first = rows.iloc[0]
        variation = first["mode"] == "image_to_image"
        if variation and sources is None:
            raise ValueError("Image-to-image sampling needs the source images of the plan's rows")
        return self.pipeline(
            rows["label"].to_numpy(copy=True),
            rows["seed"].to_numpy(copy=True),
            clusters=rows["cluster_index"].to_numpy(copy=True) if self.num_clusters else None,
            sampler=str(first["sampler"]),
            num_inference_steps=int(first["steps"]),
            guidance_scale=float(first["guidance_scale"]),
            batch_size=self.settings.sampling.batch_size,
            progress=progress,
            sources=sources if variation else None,
            strength=float(first["strength"]) if variation else 1.0,
        )

    def _save_model(self, folder: Path) -> None:
        if self.pipeline is None:
            raise ValueError("The DDPM generator has not been fitted: nothing to save")
        self.pipeline.save_pretrained(folder / PIPELINE_FOLDER)

    def _load_model(self, folder: Path) -> None:
        self.pipeline = ConditionalDDPMPipeline.from_pretrained(str(folder / PIPELINE_FOLDER))
