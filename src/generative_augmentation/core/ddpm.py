"""Class-conditional pixel-space DDPM (diffusers ``UNet2DModel``) with classifier-free guidance.

Conditioning encoding: the UNet's class embedding has ``num_conditions + 1`` slots.

* ``num_clusters == 0``: condition ``c = label``, so ``num_conditions = num_classes``;
* ``num_clusters > 0``: the pair (label, cluster) maps to ``c = label * num_clusters + cluster``, so
  ``num_conditions = num_classes * num_clusters``.

The last slot, ``num_conditions``, is the "null" token used for the unconditional branch of
classifier-free guidance (training replaces the condition with it with probability ``cond_dropout``).

Every random draw of training step ``s`` comes from ``(seed, s)`` (see :mod:`.checkpoints`), and every
sampled image ``i`` comes from ``seeds[i]`` alone, so one image can be regenerated on its own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from diffusers.utils.torch_utils import randn_tensor
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from generative_augmentation.core.checkpoints import (
    Checkpoint,
    SerializableConfig,
    batch_indices,
    cpu_tensors,
    optimisation_step,
    resume_checkpoint,
    run_training_loop,
    step_generator,
)
from generative_augmentation.core.runtime import autocast_dtype, derive_seed, pick_device, torch_generator

logger = logging.getLogger(__name__)

Sampler = Literal["dpm_solver", "dpm_solver_sde", "ddpm"]
SAMPLERS = ("dpm_solver", "dpm_solver_sde", "ddpm")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAINING_LOG_FILE = "training_log.json"
RESUMABLE_FIELDS = ("train_steps", "checkpoint_every", "mixed_precision")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
EMA_WARMUP_POWER = 3 / 4


@dataclass
class DDPMConfig(SerializableConfig):
    """Architecture, noise schedule and training settings of the class-conditional DDPM."""

    image_size: int = 28
    channels: int = 3
    num_classes: int = 5
    num_clusters: int = 0
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    train_steps: int = 5000
    batch_size: int = 16
    learning_rate: float = 2e-4
    warmup_steps: int = 200
    weight_decay: float = 1e-6
    max_grad_norm: float = 1.0
    ema_decay: float = 0.999
    cond_dropout: float = 0.1
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"
    horizontal_flip: bool = True
    min_images_per_class: int = 2
    seed: int = 0
    checkpoint_every: int = 500
    mixed_precision: bool = True

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        downsampling = 2 ** (len(self.block_out_channels) - 1)
        checks = {
            "channels must be 1 or 3": self.channels in (1, 3),
            "num_classes must be positive": self.num_classes > 0,
            "num_clusters must be >= 0": self.num_clusters >= 0,
            f"image_size must be divisible by {downsampling}": self.image_size % downsampling == 0,
            "cond_dropout must be in [0, 1)": 0 <= self.cond_dropout < 1,
            f"prediction_type must be one of {PREDICTION_TYPES}": self.prediction_type in PREDICTION_TYPES,
            f"beta_schedule must be one of {BETA_SCHEDULES}": self.beta_schedule in BETA_SCHEDULES,
            "train_steps, batch_size and checkpoint_every must be positive": min(
                self.train_steps, self.batch_size, self.checkpoint_every
            )
            > 0,
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"Invalid DDPMConfig: {'; '.join(failed)}")

    @property
    def num_conditions(self) -> int:
        """Number of real conditions (classes, or class-cluster pairs)."""
        return self.num_classes * max(1, self.num_clusters)

    @property
    def null_condition(self) -> int:
        """Index of the unconditional ("null") class-embedding slot."""
        return self.num_conditions


@dataclass
class DDPMTrainingResult:
    """EMA weights and bookkeeping of a finished training run."""

    state_dict: dict[str, torch.Tensor]
    config: DDPMConfig
    loss_history: list[float] = field(default_factory=list)
    steps_per_second: float = 0.0


@dataclass
class _TrainingParts:
    model: UNet2DModel
    optimizer: torch.optim.AdamW
    lr_scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: EMAModel
    grad_scaler: torch.amp.GradScaler
    noise_scheduler: DDPMScheduler


def build_unet(config: DDPMConfig) -> UNet2DModel:
    """The class-conditional UNet; self-attention only in the lowest-resolution block."""
    levels = len(config.block_out_channels)
    return UNet2DModel(
        sample_size=config.image_size,
        in_channels=config.channels,
        out_channels=config.channels,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        down_block_types=("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
        norm_num_groups=int(np.gcd.reduce([32, *config.block_out_channels])),
        num_class_embeds=config.num_conditions + 1,
    )


def build_noise_scheduler(config: DDPMConfig) -> DDPMScheduler:
    """The training (and ancestral sampling) noise scheduler."""
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
    )


def condition_indices(config: DDPMConfig, labels: np.ndarray, clusters: np.ndarray | None = None) -> np.ndarray:
    """Class-embedding indices for ``labels`` (and ``clusters``), validated against ``config``."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    _check_range("label", labels, config.num_classes)
    if config.num_clusters == 0:
        if clusters is not None:
            raise ValueError("clusters were given but config.num_clusters is 0")
        return labels
    if clusters is None:
        raise ValueError(f"config.num_clusters is {config.num_clusters}: clusters are required")
    clusters = np.asarray(clusters, dtype=np.int64).reshape(-1)
    if clusters.shape != labels.shape:
        raise ValueError(f"{len(clusters)} clusters for {len(labels)} labels")
    _check_range("cluster", clusters, config.num_clusters)
    return labels * config.num_clusters + clusters


def train_ddpm(
    images: np.ndarray,
    labels: np.ndarray,
    config: DDPMConfig,
    clusters: np.ndarray | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    device: str | None = None,
) -> DDPMTrainingResult:
    """Train the conditional DDPM on uint8 ``images`` (N, H, W, C); the result holds the EMA weights.

    With ``checkpoint_dir``, a checkpoint is written every ``config.checkpoint_every`` steps and at the
    end, and a run finds and resumes the latest one there (``train_steps`` may be raised to train on).
    """
    conditions = _validate_training_data(images, labels, clusters, config)
    target_device = pick_device(device)
    precision = autocast_dtype(target_device) if config.mixed_precision else None
    parts = _build_training_parts(config, target_device, precision)
    checkpoint = resume_checkpoint(checkpoint_dir, config.to_dict(), RESUMABLE_FIELDS, target_device)
    losses = _restore(parts, checkpoint) if checkpoint else []
    start_step = checkpoint.step if checkpoint else 0
    data = _to_model_range(images).to(target_device)
    condition_tensor = torch.from_numpy(conditions)
    logger.info("Training DDPM on %d images on %s from step %d", len(data), target_device, start_step)

    def train_step(step: int) -> float:
        loss = _training_step(parts, data, condition_tensor, step, config, precision)
        optimisation_step(loss, parts.optimizer, parts.lr_scheduler, parts.grad_scaler, config.max_grad_norm)
        parts.ema.step(parts.model.parameters())
        return float(loss.detach())

    steps_per_second = run_training_loop(
        train_step,
        lambda completed, history: _checkpoint(parts, completed, config, history),
        start_step=start_step,
        train_steps=config.train_steps,
        losses=losses,
        checkpoint_every=config.checkpoint_every,
        checkpoint_dir=checkpoint_dir,
        description="DDPM training",
        progress=progress,
    )
    return DDPMTrainingResult(
        state_dict=_ema_state_dict(parts),
        config=config,
        loss_history=losses,
        steps_per_second=steps_per_second,
    )


@torch.no_grad()
def sample_ddpm(
    state_dict: dict[str, torch.Tensor],
    config: DDPMConfig,
    labels: np.ndarray,
    seeds: Sequence[int] | np.ndarray,
    clusters: np.ndarray | None = None,
    num_inference_steps: int = 20,
    guidance_scale: float = 2.0,
    batch_size: int = 64,
    sampler: Sampler = "dpm_solver",
    device: str | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Generate one uint8 image (N, H, W, C) per label; image ``i`` depends only on ``seeds[i]``.

    ``sampler="dpm_solver"`` runs DPM-Solver++ for ``num_inference_steps``, ``"dpm_solver_sde"`` its stochastic
    (SDE) variant, which adds fresh noise at each step from the image's own generator; ``sampler="ddpm"`` runs
    ancestral DDPM sampling over all ``config.num_train_timesteps`` steps (``num_inference_steps`` is
    ignored). Guidance: ``eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)``.
    """
    conditions = condition_indices(config, labels, clusters)
    seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
    if len(seeds) != len(conditions):
        raise ValueError(f"{len(seeds)} seeds for {len(conditions)} labels: give one seed per image")
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
    target_device = pick_device(device)
    model = build_unet(config)
    model.load_state_dict(state_dict)
    model.to(target_device).eval()
    steps = config.num_train_timesteps if sampler == "ddpm" else num_inference_steps
    chunks = [slice(start, start + batch_size) for start in range(0, len(conditions), batch_size)]
    logger.info("Sampling %d images with %s (%d steps, guidance %.2f)", len(seeds), sampler, steps, guidance_scale)
    bar = tqdm(total=len(chunks) * steps, desc=f"Sampling ({sampler})", disable=not progress)
    images = [
        _sample_chunk(model, config, conditions[chunk], seeds[chunk], sampler, steps, guidance_scale, bar)
        for chunk in chunks
    ]
    bar.close()
    return np.concatenate(images) if images else _empty_images(config)


def save_generator(result: DDPMTrainingResult, folder: str | Path) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``training_log.json`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(cpu_tensors(result.state_dict), str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps(result.config.to_dict(), indent=2))
    training_log = {"loss_history": result.loss_history, "steps_per_second": result.steps_per_second}
    (folder / TRAINING_LOG_FILE).write_text(json.dumps(training_log))
    logger.info("Saved DDPM generator to %s", folder)
    return folder


def load_generator(folder: str | Path) -> DDPMTrainingResult:
    """Read a generator written by :func:`save_generator`."""
    folder = Path(folder)
    missing = [name for name in (WEIGHTS_FILE, CONFIG_FILE) if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder} is not a saved DDPM generator: missing {', '.join(missing)}")
    config = DDPMConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
    log_path = folder / TRAINING_LOG_FILE
    training_log = json.loads(log_path.read_text()) if log_path.is_file() else {}
    return DDPMTrainingResult(
        state_dict=load_file(str(folder / WEIGHTS_FILE)),
        config=config,
        loss_history=[float(loss) for loss in training_log.get("loss_history", [])],
        steps_per_second=float(training_log.get("steps_per_second", 0.0)),
    )


def _check_range(name: str, values: np.ndarray, upper: int) -> None:
    outside = values[(values < 0) | (values >= upper)]
    if outside.size:
        raise ValueError(f"{name} values must be in [0, {upper}); got {sorted(set(outside.tolist()))[:10]}")


def _validate_training_data(
    images: np.ndarray, labels: np.ndarray, clusters: np.ndarray | None, config: DDPMConfig
) -> np.ndarray:
    images = np.asarray(images)
    expected = (config.image_size, config.image_size, config.channels)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images must be a non-empty (N, H, W, C) array; got shape {images.shape}")
    if images.shape[1:] != expected or images.dtype != np.uint8:
        raise ValueError(
            f"images must be uint8 with shape (N, {', '.join(map(str, expected))}); got {images.dtype} {images.shape}"
        )
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images")
    conditions = condition_indices(config, labels, clusters)
    counts = np.bincount(labels.astype(np.int64), minlength=config.num_classes)
    for class_index, count in enumerate(counts):
        if count < config.min_images_per_class:
            raise ValueError(
                f"class {class_index} has {count} training images; at least "
                f"{config.min_images_per_class} (config.min_images_per_class) are required"
            )
    return conditions


def _to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) → float32 (N, C, H, W) in [-1, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return tensor / 127.5 - 1.0


def _to_uint8(samples: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W) in [-1, 1] → uint8 (N, H, W, C)."""
    scaled = ((samples.float().clamp(-1, 1) + 1) * 127.5).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _empty_images(config: DDPMConfig) -> np.ndarray:
    return np.zeros((0, config.image_size, config.image_size, config.channels), dtype=np.uint8)


def _build_training_parts(config: DDPMConfig, device: torch.device, precision: torch.dtype | None) -> _TrainingParts:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(config.seed, "unet-init"))
        model = build_unet(config)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    return _TrainingParts(
        model=model,
        optimizer=optimizer,
        lr_scheduler=get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.train_steps),
        ema=EMAModel(model.parameters(), decay=config.ema_decay, use_ema_warmup=True, power=EMA_WARMUP_POWER),
        grad_scaler=torch.amp.GradScaler(device.type, enabled=precision == torch.float16),
        noise_scheduler=build_noise_scheduler(config),
    )


def _training_step(
    parts: _TrainingParts,
    data: torch.Tensor,
    conditions: torch.Tensor,
    step: int,
    config: DDPMConfig,
    precision: torch.dtype | None,
) -> torch.Tensor:
    """The loss of step ``step``; all its randomness comes from ``(config.seed, step)``."""
    generator = step_generator(config.seed, step)
    indices = torch.from_numpy(batch_indices(config.seed, step, config.batch_size, len(data)))
    size = len(indices)
    flip = torch.rand(size, generator=generator) < 0.5
    noise = torch.randn((size, *data.shape[1:]), generator=generator)
    timesteps = torch.randint(0, config.num_train_timesteps, (size,), generator=generator)
    dropped = torch.rand(size, generator=generator) < config.cond_dropout
    device = data.device
    clean = data[indices.to(device)]
    if config.horizontal_flip:
        clean = torch.where(flip.to(device)[:, None, None, None], clean.flip(-1), clean)
    condition = torch.where(dropped, config.null_condition, conditions[indices]).to(device)
    noise, timesteps = noise.to(device), timesteps.to(device)
    noisy = parts.noise_scheduler.add_noise(clean, noise, timesteps)
    with torch.autocast(device.type, dtype=precision, enabled=precision is not None):
        prediction = parts.model(noisy, timesteps, class_labels=condition).sample
    target = _training_target(parts.noise_scheduler, clean, noise, timesteps, config.prediction_type)
    return F.mse_loss(prediction.float(), target.float())


def _training_target(
    scheduler: DDPMScheduler, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, kind: str
) -> torch.Tensor:
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(clean, noise, timesteps)
    return clean


def _checkpoint(parts: _TrainingParts, step: int, config: DDPMConfig, losses: list[float]) -> Checkpoint:
    names = [name for name, _ in parts.model.named_parameters()]
    ema_state = {key: value for key, value in parts.ema.state_dict().items() if key != "shadow_params"}
    return Checkpoint(
        step=step,
        config=config.to_dict(),
        tensors={
            "model": parts.model.state_dict(),
            "ema": dict(zip(names, parts.ema.shadow_params, strict=True)),
        },
        training_state={
            "optimizer": parts.optimizer.state_dict(),
            "lr_scheduler": parts.lr_scheduler.state_dict(),
            "grad_scaler": parts.grad_scaler.state_dict(),
            "ema": ema_state,
        },
        loss_history=list(losses),
    )


def _restore(parts: _TrainingParts, checkpoint: Checkpoint) -> list[float]:
    """Load a checkpoint into the training parts; returns the loss history so far."""
    parts.model.load_state_dict(checkpoint.tensors["model"])
    parts.optimizer.load_state_dict(checkpoint.training_state["optimizer"])
    parts.lr_scheduler.load_state_dict(checkpoint.training_state["lr_scheduler"])
    parts.grad_scaler.load_state_dict(checkpoint.training_state["grad_scaler"])
    ema_tensors = checkpoint.tensors["ema"]
    shadow = [ema_tensors[name].clone() for name, _ in parts.model.named_parameters()]
    parts.ema.load_state_dict({**checkpoint.training_state["ema"], "shadow_params": shadow})
    return list(checkpoint.loss_history)


def _ema_state_dict(parts: _TrainingParts) -> dict[str, torch.Tensor]:
    parts.ema.copy_to(parts.model.parameters())
    return cpu_tensors(parts.model.state_dict())


def _inference_scheduler(config: DDPMConfig, sampler: Sampler) -> DDPMScheduler | DPMSolverMultistepScheduler:
    if sampler == "ddpm":
        return build_noise_scheduler(config)
    return DPMSolverMultistepScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        algorithm_type="sde-dpmsolver++" if sampler == "dpm_solver_sde" else "dpmsolver++",
        # Clip each step's x0 estimate to the data range [-1, 1], as the DDPM sampler's clip_sample does: without
        # it, epsilon prediction at t ~ T (alpha ~ 0 under squaredcos_cap_v2) blows the first step up to noise.
        thresholding=True,
        sample_max_value=1.0,
    )


def _sample_chunk(
    model: UNet2DModel,
    config: DDPMConfig,
    conditions: np.ndarray,
    seeds: np.ndarray,
    sampler: Sampler,
    steps: int,
    guidance_scale: float,
    bar: tqdm,
) -> np.ndarray:
    """Denoise one batch; per-image CPU generators make image ``i`` depend only on ``seeds[i]``."""
    device = next(model.parameters()).device
    scheduler = _inference_scheduler(config, sampler)
    scheduler.set_timesteps(steps, device=device)
    generators = [torch_generator(int(seed)) for seed in seeds]
    shape = (len(seeds), config.channels, config.image_size, config.image_size)
    sample = randn_tensor(shape, generator=generators, device=device) * scheduler.init_noise_sigma
    condition = torch.as_tensor(conditions, device=device)
    for timestep in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, timestep)
        prediction = _guided_prediction(model, model_input, timestep, condition, config.null_condition, guidance_scale)
        sample = scheduler.step(prediction, timestep, sample, generator=generators).prev_sample
        bar.update(1)
    return _to_uint8(sample)


def _guided_prediction(
    model: UNet2DModel,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    condition: torch.Tensor,
    null_condition: int,
    guidance_scale: float,
) -> torch.Tensor:
    """Classifier-free guidance with the conditional and unconditional passes in one forward."""
    if guidance_scale == 1.0:
        return model(sample, timestep, class_labels=condition).sample
    null = torch.full_like(condition, null_condition)
    both = model(torch.cat([sample, sample]), timestep, class_labels=torch.cat([condition, null])).sample
    conditional, unconditional = both.chunk(2)
    return unconditional + guidance_scale * (conditional - unconditional)
