"""Tiny, randomly initialised Stable Diffusion (1.x-like and XL) pipelines built offline, for tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

TEXT_HIDDEN_SIZE = 32
TIME_EMBED_SIZE = 8  # per SDXL size id; six ids plus the pooled projection feed the UNet's added embedding
MERGES = ("f u", "fu n", "fun d", "fund u", "fundu s</w>", "r e", "t i", "n a</w>", "re ti", "reti na</w>")
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def build_tiny_stable_diffusion(folder: str | Path, seed: int = 0, xl: bool = False) -> Path:
    """Save a tiny random Stable Diffusion pipeline (32 px images, 16 px latents) into ``folder``; with ``xl``, a
    Stable Diffusion XL one (two text encoders, pooled text and size ids)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = _tiny_tokenizer(folder / "tokenizer")
    parts = {"vae": _tiny_vae(), "text_encoder": _tiny_text_encoder(tokenizer), "tokenizer": tokenizer}
    if xl:
        pipeline = StableDiffusionXLPipeline(
            **parts,
            text_encoder_2=_tiny_text_encoder(tokenizer, CLIPTextModelWithProjection),
            tokenizer_2=tokenizer,
            unet=_tiny_unet(
                addition_embed_type="text_time",
                addition_time_embed_dim=TIME_EMBED_SIZE,
                projection_class_embeddings_input_dim=6 * TIME_EMBED_SIZE + TEXT_HIDDEN_SIZE,
                cross_attention_dim=2 * TEXT_HIDDEN_SIZE,  # both encoders' states, concatenated
            ),
            scheduler=_scheduler(),
        )
    else:
        pipeline = StableDiffusionPipeline(
            **parts,
            unet=_tiny_unet(),
            scheduler=_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipeline.save_pretrained(folder)
    return folder


def _scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def _tiny_tokenizer(folder: Path) -> CLIPTokenizer:
    """A byte-level BPE tokenizer over printable ASCII with a handful of merges."""
    folder.mkdir(parents=True, exist_ok=True)
    characters = [chr(code) for code in range(33, 127)]
    tokens = characters + [f"{character}</w>" for character in characters]
    tokens += [merge.replace(" ", "") for merge in MERGES] + list(SPECIAL_TOKENS)
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def _tiny_text_encoder(tokenizer: CLIPTokenizer, model: type = CLIPTextModel) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=1000,
        hidden_size=TEXT_HIDDEN_SIZE,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=TEXT_HIDDEN_SIZE,
    )
    return model(config)


def _tiny_unet(**changes: object) -> UNet2DConditionModel:
    settings = dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN_SIZE,
        attention_head_dim=(2, 4),
        norm_num_groups=32,
    )
    return UNet2DConditionModel(**(settings | changes))


def _tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=32,
        norm_num_groups=32,
    )
