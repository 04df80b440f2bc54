"""Speed and quality of the configured fast DDPM sampler against diffusers' 1000-step DDPM ancestral sampler.

Usage (from the project root, after `kedro run --pipelines=data_preparation,generation`):

    .venv/bin/python scripts/benchmark_sampler.py [--env ENV] [--images 128] [--batch-size 32]
        [--sampler dpm_solver_sde|dpm_solver] [--steps N] [--retrain]

One run, one trained model (the latest `generator` in the catalog, or a fresh one trained with the
`generation` parameters when there is none or with --retrain), one batch size, one set of labels and seeds:

* images per second of the configured fast sampler (`generation.ddpm.sampling.sampler`: SDE-DPM-Solver++ by
  default, or DPM-Solver++; `generation.ddpm.sampling.steps` steps) and of the 1000-step DDPM ancestral sampler,
  both with the configured guidance scale, and their ratio;
* KID of each sampler's images against the real validation images (never test: the sampler is chosen here), on
  EfficientNet-Lite0 ImageNet features (the offline network; core.features), with real train against real
  validation as the floor;
* training steps per second, measured by a short training probe with the configured model and batch size.

The labels follow the class mix of the real validation split, so the KID compares like with like. Target: at least
30x faster at a KID no worse than 1.1x the 1000-step sampler's. Results go to stdout as a Markdown table and
to data/08_reporting/benchmarks/sampler_benchmark.json (or the environment's data folder).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from generative_augmentation.core.features import EfficientNetLite0Extractor
from generative_augmentation.core.generation import GenerationConfig, allocate_proportionally, fit_generator, plan_pool
from generative_augmentation.core.generative_metrics import kid
from generative_augmentation.core.generators import Generator
from generative_augmentation.core.images import ImageSpec, stack_images
from generative_augmentation.core.manifest import class_names
from generative_augmentation.core.runtime import derive_seed

ROOT = Path(__file__).resolve().parents[1]
TARGET_SPEEDUP = 30.0
TARGET_KID_RATIO = 1.1
FAST_SAMPLER_NAMES = {"dpm_solver": "DPM-Solver++", "dpm_solver_sde": "SDE-DPM-Solver++"}
logger = logging.getLogger("benchmark_sampler")


def load_inputs(env: str | None) -> tuple[dict[str, Any], Any, Path]:
    """The project's parameters, data catalog and data folder, through a Kedro session."""
    bootstrap_project(ROOT)
    session = KedroSession.create(project_path=ROOT, env=env)
    context = session.load_context()
    data_dir = Path(context.config_loader["globals"].get("data_dir", "data"))
    return context.params, context.catalog, data_dir if data_dir.is_absolute() else ROOT / data_dir


def trained_generator(
    catalog: Any, params: dict[str, Any], config: GenerationConfig, training_set: pd.DataFrame, retrain: bool
) -> tuple[Generator, str]:
    """The latest saved DDPM generator, or one trained now with the `generation` parameters."""
    if not retrain and catalog.exists("generator"):
        generator = catalog.load("generator")
        if generator.kind == "ddpm":
            return generator, "latest saved generator (06_models/generator)"
        logger.warning("The saved generator is not a DDPM; training one")
    manifest, images = catalog.load("manifest"), catalog.load("real_images")
    image = ImageSpec.parse(params["image"])
    return fit_generator(
        training_set, images, class_names(manifest), config, image, params["seed"], None
    ), "trained by this run"


def training_speed(
    catalog: Any, params: dict[str, Any], config: GenerationConfig, training_set: pd.DataFrame, steps: int
) -> float:
    """Steps per second of a short, checkpoint-free training run with the generator's configuration."""
    probe = config.replace(settings=config.settings.replace(train_steps=steps, warmup_steps=1))
    manifest, images = catalog.load("manifest"), catalog.load("real_images")
    generator = fit_generator(
        training_set,
        images,
        class_names(manifest),
        probe,
        ImageSpec.parse(params["image"]),
        params["seed"],
        None,
        progress=False,
    )
    return float(generator.training["steps_per_second"])


def benchmark_plan(
    generator: Generator, manifest: pd.DataFrame, training_set: pd.DataFrame, count: int, seed: int
) -> pd.DataFrame:
    """``count`` rows with labels in the proportions of the real validation split (and clusters in their train
    proportions), each with its own seed."""
    per_class = allocate_proportionally(count, manifest.loc[manifest["split"] == "val"].groupby("label").size())
    rows = []
    for label, amount in per_class.items():
        clusters = training_set[training_set["label"] == label].groupby("cluster_index").size()
        shares = (
            allocate_proportionally(int(amount), clusters) if generator.num_clusters else pd.Series({0: int(amount)})
        )
        rows += [
            {"label": int(label), "cluster_index": int(cluster)}
            for cluster, share in shares.items()
            for _ in range(share)
        ]
    plan = pd.DataFrame(rows)
    plan["seed"] = [derive_seed(seed, "sampler-benchmark", index) for index in range(len(plan))]
    return plan.assign(**generator.sampling_record(generator.settings, generator.class_names[0]))


def time_sampler(
    generator: Generator, plan: pd.DataFrame, sampler: str, steps: int, guidance: float
) -> tuple[np.ndarray, float]:
    """The images of one sampler and its wall time in seconds."""
    started = time.perf_counter()
    images = generator.generate(plan.assign(sampler=sampler, steps=steps, guidance_scale=guidance))
    return images, time.perf_counter() - started


def markdown(result: dict[str, Any]) -> str:
    """The results as a Markdown table."""
    reference = result["samplers"]["ddpm_1000"]["images_per_second"]
    lines = [
        "| sampler | steps | seconds | images/s | speed-up vs DDPM 1000 | KID x 1000 (mean ± std) | KID / DDPM 1000 |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {row['name']} | {row['steps']} | {row['seconds']:.1f} | {row['images_per_second']:.3f} | "
            f"{row['images_per_second'] / reference:.1f}x | {1000 * row['kid_mean']:.2f} ± "
            f"{1000 * row['kid_std']:.2f} | {row['kid_ratio']:.2f} |"
            for row in result["samplers"].values()
        ],
        f"| real train vs real validation (floor) | – | – | – | – | {1000 * result['kid_real_train_mean']:.2f} ± "
        f"{1000 * result['kid_real_train_std']:.2f} | – |",
        "",
        f"Configured sampler: speed-up {result['speedup']:.1f}x (target ≥ {TARGET_SPEEDUP:.0f}x), KID ratio "
        f"{result['kid_ratio']:.2f} (target ≤ {TARGET_KID_RATIO}); target met: {result['target_met']}. Training "
        f"{result['train_steps_per_second']:.2f} steps/s at batch {result['train_batch_size']}; {result['images']} "
        f"images per sampler, batch {result['batch_size']}, guidance {result['guidance_scale']}, {result['device']}, "
        f"{result['torch_threads']} torch threads.",
    ]
    return "\n".join(lines)


def parse_arguments() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default=None, help="Kedro environment (default: the project's default study)")
    parser.add_argument("--images", type=int, default=128, help="images per sampler")
    parser.add_argument("--batch-size", type=int, default=32, help="sampling batch size, the same for both")
    parser.add_argument("--sampler", default=None, help="dpm_solver_sde | dpm_solver (default: the parameter)")
    parser.add_argument("--compare", default="dpm_solver,dpm_solver_sde", help="more fast samplers to measure")
    parser.add_argument("--steps", type=int, default=None, help="fast sampler steps (default: the parameter)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the parameter)")
    parser.add_argument("--train-probe-steps", type=int, default=100, help="steps of the training-speed probe")
    parser.add_argument("--feature-size", type=int, default=224, help="EfficientNet-Lite0 input size")
    parser.add_argument(
        "--kid-subsets", type=int, default=100, help="KID subsets, each of all the images (at most 1,000) of each set"
    )
    parser.add_argument("--retrain", action="store_true", help="train a fresh generator even if one is saved")
    parser.add_argument("--output", default=None, help="JSON path (default: <data_dir>/08_reporting/benchmarks/)")
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    params, catalog, data_dir = load_inputs(args.env)
    config = GenerationConfig.parse({**params["generation"], "generator": "ddpm"})
    sampling = config.settings.sampling
    steps = args.steps or sampling.steps
    fast_sampler = args.sampler or sampling.sampler
    compared = [name for name in args.compare.split(",") if name and name != fast_sampler]
    for name in [fast_sampler, *compared]:
        if name not in FAST_SAMPLER_NAMES:
            raise SystemExit(
                f"--sampler, --compare and generation.ddpm.sampling.sampler take fast samplers "
                f"({', '.join(FAST_SAMPLER_NAMES)}), got {name!r}"
            )
    guidance = args.guidance if args.guidance is not None else sampling.guidance_scale
    manifest, images = catalog.load("manifest"), catalog.load("real_images")
    training_set, _ = plan_pool(manifest, catalog.load("clusters"), config, params["seed"])
    generator, origin = trained_generator(catalog, params, config, training_set, args.retrain)
    generator.settings = generator.settings.replace(
        sampling=generator.settings.sampling.replace(batch_size=args.batch_size)
    )
    plan = benchmark_plan(generator, manifest, training_set, args.images, params["seed"])
    ancestral_steps = generator.settings.num_train_timesteps
    runs = {
        "fast": (fast_sampler, steps, f"{FAST_SAMPLER_NAMES[fast_sampler]} ({steps} steps), configured"),
        **{name: (name, steps, f"{FAST_SAMPLER_NAMES[name]} ({steps} steps)") for name in compared},
        "ddpm_1000": ("ddpm", ancestral_steps, f"DDPM ancestral ({ancestral_steps} steps)"),
    }
    # Quality against real VALIDATION images: the sampler is chosen on them; test images stay unseen upstream.
    extractor = EfficientNetLite0Extractor(image_size=args.feature_size)
    image = generator.image
    real = {
        split: extractor.embed(stack_images(images, manifest.loc[manifest["split"] == split, "image_key"], image))
        for split in ("train", "val")
    }
    samplers = {}
    for key, (sampler, sampler_steps, name) in runs.items():
        logger.info("Sampling %d images with %s", len(plan), name)
        fake, seconds = time_sampler(generator, plan, sampler, sampler_steps, guidance)
        kid_mean, kid_std = kid(
            real["val"], extractor.embed(fake), subset_size=None, subsets=args.kid_subsets, seed=params["seed"]
        )
        samplers[key] = {
            "name": name,
            "sampler": sampler,
            "steps": sampler_steps,
            "seconds": round(seconds, 2),
            "images_per_second": len(plan) / seconds,
            "kid_mean": kid_mean,
            "kid_std": kid_std,
        }
        logger.info("%s: %.1f s, KID %.5f ± %.5f", name, seconds, kid_mean, kid_std)
    for row in samplers.values():
        row["kid_ratio"] = row["kid_mean"] / max(samplers["ddpm_1000"]["kid_mean"], 1e-12)
    floor_mean, floor_std = kid(
        real["val"], real["train"], subset_size=None, subsets=args.kid_subsets, seed=params["seed"]
    )
    speedup = samplers["fast"]["images_per_second"] / samplers["ddpm_1000"]["images_per_second"]
    kid_ratio = samplers["fast"]["kid_ratio"]
    result = {
        "generator": origin,
        "images": len(plan),
        "batch_size": args.batch_size,
        "guidance_scale": guidance,
        "samplers": samplers,
        "speedup": speedup,
        "kid_ratio": kid_ratio,
        "reference": "real validation images",
        "kid_real_train_mean": floor_mean,
        "kid_real_train_std": floor_std,
        "target_met": bool(speedup >= TARGET_SPEEDUP and kid_ratio <= TARGET_KID_RATIO),
        "train_steps_per_second": training_speed(catalog, params, config, training_set, args.train_probe_steps),
        "train_batch_size": config.settings.batch_size,
        "model": generator.settings.to_dict(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)",
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "feature_size": args.feature_size,
    }
    output = Path(args.output) if args.output else data_dir / "08_reporting" / "benchmarks" / "sampler_benchmark.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    print(markdown(result))
    print(f"\nWritten to {output}")


if __name__ == "__main__":
    main()
