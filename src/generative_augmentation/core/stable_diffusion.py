"""Stable Diffusion: LoRA fine-tuning on (image, prompt) pairs and seeded text/image-to-image generation.

Training follows diffusers' ``train_text_to_image_lora.py``: frozen VAE, text encoder and UNet; peft LoRA
adapters on the UNet attention projections; noise-prediction MSE on VAE latents. Randomness and
checkpoints come from :mod:`.checkpoints`, so an interrupted run resumes exactly. Generation gives every
image its own CPU generator, so image ``i`` depends only on ``seeds[i]``. The safety checker is disabled
(medical images trip it for no reason). Outputs are uint8 RGB arrays (N, H, W, 3).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from diffusers.optimization import get_scheduler
from diffusers.training_utils import cast_training_params
from diffusers.utils import convert_state_dict_to_diffusers
from diffusers.utils.torch_utils import randn_tensor
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from PIL import Image

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

REQUIRED_PARTS = ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler")
LORA_ADAPTER_NAME = "default"
LORA_TRAINING_LOG_FILE = "lora_training.json"
RESUMABLE_FIELDS = ("train_steps", "checkpoint_every", "mixed_precision")
HUB_ID_PATTERN = re.compile(r"[\w.-]+/[\w.-]+")


@dataclass
class LoraTrainingConfig(SerializableConfig):
    """LoRA adapter shape and training settings."""

    rank: int = 4
    alpha: int = 4
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    train_steps: int = 1000
    batch_size: int = 4
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    resolution: int | None = None
    horizontal_flip: bool = True
    seed: int = 0
    checkpoint_every: int = 250
    mixed_precision: bool = True

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)
        if min(self.rank, self.train_steps, self.batch_size, self.checkpoint_every) <= 0:
            raise ValueError("rank, train_steps, batch_size and checkpoint_every must be positive")


@dataclass
class LoraTrainingResult:
    """The trained UNet LoRA weights (diffusers key format) and bookkeeping."""

    lora_state_dict: dict[str, torch.Tensor]
    config: LoraTrainingConfig
    loss_history: list[float] = field(default_factory=list)
    steps_per_second: float = 0.0


@dataclass
class _LoraTrainingParts:
    pipeline: StableDiffusionPipeline
    optimizer: torch.optim.AdamW
    lr_scheduler: torch.optim.lr_scheduler.LambdaLR
    grad_scaler: torch.amp.GradScaler
    noise_scheduler: DDPMScheduler


@dataclass
class _TrainingData:
    images: torch.Tensor  # uint8 (N, C, H, W) on CPU
    prompt_embeddings: torch.Tensor  # (unique prompts, tokens, hidden) on the device
    prompt_index: torch.Tensor  # (N,) index into prompt_embeddings
    resolution: int


def validate_pipeline_folder(folder: str | Path) -> Path:
    """Check that ``folder`` holds a saved Stable Diffusion pipeline; ``ValueError`` names what is missing."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ValueError(f"Stable Diffusion folder {folder} does not exist")
    missing = [part for part in REQUIRED_PARTS if not (folder / part).exists()]
    if missing:
        raise ValueError(f"Stable Diffusion folder {folder} is missing: {', '.join(missing)}")
    return folder


def load_stable_diffusion(
    source: str | Path, device: str | None = None, dtype: torch.dtype = torch.float32
) -> StableDiffusionPipeline:
    """Load a pipeline from a local folder (validated first) or a Hugging Face hub id ("org/name").

    A ``Path``, an existing path, or any string that is not of the form "org/name" is treated as a local
    folder. The safety checker is disabled.
    """
    if _is_local_source(source):
        source = validate_pipeline_folder(source)
    logger.info("Loading Stable Diffusion from %s", source)
    pipeline = StableDiffusionPipeline.from_pretrained(
        str(source), safety_checker=None, requires_safety_checker=False, dtype=dtype
    )
    return pipeline.to(pick_device(device))


def pipeline_resolution(pipeline: StableDiffusionPipeline) -> int:
    """The image side length the pipeline's UNet was built for."""
    return int(pipeline.unet.config.sample_size) * int(pipeline.vae_scale_factor)


def train_lora(
    pipeline: StableDiffusionPipeline,
    images: np.ndarray,
    prompts: Sequence[str],
    config: LoraTrainingConfig,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    device: str | None = None,
) -> LoraTrainingResult:
    """Add a LoRA adapter to ``pipeline.unet`` and train it on uint8 ``images`` (N, H, W, C) with ``prompts``.

    The pipeline is modified in place (it generates with the trained adapter afterwards). With
    ``checkpoint_dir``, checkpoints are written every ``config.checkpoint_every`` steps and the latest one
    there is resumed.
    """
    _validate_lora_inputs(pipeline, images, prompts)
    target_device = pick_device(device)
    pipeline.to(target_device)
    precision = autocast_dtype(target_device) if config.mixed_precision else None
    parts = _build_lora_training_parts(pipeline, config, precision)
    checkpoint = resume_checkpoint(checkpoint_dir, config.to_dict(), RESUMABLE_FIELDS, target_device)
    losses = _restore(parts, checkpoint) if checkpoint else []
    start_step = checkpoint.step if checkpoint else 0
    data = _training_data(pipeline, images, prompts, config.resolution or pipeline_resolution(pipeline))
    logger.info("Training LoRA on %d images at %d px from step %d", len(images), data.resolution, start_step)

    def train_step(step: int) -> float:
        loss = _lora_training_step(parts, data, step, config, precision)
        optimisation_step(loss, parts.optimizer, parts.lr_scheduler, parts.grad_scaler, config.max_grad_norm)
        return float(loss.detach())

    pipeline.unet.train()
    steps_per_second = run_training_loop(
        train_step,
        lambda completed, history: _checkpoint(parts, completed, config, history),
        start_step=start_step,
        train_steps=config.train_steps,
        losses=losses,
        checkpoint_every=config.checkpoint_every,
        checkpoint_dir=checkpoint_dir,
        description="LoRA training",
        progress=progress,
    )
    pipeline.unet.eval()
    return LoraTrainingResult(
        lora_state_dict=cpu_tensors(convert_state_dict_to_diffusers(_lora_weights(pipeline))),
        config=config,
        loss_history=losses,
        steps_per_second=steps_per_second,
    )


def save_lora(result: LoraTrainingResult, folder: str | Path) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` (with adapter metadata) and a training log."""
    folder = Path(folder)
    StableDiffusionPipeline.save_lora_weights(
        save_directory=folder,
        unet_lora_layers=result.lora_state_dict,
        safe_serialization=True,
        unet_lora_adapter_metadata=_peft_lora_config(result.config).to_dict(),
    )
    training_log = {
        "config": result.config.to_dict(),
        "loss_history": result.loss_history,
        "steps_per_second": result.steps_per_second,
    }
    (folder / LORA_TRAINING_LOG_FILE).write_text(json.dumps(training_log, indent=2))
    logger.info("Saved LoRA weights to %s", folder)
    return folder


def load_lora(pipeline: StableDiffusionPipeline, folder: str | Path) -> StableDiffusionPipeline:
    """Load LoRA weights written by :func:`save_lora` into ``pipeline`` (in place) and return it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"LoRA folder {folder} does not exist")
    pipeline.load_lora_weights(str(folder))
    return pipeline


@torch.no_grad()
def generate_text_to_image(
    pipeline: StableDiffusionPipeline,
    prompts: Sequence[str],
    negative_prompt: str | Sequence[str] | None,
    seeds: Sequence[int] | np.ndarray,
    steps: int = 30,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> np.ndarray:
    """One uint8 RGB image (N, H, W, 3) per prompt; image ``i`` depends only on ``seeds[i]``."""
    prompts, negatives, seeds = _generation_inputs(prompts, negative_prompt, seeds)
    height = height or pipeline_resolution(pipeline)
    width = width or pipeline_resolution(pipeline)
    pipeline.set_progress_bar_config(disable=not progress)
    logger.info("Generating %d images (text-to-image, %d steps)", len(prompts), steps)
    outputs = [
        pipeline(
            prompt=prompts[chunk],
            negative_prompt=negatives[chunk] if negatives else None,
            generator=_generators(seeds[chunk]),
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            height=height,
            width=width,
            output_type="np",
        ).images
        for chunk in _chunks(len(prompts), batch_size)
    ]
    return _to_uint8(outputs, height, width)


@torch.no_grad()
def generate_image_to_image(
    pipeline: StableDiffusionPipeline,
    init_images: np.ndarray,
    prompts: Sequence[str],
    negative_prompt: str | Sequence[str] | None,
    seeds: Sequence[int] | np.ndarray,
    strength: float = 0.5,
    steps: int = 30,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> np.ndarray:
    """Re-noise uint8 ``init_images`` (N, H, W, C) by ``strength`` and denoise them towards ``prompts``.

    The inputs are resized to ``height`` x ``width`` (default: the pipeline resolution); image ``i``
    depends only on ``init_images[i]``, ``prompts[i]`` and ``seeds[i]``.
    """
    prompts, negatives, seeds = _generation_inputs(prompts, negative_prompt, seeds)
    if len(init_images) != len(prompts):
        raise ValueError(f"{len(init_images)} init images for {len(prompts)} prompts")
    height = height or pipeline_resolution(pipeline)
    width = width or pipeline_resolution(pipeline)
    img2img = StableDiffusionImg2ImgPipeline(**pipeline.components, requires_safety_checker=False)
    img2img.set_progress_bar_config(disable=not progress)
    logger.info("Generating %d images (image-to-image, strength %.2f, %d steps)", len(prompts), strength, steps)
    outputs = [
        img2img(
            prompt=prompts[chunk],
            image=_to_pil(init_images[chunk], height, width),
            negative_prompt=negatives[chunk] if negatives else None,
            generator=_generators(seeds[chunk]),
            strength=strength,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            output_type="np",
        ).images
        for chunk in _chunks(len(prompts), batch_size)
    ]
    return _to_uint8(outputs, height, width)


def _is_local_source(source: str | Path) -> bool:
    if isinstance(source, Path) or Path(source).expanduser().exists():
        return True
    return HUB_ID_PATTERN.fullmatch(str(source)) is None


def _validate_lora_inputs(pipeline: StableDiffusionPipeline, images: np.ndarray, prompts: Sequence[str]) -> None:
    images = np.asarray(images)
    if images.ndim != 4 or len(images) == 0 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
        raise ValueError(f"images must be a non-empty uint8 (N, H, W, 1|3) array; got {images.dtype} {images.shape}")
    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts for {len(images)} images")
    if getattr(pipeline.unet, "peft_config", None):
        raise ValueError(
            f"The pipeline's UNet already has LoRA adapters {sorted(pipeline.unet.peft_config)}; "
            "load a fresh pipeline to train a new one"
        )


def _peft_lora_config(config: LoraTrainingConfig) -> LoraConfig:
    return LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        init_lora_weights="gaussian",
        target_modules=list(config.target_modules),
    )


def _build_lora_training_parts(
    pipeline: StableDiffusionPipeline, config: LoraTrainingConfig, precision: torch.dtype | None
) -> _LoraTrainingParts:
    for module in (pipeline.unet, pipeline.vae, pipeline.text_encoder):
        module.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(config.seed, "lora-init"))
        pipeline.unet.add_adapter(_peft_lora_config(config), adapter_name=LORA_ADAPTER_NAME)
    cast_training_params(pipeline.unet, dtype=torch.float32)
    parameters = [parameter for parameter in pipeline.unet.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=config.warmup_steps,
        num_training_steps=config.train_steps,
    )
    return _LoraTrainingParts(
        pipeline=pipeline,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        grad_scaler=torch.amp.GradScaler(pipeline.device.type, enabled=precision == torch.float16),
        noise_scheduler=DDPMScheduler.from_config(pipeline.scheduler.config),
    )


@torch.no_grad()
def _training_data(
    pipeline: StableDiffusionPipeline, images: np.ndarray, prompts: Sequence[str], resolution: int
) -> _TrainingData:
    """Images kept as uint8 on the CPU; each distinct prompt encoded once by the frozen text encoder."""
    unique_prompts = sorted(set(prompts))
    tokens = pipeline.tokenizer(
        unique_prompts,
        max_length=pipeline.tokenizer.model_max_length,
        padding="max_length",
        truncation=True,
        return_tensors="pt",
    )
    embeddings = pipeline.text_encoder(tokens.input_ids.to(pipeline.device), return_dict=False)[0]
    position = {prompt: index for index, prompt in enumerate(unique_prompts)}
    return _TrainingData(
        images=torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2),
        prompt_embeddings=embeddings,
        prompt_index=torch.tensor([position[prompt] for prompt in prompts]),
        resolution=resolution,
    )


def _pixel_batch(images: torch.Tensor, flip: torch.Tensor, resolution: int, device: torch.device) -> torch.Tensor:
    """uint8 (B, C, H, W) → RGB float in [-1, 1], centre-cropped to a square and resized to ``resolution``."""
    batch = images.to(device).float() / 255.0
    if batch.shape[1] == 1:
        batch = batch.expand(-1, 3, -1, -1)
    side = min(batch.shape[-2:])
    top, left = (batch.shape[-2] - side) // 2, (batch.shape[-1] - side) // 2
    batch = batch[..., top : top + side, left : left + side]
    if side != resolution:
        batch = F.interpolate(batch, size=(resolution, resolution), mode="bicubic", antialias=True)
        batch = batch.clamp(0, 1)
    batch = torch.where(flip.to(device)[:, None, None, None], batch.flip(-1), batch)
    return batch * 2.0 - 1.0


def _lora_training_step(
    parts: _LoraTrainingParts,
    data: _TrainingData,
    step: int,
    config: LoraTrainingConfig,
    precision: torch.dtype | None,
) -> torch.Tensor:
    """The noise-prediction loss of step ``step``; all its randomness comes from ``(config.seed, step)``."""
    pipeline, device = parts.pipeline, parts.pipeline.device
    generator = step_generator(config.seed, step)
    indices = torch.from_numpy(batch_indices(config.seed, step, config.batch_size, len(data.images)))
    flip = (torch.rand(len(indices), generator=generator) < 0.5) & config.horizontal_flip
    num_timesteps = parts.noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, num_timesteps, (len(indices),), generator=generator)
    pixels = _pixel_batch(data.images[indices], flip, data.resolution, device)
    with torch.no_grad():
        posterior = pipeline.vae.encode(pixels.to(pipeline.vae.dtype)).latent_dist
        latents = posterior.sample(generator=generator).float() * pipeline.vae.config.scaling_factor
    noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    timesteps = timesteps.to(device)
    noisy_latents = parts.noise_scheduler.add_noise(latents, noise, timesteps)
    text = data.prompt_embeddings[data.prompt_index[indices].to(device)]
    unet_input = noisy_latents.to(pipeline.unet.dtype)
    with torch.autocast(device.type, dtype=precision, enabled=precision is not None):
        prediction = pipeline.unet(unet_input, timesteps, text, return_dict=False)[0]
    target = _noise_target(parts.noise_scheduler, latents, noise, timesteps)
    return F.mse_loss(prediction.float(), target.float())


def _noise_target(
    scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def _lora_weights(pipeline: StableDiffusionPipeline) -> dict[str, torch.Tensor]:
    """The adapter's weights in peft key format."""
    return get_peft_model_state_dict(pipeline.unet, adapter_name=LORA_ADAPTER_NAME)


def _checkpoint(parts: _LoraTrainingParts, step: int, config: LoraTrainingConfig, losses: list[float]) -> Checkpoint:
    return Checkpoint(
        step=step,
        config=config.to_dict(),
        tensors={"lora": _lora_weights(parts.pipeline)},
        training_state={
            "optimizer": parts.optimizer.state_dict(),
            "lr_scheduler": parts.lr_scheduler.state_dict(),
            "grad_scaler": parts.grad_scaler.state_dict(),
        },
        loss_history=list(losses),
    )


def _restore(parts: _LoraTrainingParts, checkpoint: Checkpoint) -> list[float]:
    """Load a checkpoint into the adapter and optimiser; returns the loss history so far."""
    outcome = set_peft_model_state_dict(parts.pipeline.unet, checkpoint.tensors["lora"], adapter_name=LORA_ADAPTER_NAME)
    if outcome.unexpected_keys:
        raise ValueError(f"Checkpoint LoRA weights do not fit this UNet: {outcome.unexpected_keys[:5]}")
    parts.optimizer.load_state_dict(checkpoint.training_state["optimizer"])
    parts.lr_scheduler.load_state_dict(checkpoint.training_state["lr_scheduler"])
    parts.grad_scaler.load_state_dict(checkpoint.training_state["grad_scaler"])
    return list(checkpoint.loss_history)


def _generation_inputs(
    prompts: Sequence[str], negative_prompt: str | Sequence[str] | None, seeds: Sequence[int] | np.ndarray
) -> tuple[list[str], list[str] | None, list[int]]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    seeds = [int(seed) for seed in np.asarray(seeds).reshape(-1)]
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts: give one seed per image")
    if negative_prompt is None:
        return prompts, None, seeds
    negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
    if len(negatives) != len(prompts):
        raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts")
    return prompts, negatives, seeds


def _chunks(total: int, batch_size: int) -> list[slice]:
    return [slice(start, start + batch_size) for start in range(0, total, batch_size)]


def _generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image: the same noise on every device."""
    return [torch_generator(seed) for seed in seeds]


def _to_pil(images: np.ndarray, height: int, width: int) -> list[Image.Image]:
    """uint8 (N, H, W, 1|3) → RGB PIL images of ``width`` x ``height``."""
    pil_images = [Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image) for image in images]
    return [image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC) for image in pil_images]


def _to_uint8(batches: list[np.ndarray], height: int, width: int) -> np.ndarray:
    if not batches:
        return np.zeros((0, height, width, 3), dtype=np.uint8)
    return (np.concatenate(batches).clip(0, 1) * 255).round().astype(np.uint8)
