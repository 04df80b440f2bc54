"""Seeds and devices: the one place that decides randomness and where tensors live."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) and ask for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def torch_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator seeded with ``seed`` on ``device``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


def numpy_rng(seed: int) -> np.random.Generator:
    """A NumPy generator seeded with ``seed``."""
    return np.random.default_rng(int(seed))


def derive_seed(seed: int, *keys: object) -> int:
    """A stable child seed for a named sub-task (same inputs, same seed, across processes)."""
    sequence = np.random.SeedSequence([int(seed), *[_stable_int(k) for k in keys]])
    return int(sequence.generate_state(1)[0])


def _stable_int(key: object) -> int:
    import zlib

    return zlib.crc32(str(key).encode("utf-8"))


def pick_device(preferred: str | None = None) -> torch.device:
    """``preferred`` when given ("cpu", "cuda", "cuda:1"), else CUDA when present, else CPU."""
    if preferred and preferred != "auto":
        return torch.device(preferred)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype to use on ``device`` (bf16 on capable GPUs, fp16 on others, none on CPU)."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
