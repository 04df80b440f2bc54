"""Speed and quality of the configured fast DDPM sampler against diffusers' 1000-step DDPM ancestral sampler.

Usage (from the project root, after `kedro run --pipelines=data_preparation,generation`):

    .venv/bin/python scripts/benchmark_sampler.py [--env ENV] [--images 128] [--batch-size 32]
        [--sampler dpm_solver_sde|dpm_solver] [--steps N] [--retrain]

One run, one trained model (the latest `generator` in the catalog, or a fresh one trained with the
`generation` parameters when there is none or with --retrain), one batch size, one set of labels and seeds:

* images per second of the configured fast sampler (`generation.ddpm.sampling.sampler`: SDE-DPM-Solver++ by
  default, or DPM-Solver++; `generation.ddpm.sampling.steps` steps) and of the 1000-step DDPM ancestral sampler,
  both with the configured guidance scale, and their ratio;
* KID of each sampler's images against the real test images, on EfficientNet-Lite0 ImageNet features (the
  offline network; core.features), with real train against real test as the floor;
* training steps per second, measured by a short training probe with the configured model and batch size.

The labels follow the class mix of the real test split, so the KID compares like with like. Target: at least
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

from generative_augmentation.core.ddpm import DDPMConfig, sample_ddpm, train_ddpm
from generative_augmentation.core.features import EfficientNetLite0Extractor
from generative_augmentation.core.generative_metrics import kid
from generative_augmentation.core.images import stack_partitions
from generative_augmentation.core.runtime import derive_seed
from generative_augmentation.pipelines.generation.nodes import allocate_proportionally, plan_generation, train_generator

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


def training_set_for(catalog: Any, params: dict[str, Any]) -> pd.DataFrame:
    """The generator's real train rows, as the generation pipeline selects them."""
    manifest, clusters = catalog.load("manifest"), catalog.load("clusters")
    training_set, _ = plan_generation(manifest, clusters, params["generation"], params["seed"])
    return training_set


def trained_generator(
    catalog: Any, params: dict[str, Any], training_set: pd.DataFrame, retrain: bool
) -> tuple[dict[str, Any], str]:
    """The latest saved DDPM generator, or one trained now with the `generation` parameters."""
    if not retrain and catalog.exists("generator"):
        generator = catalog.load("generator")
        if generator["config"].get("generator") == "ddpm":
            return generator, "latest saved generator (06_models/generator)"
        logger.warning("The saved generator is not a DDPM; training one")
    generation = {**params["generation"], "generator": "ddpm", "checkpoint_dir": None}
    generator, _ = train_generator(
        training_set, catalog.load("real_images"), generation, params["image"], params["seed"]
    )
    return generator, "trained by this run"


def training_speed(
    catalog: Any, params: dict[str, Any], training_set: pd.DataFrame, config: DDPMConfig, steps: int
) -> float:
    """Steps per second of a short, checkpoint-free training run with the generator's configuration."""
    probe = DDPMConfig.from_dict({**config.to_dict(), "train_steps": steps, "warmup_steps": 1})
    images = stack_partitions(
        catalog.load("real_images"), training_set["image_key"], config.image_size, params["image"]["mode"]
    )
    clusters = training_set["cluster_index"].to_numpy(copy=True) if config.num_clusters else None
    result = train_ddpm(images, training_set["label"].to_numpy(copy=True), probe, clusters, progress=False)
    return result.steps_per_second


def benchmark_conditions(
    manifest: pd.DataFrame, training_set: pd.DataFrame, config: DDPMConfig, count: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """``count`` labels in the proportions of the real test split (and clusters in their train proportions)."""
    test_counts = manifest.loc[manifest["split"] == "test"].groupby("label").size()
    per_class = allocate_proportionally(count, test_counts)
    labels = np.repeat(per_class.index.to_numpy(), per_class.to_numpy())
    if config.num_clusters == 0:
        return labels, None
    clusters = []
    for label, amount in per_class.items():
        sizes = training_set[training_set["label"] == label].groupby("cluster_index").size()
        shares = allocate_proportionally(int(amount), sizes)
        clusters.append(np.repeat(shares.index.to_numpy(), shares.to_numpy()))
    return labels, np.concatenate(clusters)


def time_sampler(generator: dict[str, Any], labels: np.ndarray, clusters: np.ndarray | None, seeds: np.ndarray,
                 sampler: str, steps: int, guidance: float, batch_size: int) -> tuple[np.ndarray, float]:  # fmt: skip
    """The images of one sampler and its wall time in seconds."""
    config = DDPMConfig.from_dict(generator["config"]["ddpm"])
    started = time.perf_counter()
    images = sample_ddpm(
        generator["state_dict"], config, labels, seeds, clusters=clusters, num_inference_steps=steps,
        guidance_scale=guidance, batch_size=batch_size, sampler=sampler,
    )  # fmt: skip
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
        f"| real train vs real test (floor) | – | – | – | – | {1000 * result['kid_real_train_mean']:.2f} ± "
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
    parser.add_argument("--env", default=None, help="Kedro environment (default: base + local)")
    parser.add_argument("--images", type=int, default=128, help="images per sampler")
    parser.add_argument("--batch-size", type=int, default=32, help="sampling batch size, the same for both")
    parser.add_argument("--sampler", default=None, help="dpm_solver_sde | dpm_solver (default: the parameter)")
    parser.add_argument("--compare", default="dpm_solver,dpm_solver_sde", help="more fast samplers to measure")
    parser.add_argument("--steps", type=int, default=None, help="fast sampler steps (default: the parameter)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the parameter)")
    parser.add_argument("--train-probe-steps", type=int, default=100, help="steps of the training-speed probe")
    parser.add_argument("--feature-size", type=int, default=224, help="EfficientNet-Lite0 input size")
    parser.add_argument("--retrain", action="store_true", help="train a fresh generator even if one is saved")
    parser.add_argument("--output", default=None, help="JSON path (default: <data_dir>/08_reporting/benchmarks/)")
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    params, catalog, data_dir = load_inputs(args.env)
    sampling = params["generation"]["ddpm"].get("sampling") or {}
    steps = args.steps or int(sampling.get("steps", 20))
    fast_sampler = args.sampler or str(sampling.get("sampler", "dpm_solver"))
    compared = [name for name in args.compare.split(",") if name and name != fast_sampler]
    for name in [fast_sampler, *compared]:
        if name not in FAST_SAMPLER_NAMES:
            raise SystemExit(f"--sampler, --compare and generation.ddpm.sampling.sampler take fast samplers "
                             f"({', '.join(FAST_SAMPLER_NAMES)}), got {name!r}")  # fmt: skip
    guidance = args.guidance if args.guidance is not None else float(sampling.get("guidance_scale", 2.0))
    training_set = training_set_for(catalog, params)
    generator, origin = trained_generator(catalog, params, training_set, args.retrain)
    config = DDPMConfig.from_dict(generator["config"]["ddpm"])
    if config.num_clusters == 0:
        training_set = training_set.assign(cluster=-1, cluster_index=0)
    manifest, images = catalog.load("manifest"), catalog.load("real_images")
    labels, clusters = benchmark_conditions(manifest, training_set, config, args.images)
    seeds = np.array([derive_seed(params["seed"], "sampler-benchmark", index) for index in range(args.images)])

    runs = {
        "fast": (fast_sampler, steps, f"{FAST_SAMPLER_NAMES[fast_sampler]} ({steps} steps), configured"),
        **{name: (name, steps, f"{FAST_SAMPLER_NAMES[name]} ({steps} steps)") for name in compared},
        "ddpm_1000": ("ddpm", config.num_train_timesteps, f"DDPM ancestral ({config.num_train_timesteps} steps)"),
    }
    extractor = EfficientNetLite0Extractor(image_size=args.feature_size)
    size, mode = int(params["image"]["size"]), params["image"]["mode"]
    split_keys = {split: manifest.loc[manifest["split"] == split, "image_key"] for split in ("train", "test")}
    real = {split: extractor.embed(stack_partitions(images, keys, size, mode)) for split, keys in split_keys.items()}
    samplers = {}
    for key, (sampler, sampler_steps, name) in runs.items():
        logger.info("Sampling %d images with %s", args.images, name)
        fake, seconds = time_sampler(
            generator, labels, clusters, seeds, sampler, sampler_steps, guidance, args.batch_size
        )
        kid_mean, kid_std = kid(real["test"], extractor.embed(fake), seed=params["seed"])
        samplers[key] = {
            "name": name, "sampler": sampler, "steps": sampler_steps, "seconds": round(seconds, 2),
            "images_per_second": args.images / seconds, "kid_mean": kid_mean, "kid_std": kid_std,
        }  # fmt: skip
        logger.info("%s: %.1f s, KID %.5f ± %.5f", name, seconds, kid_mean, kid_std)
    for row in samplers.values():
        row["kid_ratio"] = row["kid_mean"] / max(samplers["ddpm_1000"]["kid_mean"], 1e-12)
    floor_mean, floor_std = kid(real["test"], real["train"], seed=params["seed"])
    speedup = samplers["fast"]["images_per_second"] / samplers["ddpm_1000"]["images_per_second"]
    kid_ratio = samplers["fast"]["kid_ratio"]
    result = {
        "generator": origin, "images": args.images, "batch_size": args.batch_size, "guidance_scale": guidance,
        "samplers": samplers, "speedup": speedup, "kid_ratio": kid_ratio,
        "kid_real_train_mean": floor_mean, "kid_real_train_std": floor_std,
        "target_met": bool(speedup >= TARGET_SPEEDUP and kid_ratio <= TARGET_KID_RATIO),
        "train_steps_per_second": training_speed(catalog, params, training_set, config, args.train_probe_steps),
        "train_batch_size": config.batch_size, "model": config.to_dict(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)",
        "torch_threads": torch.get_num_threads(), "machine": platform.machine(), "feature_size": args.feature_size,
    }  # fmt: skip
    output = Path(args.output) if args.output else data_dir / "08_reporting" / "benchmarks" / "sampler_benchmark.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    print(markdown(result))
    print(f"\nWritten to {output}")


if __name__ == "__main__":
    main()
