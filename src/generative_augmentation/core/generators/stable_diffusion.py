"""Stable Diffusion 1.x / 2.x / XL fine-tuned with LoRA, text-to-image or image-to-image, behind the generator
interface, optionally with DreamBooth's prior preservation.

Training follows diffusers' ``train_text_to_image_lora.py`` (and ``train_text_to_image_lora_sdxl.py`` for an XL
model: two text encoders, pooled text embeddings and size ids): frozen VAE, text encoders and UNet; peft LoRA
adapters on the UNet's attention projections; the noise-prediction loss on VAE latents, one prompt per class. With
``prior_preservation`` it follows ``train_dreambooth_lora.py``: the class prompts are DreamBooth's instance prompts,
and the base model's own images of a generic class prompt join every batch with a weighted loss. The family (1.x/2.x
or XL) is read from the model folder's ``model_index.json``. Randomness comes from ``(seed, step)`` and checkpoints
from accelerate (:mod:`..training`), so an interrupted run resumes exactly. Generation gives every image its own CPU
generator, so image ``i`` depends only on its seed (and source image). The safety checker is off: medical images trip
it for no reason. Only local folders or hub ids load; nothing is downloaded when offline.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from diffusers import (
    AutoPipelineForImage2Image,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.optimization import get_scheduler
from diffusers.training_utils import cast_training_params
from diffusers.utils import convert_state_dict_to_diffusers
from diffusers.utils.torch_utils import randn_tensor
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file

from generative_augmentation.core.config import Config, ConfigError
from generative_augmentation.core.generators.base import Generator, TrainingImages, register
from generative_augmentation.core.images import array_to_pil, to_array, to_unit_tensor
from generative_augmentation.core.runtime import derive_seed, pick_device, seeded, torch_generator
from generative_augmentation.core.training import (
    Checkpointer,
    batch_indices,
    cpu_tensors,
    make_accelerator,
    optimisation_step,
    run_steps,
    step_generator,
)

logger = logging.getLogger(__name__)

REQUIRED_PARTS = ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler")
XL_PARTS = ("text_encoder_2", "tokenizer_2")
XL_PIPELINE = "StableDiffusionXLPipeline"
ADAPTER = "default"
LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"  # what save_lora_weights writes; diffusers loads it too
HUB_ID_PATTERN = re.compile(r"[\w.-]+/[\w.-]+")


@dataclass(frozen=True)
class LoraSettings(Config):
    """The LoRA adapter's shape and training (diffusers' text-to-image LoRA recipe)."""

    where = "generation.stable_diffusion.lora"
    rank: int = 8
    alpha: int = 8
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    train_steps: int = 1500
    batch_size: int = 4
    learning_rate: float = 0.0001
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "cosine"
    warmup_steps: int = 100
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    horizontal_flip: bool = False
    checkpoint_every: int = 250
    mixed_precision: bool = True

    def checks(self):
        yield from self.at_least(*("rank", "alpha", "train_steps", "batch_size", "checkpoint_every"))
        yield from self.positive("learning_rate")

    def peft_config(self) -> LoraConfig:
        return LoraConfig(
            r=self.rank, lora_alpha=self.alpha, init_lora_weights="gaussian", target_modules=list(self.target_modules)
        )


@dataclass(frozen=True)
class PriorPreservation(Config):
    """DreamBooth's prior preservation: before training, the base model makes ``class_images`` images of
    ``class_prompt``; every step trains on a batch of them too, their loss weighted by ``loss_weight``, so the
    adapter learns the classes without forgetting what the base model makes of the modality."""

    where = "generation.stable_diffusion.prior_preservation"
    enabled: bool = False
    class_prompt: str = "a medical image"
    class_images: int = 100
    loss_weight: float = 1.0

    def checks(self):
        yield from self.at_least("class_images")
        yield from self.positive("loss_weight")
        yield "class_prompt", bool(self.class_prompt.strip()), "is empty: give the generic prompt of the modality"


@dataclass(frozen=True)
class StableDiffusionSettings(Config):
    """The base model (a local folder saved with ``save_pretrained``, or a hub id when online), prompts, sampling
    and LoRA training. ``image_to_image`` re-noises a real train image of the class by ``strength`` (DA-Fusion)."""

    where = "generation.stable_diffusion"
    model: str | None = None
    resolution: int | None = None
    mode: Literal["text_to_image", "image_to_image"] = "text_to_image"
    strength: float = 0.5
    sampler: Literal["dpm_solver", "default"] = "dpm_solver"
    steps: int = 25
    guidance_scale: float = 7.5
    batch_size: int = 4
    prompt_template: str = "a medical image, {class_name}"
    prompts: dict[str, str] = field(default_factory=dict)
    negative_prompt: str = "text, watermark, frame, cartoon, drawing, low quality, deformed"
    lora: LoraSettings = field(default_factory=LoraSettings)
    prior_preservation: PriorPreservation = field(default_factory=PriorPreservation)

    def checks(self):
        yield from self.within("strength", 0, 1, open_low=True)
        yield from self.at_least("steps")
        yield from self.at_least("guidance_scale", minimum=0)
        yield from self.at_least("batch_size")
        yield from self.at_least("resolution", minimum=8)

    def class_prompts(self, class_names: list[str]) -> dict[str, str]:
        """One prompt per class: ``prompts[class]``, else ``prompt_template`` with the class name filled in."""
        unknown = sorted(set(self.prompts) - set(class_names))
        if unknown:
            raise ConfigError(
                f"Parameter {self.parameter('prompts')} has prompts for {unknown}, which the data does not have; "
                f"known class names: {class_names}"
            )
        try:
            return {
                name: self.prompts.get(name) or self.prompt_template.format(class_name=name.replace("_", " "))
                for name in class_names
            }
        except (KeyError, IndexError) as error:
            raise ConfigError(
                f"Parameter {self.parameter('prompt_template')} may only use {{class_name}}: {error}"
            ) from error


def validate_pipeline_folder(folder: str | Path) -> Path:
    """Check that ``folder`` holds a saved Stable Diffusion (or XL) pipeline; ``ValueError`` names what is missing."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ValueError(f"Stable Diffusion folder {folder} does not exist")
    missing = [part for part in REQUIRED_PARTS if not (folder / part).exists()]
    if not missing and is_xl_folder(folder):
        missing = [part for part in XL_PARTS if not (folder / part).exists()]
    if missing:
        raise ValueError(f"Stable Diffusion folder {folder} is missing: {', '.join(missing)}")
    return folder


def is_xl_folder(folder: Path) -> bool:
    """Whether the saved pipeline in ``folder`` is Stable Diffusion XL (its ``model_index.json`` says so)."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"Stable Diffusion folder {folder}: model_index.json does not read: {error}") from error
    return str(index.get("_class_name", "")).startswith(XL_PIPELINE)


def is_local_source(source: str | Path) -> bool:
    """A ``Path``, an existing path, or any string not of the form "org/name" is a local folder."""
    if isinstance(source, Path) or Path(source).expanduser().exists():
        return True
    return HUB_ID_PATTERN.fullmatch(str(source)) is None


def load_stable_diffusion(
    source: str | Path, device: str | None = None
) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """A text-to-image pipeline of the family the model is (1.x/2.x or XL) from a local folder (validated first) or
    a hub id, safety checker off; errors name the model."""
    no_checker = {"safety_checker": None, "requires_safety_checker": False}  # XL has none: pass nothing to it
    if is_local_source(source):
        source = validate_pipeline_folder(source)
        no_checker = {} if is_xl_folder(source) else no_checker
    logger.info("Loading Stable Diffusion from %s", source)
    try:
        pipeline = DiffusionPipeline.from_pretrained(str(source), **no_checker)
        if not isinstance(pipeline, StableDiffusionPipeline | StableDiffusionXLPipeline):
            raise TypeError(f"it is a {type(pipeline).__name__}, not a Stable Diffusion (1.x, 2.x or XL) pipeline")
    except Exception as error:  # diffusers raises OSError, KeyError, ValueError... on a broken folder
        raise ValueError(
            f"Parameter generation.stable_diffusion.model ({source}) does not load: {type(error).__name__}: {error}"
        ) from error
    return pipeline.to(pick_device(device))


@dataclass
class PromptConditioning:
    """The UNet's text conditioning of each class prompt: encoder states, and for XL the pooled text embeddings and
    the size ids (original size, crop corner, target size) of ``train_text_to_image_lora_sdxl.py``."""

    states: torch.Tensor  # (K, tokens, width)
    pooled: torch.Tensor | None = None  # (K, projection) XL only
    time_ids: torch.Tensor | None = None  # (1, 6) XL only

    def unet_inputs(self, prompt_index: torch.Tensor, device: torch.device) -> dict[str, Any]:
        """The UNet's conditioning keyword arguments for a batch whose prompts are ``prompt_index``."""
        inputs: dict[str, Any] = {"encoder_hidden_states": self.states[prompt_index].to(device)}
        if self.pooled is not None and self.time_ids is not None:
            inputs["added_cond_kwargs"] = {
                "text_embeds": self.pooled[prompt_index].to(device),
                "time_ids": self.time_ids.repeat(len(prompt_index), 1).to(device),
            }
        return inputs


class _PriorImages:
    """DreamBooth's class images as a checkpointable object: a resumed run reuses them instead of making them again."""

    def __init__(self) -> None:
        self.images = torch.empty(0, dtype=torch.uint8)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"images": self.images}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.images = state["images"]


class _LoraWeights:
    """The UNet's LoRA adapter as a checkpointable object (accelerate saves the optimiser; this the adapter)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.unet = unet

    def state_dict(self) -> dict[str, torch.Tensor]:
        return get_peft_model_state_dict(self.unet, adapter_name=ADAPTER)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        outcome = set_peft_model_state_dict(self.unet, state, adapter_name=ADAPTER)
        if outcome.unexpected_keys:
            raise ValueError(f"Checkpoint LoRA weights do not fit this UNet: {outcome.unexpected_keys[:5]}")


RESUMABLE_FIELDS = ("train_steps", "checkpoint_every", "mixed_precision")


@register
class StableDiffusionLoraGenerator(Generator):
    """Stable Diffusion (1.x, 2.x or XL) with a LoRA adapter trained on the real train images, one prompt per class,
    optionally with DreamBooth's prior preservation."""

    kind = "stable_diffusion"
    settings_class = StableDiffusionSettings
    settings: StableDiffusionSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pipeline: StableDiffusionPipeline | None = None
        self.lora_weights: dict[str, torch.Tensor] = {}

    @classmethod
    def check(cls, settings: StableDiffusionSettings, class_names: list[str]) -> None:
        if not settings.model:
            raise ConfigError(
                f"Parameter {settings.parameter('model')} is not set: give a local Stable Diffusion folder "
                "(saved with StableDiffusionPipeline.save_pretrained), or a hub id when online"
            )
        if is_local_source(settings.model):
            try:
                validate_pipeline_folder(settings.model)
            except ValueError as error:
                raise ConfigError(f"Parameter {settings.parameter('model')}: {error}") from error
        settings.class_prompts(class_names)
        if settings.prior_preservation.enabled and settings.mode == "image_to_image":
            logger.info("Prior preservation: the class images are made text-to-image from the class prompt")

    @classmethod
    def uses_source_images(cls, settings: StableDiffusionSettings) -> bool:
        return settings.mode == "image_to_image"

    @classmethod
    def conditions_on_clusters(cls, settings: StableDiffusionSettings) -> bool:
        return False

    @classmethod
    def sampling_record(cls, settings: StableDiffusionSettings, class_name: str) -> dict[str, Any]:
        return {
            "mode": settings.mode,
            "sampler": settings.sampler,
            "steps": settings.steps,
            "guidance_scale": settings.guidance_scale,
            "strength": settings.strength if settings.mode == "image_to_image" else float("nan"),
            "prompt": settings.class_prompts([class_name])[class_name],
            "negative_prompt": settings.negative_prompt,
        }

    @classmethod
    def checkpoint_key(cls, settings: StableDiffusionSettings) -> str:
        return str(settings.model)

    # --- training ----------------------------------------------------------------------------------------
    def fit(self, data: TrainingImages, checkpoint_dir: Path | None = None, progress: bool = True) -> list[float]:
        settings, lora = self.settings, self.settings.lora
        pipeline = load_stable_diffusion(str(settings.model), self.device)
        accelerator = make_accelerator(self.device, lora.mixed_precision)
        pipeline.to(accelerator.device)
        for module in (pipeline.unet, pipeline.vae, pipeline.text_encoder):
            module.requires_grad_(False)
        with seeded(derive_seed(self.seed, "lora-init")):
            pipeline.unet.add_adapter(lora.peft_config(), adapter_name=ADAPTER)
        cast_training_params(pipeline.unet, dtype=torch.float32)
        parameters = [parameter for parameter in pipeline.unet.parameters() if parameter.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=lora.learning_rate, weight_decay=lora.weight_decay)
        lr_scheduler = get_scheduler(
            lora.lr_scheduler, optimizer, num_warmup_steps=lora.warmup_steps, num_training_steps=lora.train_steps
        )
        optimizer, lr_scheduler = accelerator.prepare(optimizer, lr_scheduler)
        extras: dict[str, Any] = {"lora": _LoraWeights(pipeline.unet)}
        prior, prior_settings = _PriorImages(), settings.prior_preservation
        if prior_settings.enabled:
            extras["prior"] = prior
        checkpointer = Checkpointer(checkpoint_dir, accelerator, settings, RESUMABLE_FIELDS, extras=extras)
        start, losses = checkpointer.resume()
        resolution = settings.resolution or pipeline_resolution(pipeline)
        if prior_settings.enabled and not len(prior.images):
            prior.images = self._class_images(pipeline, resolution)
        prompts = settings.class_prompts(self.class_names)
        texts = [prompts[name] for name in self.class_names]
        texts += [prior_settings.class_prompt] if prior_settings.enabled else []
        conditioning = _encode_prompts(pipeline, texts, resolution)
        prior_label = len(self.class_names)  # the class prompt's row in ``conditioning`` (prior preservation)
        images = torch.from_numpy(np.ascontiguousarray(data.images))
        labels = torch.from_numpy(np.asarray(data.labels, dtype=np.int64))
        noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        logger.info(
            "Training LoRA (%s) on %d images at %d px from step %d%s",
            type(pipeline).__name__,
            len(images),
            resolution,
            start,
            f", with {len(prior.images)} prior-preservation images" if prior_settings.enabled else "",
        )

        def train_step(step: int) -> float:
            indices = torch.from_numpy(batch_indices(self.seed, step, lora.batch_size, len(images)))
            generator = step_generator(self.seed, step)
            batch = (images[indices], conditioning, labels[indices])
            loss = _lora_loss(pipeline, noise_scheduler, *batch, resolution, lora, generator, accelerator)
            if prior_settings.enabled:
                chosen = torch.from_numpy(
                    batch_indices(derive_seed(self.seed, "prior"), step, lora.batch_size, len(prior.images))
                )
                batch = (prior.images[chosen], conditioning, torch.full((len(chosen),), prior_label))
                prior_loss = _lora_loss(pipeline, noise_scheduler, *batch, resolution, lora, generator, accelerator)
                loss = loss + prior_settings.loss_weight * prior_loss
            optimisation_step(accelerator, loss, optimizer, lr_scheduler, parameters, lora.max_grad_norm)
            return float(loss.detach())

        def checkpoint(completed: int) -> None:
            checkpointer.save(completed, losses)

        pipeline.unet.train()
        steps_per_second = run_steps(
            train_step,
            start=start,
            total=lora.train_steps,
            losses=losses,
            description="LoRA training",
            every=lora.checkpoint_every if checkpoint_dir else 0,
            on_every=checkpoint,
            progress=progress,
        )
        pipeline.unet.eval()
        self.pipeline = pipeline
        self.lora_weights = cpu_tensors(convert_state_dict_to_diffusers(_LoraWeights(pipeline.unet).state_dict()))
        self.training = {
            "loss_history": losses,
            "steps_per_second": steps_per_second,
            "train_images": len(images),
            "pipeline": type(pipeline).__name__,
            "prior_images": len(prior.images),
        }
        return losses

    def _class_images(self, pipeline: Any, resolution: int) -> torch.Tensor:
        """DreamBooth's class images: the base model (no adapter yet) on the class prompt, one seed per image."""
        prior = self.settings.prior_preservation
        logger.info(
            "Making %d prior-preservation images of %r with the base model", prior.class_images, prior.class_prompt
        )
        self._use_sampler(pipeline)
        pipeline.set_progress_bar_config(disable=True)
        pipeline.unet.disable_adapters()
        seeds = np.array([derive_seed(self.seed, "prior-image", index) for index in range(prior.class_images)])
        options = {
            "prompt": [prior.class_prompt] * len(seeds),
            "negative_prompt": [self.settings.negative_prompt] * len(seeds) if self.settings.negative_prompt else None,
            "num_inference_steps": self.settings.steps,
            "guidance_scale": self.settings.guidance_scale,
        }
        outputs = self._batched(pipeline, options, seeds, height=resolution, width=resolution)
        pipeline.unet.enable_adapters()
        return torch.from_numpy((np.stack(outputs) * 255).round().clip(0, 255).astype(np.uint8))

    # --- sampling ----------------------------------------------------------------------------------------
    def _sample(self, rows: pd.DataFrame, sources: np.ndarray | None, progress: bool) -> np.ndarray:
        pipeline = self._ready_pipeline()
        first = rows.iloc[0]
        resolution = self.settings.resolution or pipeline_resolution(pipeline)
        negatives = rows["negative_prompt"].tolist() if rows["negative_prompt"].astype(bool).any() else None
        options = {
            "prompt": rows["prompt"].tolist(),
            "negative_prompt": negatives,
            "num_inference_steps": int(first["steps"]),
            "guidance_scale": float(first["guidance_scale"]),
        }
        seeds = rows["seed"].to_numpy()
        pipeline.set_progress_bar_config(disable=not progress)
        if first["mode"] == "image_to_image":
            if sources is None:
                raise ValueError("image_to_image generation needs the real source images")
            img2img = AutoPipelineForImage2Image.from_pipe(pipeline)
            img2img.set_progress_bar_config(disable=not progress)
            pil_sources = [array_to_pil(image).convert("RGB").resize((resolution, resolution)) for image in sources]
            outputs = self._batched(img2img, options, seeds, image=pil_sources, strength=float(first["strength"]))
        else:
            outputs = self._batched(pipeline, options, seeds, height=resolution, width=resolution)
        return np.stack(
            [to_array((output * 255).round().clip(0, 255).astype(np.uint8), self.image) for output in outputs]
        )

    def _batched(self, pipeline: Any, options: dict[str, Any], seeds: np.ndarray, **extra: Any) -> list[np.ndarray]:
        outputs, size = [], self.settings.batch_size
        for start in range(0, len(seeds), size):
            chunk = slice(start, start + size)
            batch_options = {
                key: value[chunk] if isinstance(value, list) else value for key, value in {**options, **extra}.items()
            }
            generators = [torch_generator(int(seed)) for seed in seeds[chunk]]
            outputs += list(pipeline(**batch_options, generator=generators, output_type="np").images)
        return outputs

    def __getstate__(self) -> dict:
        """Pickled (sent to another process, a Dask worker) without the loaded pipeline, which may sit on a GPU:
        the receiver rebuilds it from the base model and the adapter weights on first use."""
        return {**self.__dict__, "pipeline": None}

    def _ready_pipeline(self) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
        """The base pipeline with the trained adapter attached (loaded once), and DPM-Solver++ when configured."""
        if self.pipeline is None:
            self.pipeline = load_stable_diffusion(str(self.settings.model), self.device)
            self.pipeline.unet.load_lora_adapter(
                dict(self.lora_weights),
                prefix=None,
                metadata=self.settings.lora.peft_config().to_dict(),
                adapter_name=ADAPTER,
            )
        self._use_sampler(self.pipeline)
        return self.pipeline

    def _use_sampler(self, pipeline: Any) -> None:
        """DPM-Solver++ in place of the model's own scheduler when ``sampler`` is ``dpm_solver``."""
        if self.settings.sampler == "dpm_solver" and not isinstance(pipeline.scheduler, DPMSolverMultistepScheduler):
            pipeline.scheduler = DPMSolverMultistepScheduler.from_config(pipeline.scheduler.config)

    # --- persistence -------------------------------------------------------------------------------------
    def _save_model(self, folder: Path) -> None:
        if not self.lora_weights:
            raise ValueError("The LoRA generator has not been fitted: nothing to save")
        is_xl = self.training.get("pipeline") == StableDiffusionXLPipeline.__name__
        (StableDiffusionXLPipeline if is_xl else StableDiffusionPipeline).save_lora_weights(
            save_directory=folder,
            unet_lora_layers=self.lora_weights,
            safe_serialization=True,
            unet_lora_adapter_metadata=self.settings.lora.peft_config().to_dict(),
        )

    def _load_model(self, folder: Path) -> None:
        state = load_file(str(folder / LORA_WEIGHTS_FILE))
        self.lora_weights = {key.removeprefix("unet."): value for key, value in state.items()}


def pipeline_resolution(pipeline: StableDiffusionPipeline) -> int:
    """The image side length the pipeline's UNet was built for."""
    return int(pipeline.unet.config.sample_size) * int(pipeline.vae_scale_factor)


@torch.no_grad()
def _encode_prompts(pipeline: Any, prompts: list[str], resolution: int) -> PromptConditioning:
    """The conditioning of each prompt from the frozen text encoder(s), by the pipeline's own ``encode_prompt``."""
    if isinstance(pipeline, StableDiffusionXLPipeline):
        states, _, pooled, _ = pipeline.encode_prompt(
            prompt=prompts, device=pipeline.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        # No crop, trained at the target size: (original h, w, crop top, left, target h, w), as the SDXL LoRA script.
        time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=states.dtype)
        return PromptConditioning(states, pooled, time_ids)
    states, _ = pipeline.encode_prompt(prompts, pipeline.device, 1, False)
    return PromptConditioning(states)


def _lora_loss(
    pipeline: Any,
    noise_scheduler: DDPMScheduler,
    images: torch.Tensor,
    conditioning: PromptConditioning,
    prompt_index: torch.Tensor,
    resolution: int,
    lora: LoraSettings,
    generator: torch.Generator,
    accelerator: Any,
) -> torch.Tensor:
    """The noise-prediction loss of one batch of uint8 (B, H, W, C) images captioned by the prompts
    ``prompt_index``; randomness from ``generator``."""
    device = accelerator.device
    flip = (torch.rand(len(images), generator=generator) < 0.5) & lora.horizontal_flip
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(images),), generator=generator)
    pixels = _pixel_batch(images, flip, resolution).to(device)
    with torch.no_grad():
        posterior = pipeline.vae.encode(pixels.to(pipeline.vae.dtype)).latent_dist
        latents = posterior.sample(generator=generator).float() * pipeline.vae.config.scaling_factor
    noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    timesteps = timesteps.to(device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    with accelerator.autocast():
        inputs = conditioning.unet_inputs(prompt_index, device)
        prediction = pipeline.unet(noisy.to(pipeline.unet.dtype), timesteps, **inputs, return_dict=False)[0]
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    return F.mse_loss(prediction.float(), target.float())


def _pixel_batch(images: torch.Tensor, flip: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 (B, H, W, C) → RGB float in [-1, 1], centre-cropped to a square, resized to ``resolution``, flipped."""
    batch = to_unit_tensor(images.numpy())
    if batch.shape[1] == 1:
        batch = batch.expand(-1, 3, -1, -1)
    side = min(batch.shape[-2:])
    top, left = (batch.shape[-2] - side) // 2, (batch.shape[-1] - side) // 2
    batch = batch[..., top : top + side, left : left + side]
    if side != resolution:
        batch = F.interpolate(batch, size=(resolution, resolution), mode="bicubic", antialias=True).clamp(0, 1)
    batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
    return batch * 2.0 - 1.0
