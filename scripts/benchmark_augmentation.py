"""Ordinary augmentation of a training batch: torchvision v2 called once per image against the batched tensor version
the classifiers use (``AugmentationConfig.apply``), on real RetinaMNIST train images, in one process.

    .venv/bin/python scripts/benchmark_augmentation.py [--batches 20] [--batch-size 128] [--grid out.png]

Prints seconds per batch for each and their ratio (one torch thread, as each study classifier trains), and the mean
and standard deviation of the augmented pixels for each, to show both give images of the same make-up. ``--grid``
writes real images beside both augmentations for a look.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from generative_augmentation.core.images import AugmentationConfig, to_unit_tensor

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--grid", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with np.load(ROOT / "data/01_raw/retinamnist.npz") as archive:
        images = to_unit_tensor(archive["train_images"])
    config, size = AugmentationConfig(), images.shape[-1]
    per_image = config.transform(size)
    batches = [
        images[torch.randperm(len(images), generator=torch.Generator().manual_seed(i))[: args.batch_size]]
        for i in range(args.batches)
    ]
    torch.manual_seed(0)
    started = time.perf_counter()
    reference = [torch.stack([per_image(image) for image in batch]) for batch in batches]
    one_by_one = (time.perf_counter() - started) / args.batches
    torch.manual_seed(0)
    started = time.perf_counter()
    batched = [config.apply(batch) for batch in batches]
    at_once = (time.perf_counter() - started) / args.batches
    print(f"| implementation | s per batch of {args.batch_size} | pixel mean | pixel std |")
    print("|---|---:|---:|---:|")
    for name, seconds, out in (
        ("torchvision v2, one call per image", one_by_one, reference),
        ("batched (`AugmentationConfig.apply`)", at_once, batched),
    ):
        pixels = torch.cat(out)
        print(f"| {name} | {seconds:.4f} | {pixels.mean():.4f} | {pixels.std():.4f} |")
    original = torch.cat(batches)
    print(f"| no augmentation | – | {original.mean():.4f} | {original.std():.4f} |")
    print(f"\nspeed-up: {one_by_one / at_once:.1f}x")
    if args.grid is not None:
        from torchvision.utils import save_image

        rows = torch.cat([batches[0][:12], reference[0][:12], batched[0][:12]])
        save_image(torch.nn.functional.interpolate(rows, scale_factor=4), args.grid, nrow=12)
        print(f"grid (real / torchvision / batched): {args.grid}")


if __name__ == "__main__":
    main()
