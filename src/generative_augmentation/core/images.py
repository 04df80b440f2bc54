"""Image I/O and transforms: the one image loader of the project.

Images cross module boundaries as NumPy ``uint8`` arrays shaped (H, W, C) or (N, H, W, C), C = 3 (RGB)
or 1 (grayscale).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

COLOR_MODES = {"RGB": 3, "L": 1}


def channels_for(mode: str) -> int:
    """Number of channels of a colour mode ("RGB" or "L")."""
    if mode not in COLOR_MODES:
        raise ValueError(f"Unknown colour mode {mode!r} (parameter image.mode); use one of {sorted(COLOR_MODES)}")
    return COLOR_MODES[mode]


def decode_image(source: str | Path | bytes) -> Image.Image:
    """Open and fully decode an image file or encoded bytes; raises ``OSError`` when it does not decode."""
    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(handle) as image:
        image.load()
        return image.copy()


def to_array(image: Image.Image | np.ndarray, size: int, mode: str = "RGB") -> np.ndarray:
    """Resize (antialiased, square) and convert an image to a (size, size, C) ``uint8`` array."""
    if isinstance(image, np.ndarray):
        image = array_to_pil(image)
    channels_for(mode)
    image = image.convert(mode)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
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


def stack_partitions(
    partitions: Mapping[str, Callable[[], Image.Image] | Image.Image],
    keys: Iterable[str],
    size: int,
    mode: str = "RGB",
) -> np.ndarray:
    """Load the images ``keys`` from a Kedro PartitionedDataset mapping into one (N, H, W, C) array."""
    keys = list(keys)
    missing = [key for key in keys if key not in partitions]
    if missing:
        raise KeyError(f"{len(missing)} images are missing from the image folder, e.g. {missing[:3]}")
    arrays = []
    for key in keys:
        loaded = partitions[key]
        image = loaded() if callable(loaded) else loaded
        arrays.append(to_array(image, size, mode))
    if not arrays:
        return np.zeros((0, size, size, channels_for(mode)), dtype=np.uint8)
    return np.stack(arrays)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) ``uint8`` → (N, C, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) float in [0, 1] → (N, H, W, C) ``uint8``."""
    return images.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def traditional_augmentation(
    image_size: int,
    rotation_degrees: float = 15.0,
    color_jitter: float = 0.1,
    crop_scale: tuple[float, float] = (0.85, 1.0),
) -> v2.Compose:
    """The ordinary-augmentation baseline: flips, small rotations, colour jitter, random resized crop."""
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomRotation(rotation_degrees),
            v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter),
            v2.RandomResizedCrop(image_size, scale=crop_scale, ratio=(0.95, 1.05), antialias=True),
        ]
    )


def augment_copy(image: np.ndarray, transform: v2.Compose, seed: int) -> np.ndarray:
    """One seeded random draw of ``transform`` applied to a (H, W, C) ``uint8`` image."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        augmented = transform(tensor)
    out = augmented.permute(1, 2, 0).numpy()
    return out[..., :1] if image.shape[-1] == 1 else out
