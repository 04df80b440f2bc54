"""Images: the one image loader of the project, the conversions between arrays and tensors, and the ordinary
(flip, rotate, jitter, crop) augmentation.

Images cross module boundaries as NumPy ``uint8`` arrays shaped (H, W, C) or (N, H, W, C), C = 3 (RGB) or 1
(grayscale). Models see float tensors (N, C, H, W) in [0, 1] ("unit") or in [-1, 1] ("signed", diffusion models).
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from generative_augmentation.core.config import Config

MAX_IMAGE_SIZE = 1024
COLOR_MODES = {"RGB": 3, "L": 1}


@dataclass(frozen=True)
class ImageSpec(Config):
    """The working resolution (square side, pixels) and colour mode (RGB, or L for grayscale X-ray and MRI)."""

    where = "image"
    size: int = 64
    mode: Literal["RGB", "L"] = "RGB"

    def checks(self):
        yield from self.within("size", 4, MAX_IMAGE_SIZE)

    @property
    def channels(self) -> int:
        """3 for RGB, 1 for grayscale."""
        return COLOR_MODES[self.mode]

    def empty(self, count: int = 0) -> np.ndarray:
        """A zero uint8 batch (count, size, size, channels)."""
        return np.zeros((count, self.size, self.size, self.channels), dtype=np.uint8)


def decode_image(source: str | Path | bytes) -> Image.Image:
    """Open and fully decode an image file or encoded bytes; raises ``OSError`` when it does not decode."""
    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(handle) as image:
        image.load()
        return image.copy()


def to_array(image: Image.Image | np.ndarray, spec: ImageSpec) -> np.ndarray:
    """Resize (antialiased, square) and convert an image to a (size, size, C) ``uint8`` array."""
    if isinstance(image, np.ndarray):
        image = array_to_pil(image)
    image = image.convert(spec.mode)
    if image.size != (spec.size, spec.size):
        image = image.resize((spec.size, spec.size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def array_to_pil(array: np.ndarray) -> Image.Image:
    """A (H, W, C) or (H, W) ``uint8`` array as a PIL image."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(np.ascontiguousarray(array.astype(np.uint8)))


def content_hash(array: np.ndarray) -> str:
    """SHA-1 of the decoded pixels: identical images have identical hashes whatever their file names."""
    return hashlib.sha1(np.ascontiguousarray(array).tobytes() + str(array.shape).encode()).hexdigest()


def stack_images(
    partitions: Mapping[str, Callable[[], Image.Image] | Image.Image], keys: Iterable[str], spec: ImageSpec
) -> np.ndarray:
    """Load the images ``keys`` from a folder of images (a Kedro PartitionedDataset mapping) as (N, H, W, C)."""
    keys = list(keys)
    missing = [key for key in keys if key not in partitions]
    if missing:
        raise KeyError(f"{len(missing)} image(s) are missing from the image folder, e.g. {missing[:3]}")
    arrays = []
    for key in keys:
        loaded = partitions[key]
        arrays.append(to_array(loaded() if callable(loaded) else loaded, spec))
    return np.stack(arrays) if arrays else spec.empty()


def to_unit_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) ``uint8`` → (N, C, H, W) float32 in [0, 1]."""
    # Read-only arrays (memory-mapped or shared with workers) are copied; torch cannot wrap them.
    contiguous = np.require(images, requirements=("C", "W"))
    return torch.from_numpy(contiguous).permute(0, 3, 1, 2).float().div_(255.0)


def to_signed_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) ``uint8`` → (N, C, H, W) float32 in [-1, 1]."""
    return to_unit_tensor(images).mul_(2.0).sub_(1.0)


def unit_float(images: torch.Tensor) -> torch.Tensor:
    """A (B, C, H, W) tensor as float in [0, 1]: ``uint8`` is scaled, float is taken as already in [0, 1]."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be a (B, C, H, W) tensor with C in (1, 3), got {tuple(images.shape)}")
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def from_unit_tensor(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) float in [0, 1] → (N, H, W, C) ``uint8`` (clipped, rounded)."""
    return images.float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def from_signed_tensor(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) float in [-1, 1] → (N, H, W, C) ``uint8`` (clipped, rounded)."""
    return from_unit_tensor((images.float() + 1.0) / 2.0)


def match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, C, H, W) with C in (1, 3) → ``channels`` channels (grey repeated, or colour made grey)."""
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1)
    return v2.functional.rgb_to_grayscale(images)


@dataclass(frozen=True)
class AugmentationConfig(Config):
    """The ordinary augmentation baseline, applied on the fly: flips, small rotations, colour jitter, crops.

    Vertical flips are off by default: a chest X-ray or a brain slice upside down is not a plausible image.
    """

    where = "augmentation"
    horizontal_flip: bool = True
    vertical_flip: bool = False
    rotation_degrees: float = 15.0
    color_jitter: float = 0.1
    crop_scale: tuple[float, ...] = (0.85, 1.0)

    def checks(self):
        yield from self.within("rotation_degrees", 0, 180)
        yield from self.within("color_jitter", 0, 1, open_high=True)
        low, high = (self.crop_scale + (0.0, 0.0))[:2] if len(self.crop_scale) == 2 else (0.0, -1.0)
        yield (
            "crop_scale",
            0 < low <= high <= 1,
            f"must be [low, high] with 0 < low <= high <= 1, got {list(self.crop_scale)}",
        )

    def transform(self, image_size: int) -> v2.Compose:
        """The same augmentation as torchvision v2 transforms over one (C, H, W) tensor of side ``image_size`` (the
        reference :meth:`apply` is measured against in ``scripts/benchmark_augmentation.py``)."""
        steps: list[v2.Transform] = []
        if self.horizontal_flip:
            steps.append(v2.RandomHorizontalFlip())
        if self.vertical_flip:
            steps.append(v2.RandomVerticalFlip())
        if self.rotation_degrees:
            steps.append(v2.RandomRotation(self.rotation_degrees))
        if self.color_jitter:
            jitter = self.color_jitter
            steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
        scale = (float(self.crop_scale[0]), float(self.crop_scale[1]))
        steps.append(v2.RandomResizedCrop(image_size, scale=scale, ratio=CROP_RATIO, antialias=True))
        return v2.Compose(steps)

    def apply(self, batch: torch.Tensor) -> torch.Tensor:
        """Augment a (N, C, H, W) batch in [0, 1], each image with its own random flips, colour jitter, rotation and
        crop, drawn from torch's global generator (seed it around the call).

        torchvision's v2 transforms draw one set of parameters per call, so per-image parameters cost one call per
        image; here they are drawn for the whole batch and applied as tensor operations: the flips by mask, the
        jitter as per-image factors (brightness, contrast, saturation, in that order), rotation and crop as one
        affine warp per image (``affine_grid`` + ``grid_sample``, zeros outside the image as ``RandomRotation``).
        """
        count = len(batch)
        if self.horizontal_flip:
            batch = torch.where(_uniform(batch, count)[:, None, None, None] < 0.5, batch.flip(-1), batch)
        if self.vertical_flip:
            batch = torch.where(_uniform(batch, count)[:, None, None, None] < 0.5, batch.flip(-2), batch)
        if self.color_jitter:
            batch = _jitter(batch, self.color_jitter)
        return _rotate_and_crop(batch, self.rotation_degrees, (float(self.crop_scale[0]), float(self.crop_scale[1])))


CROP_RATIO = (0.95, 1.05)


def _uniform(batch: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` uniform draws in [0, 1) from torch's global generator, on the batch's device and dtype."""
    return torch.rand(count).to(device=batch.device, dtype=batch.dtype)


def _factors(batch: torch.Tensor, spread: float) -> torch.Tensor:
    """Per-image factors drawn uniformly from [1 - spread, 1 + spread], shaped to broadcast over (C, H, W)."""
    return (1 + spread * (2 * _uniform(batch, len(batch)) - 1))[:, None, None, None]


def _jitter(batch: torch.Tensor, spread: float) -> torch.Tensor:
    """Brightness, contrast and saturation jitter with torchvision's definitions (grey = ITU-R 601 luma)."""
    batch = (batch * _factors(batch, spread)).clamp(0, 1)
    grey = _grey(batch)
    batch = (
        (batch - grey.mean(dim=(1, 2, 3), keepdim=True)) * _factors(batch, spread)
        + grey.mean(dim=(1, 2, 3), keepdim=True)
    ).clamp(0, 1)
    if batch.shape[1] == 3:
        grey = _grey(batch)
        batch = ((batch - grey) * _factors(batch, spread) + grey).clamp(0, 1)
    return batch


def _grey(batch: torch.Tensor) -> torch.Tensor:
    if batch.shape[1] != 3:
        return batch
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=batch.dtype, device=batch.device)[None, :, None, None]
    return (batch * weights).sum(dim=1, keepdim=True)


def _rotate_and_crop(batch: torch.Tensor, degrees: float, scale: tuple[float, float]) -> torch.Tensor:
    """Rotate each image by an angle in [-degrees, degrees], then crop an area share in ``scale`` (aspect ratio in
    ``CROP_RATIO``) at a random place and resize it back: one affine map from output to input coordinates."""
    count = len(batch)
    angle = torch.deg2rad(degrees * (2 * _uniform(batch, count) - 1))
    area = scale[0] + (scale[1] - scale[0]) * _uniform(batch, count)
    low, high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    log_ratio = low + (high - low) * _uniform(batch, count)
    ratio = torch.minimum(torch.maximum(torch.exp(log_ratio), area), 1 / area)  # the crop fits: no side above 1
    width, height = torch.sqrt(area * ratio), torch.sqrt(area / ratio)
    shift_x, shift_y = (1 - width) * (2 * _uniform(batch, count) - 1), (1 - height) * (2 * _uniform(batch, count) - 1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # output -> crop (scale, shift) -> un-rotate: the sampling point in the input image
    theta = torch.stack(
        [
            torch.stack([cos * width, sin * height, cos * shift_x + sin * shift_y], dim=1),
            torch.stack([-sin * width, cos * height, -sin * shift_x + cos * shift_y], dim=1),
        ],
        dim=1,
    ).to(batch.dtype)
    grid = torch.nn.functional.affine_grid(theta, list(batch.shape), align_corners=False)
    return torch.nn.functional.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
