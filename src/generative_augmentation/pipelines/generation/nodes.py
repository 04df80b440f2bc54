"""Nodes of the generation pipeline: plan the pool, fit the generator on real train images, sample, report.

Every check of the ``generation`` parameters against the data runs in :func:`plan_generation`, the first
node, so a bad parameter fails in seconds instead of after training. The plan fixes every synthetic image
in advance (class, cluster, seed, prompt, source image, sampler settings), so one row of
``synthetic_manifest`` is enough to regenerate its image with :func:`generate_images`.

The one node that touches the file system directly is :func:`train_generator`: it writes mid-training
checkpoints under ``generation.checkpoint_dir`` so an interrupted run resumes where it stopped. A Kedro
dataset is saved only when a node returns, which is too late for that.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
from matplotlib.figure import Figure
from PIL import Image

from generative_augmentation.core.checkpoints import METADATA_FILE, config_differences, latest_checkpoint
from generative_augmentation.core.ddpm import RESUMABLE_FIELDS as DDPM_RESUMABLE_FIELDS
from generative_augmentation.core.ddpm import SAMPLERS as DDPM_SAMPLERS
from generative_augmentation.core.ddpm import DDPMConfig, sample_ddpm, train_ddpm
from generative_augmentation.core.images import array_to_pil, channels_for, stack_partitions, to_array
from generative_augmentation.core.plots import image_grid, loss_curve
from generative_augmentation.core.runtime import derive_seed, numpy_rng
from generative_augmentation.core.stable_diffusion import (
    LORA_ADAPTER_NAME,
    LoraTrainingConfig,
    _is_local_source,  # the same local-folder-or-hub-id rule as load_stable_diffusion
    _peft_lora_config,  # the adapter shape train_lora used, to attach the saved weights identically
    generate_image_to_image,
    generate_text_to_image,
    load_stable_diffusion,
    train_lora,
    validate_pipeline_folder,
)
from generative_augmentation.core.stable_diffusion import RESUMABLE_FIELDS as LORA_RESUMABLE_FIELDS
from generative_augmentation.pipelines.evaluation.nodes import class_names_of

logger = logging.getLogger(__name__)

GENERATORS = ("ddpm", "stable_diffusion")
SD_MODES = ("text_to_image", "image_to_image")
SD_SAMPLERS = ("dpm_solver", "default")
CLUSTER_MODES = ("auto", "true", "false")
NO_CLUSTER = -1
MANIFEST_COLUMNS = [
    "image_id", "intended_class", "label", "generator", "seed", "cluster", "prompt", "path", "image_key",
    "mode", "sampler", "steps", "guidance_scale", "strength", "negative_prompt", "source_image_id",
    "source_image_key", "cluster_index",
]  # fmt: skip
SETTING_COLUMNS = ["sampler", "steps", "guidance_scale", "strength"]


# --- node 1: plan ------------------------------------------------------------------------------------------------
def plan_generation(
    manifest: pd.DataFrame, clusters: pd.DataFrame | None, generation: dict[str, Any], seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check the parameters against the data; return the generator's training set and the pool plan.

    The training set is the real TRAIN split only (with each image's cluster when clusters are used); the
    plan has one row per synthetic image to generate, with its seed derived from ``seed``.
    """
    generator = _choice(generation.get("generator", "ddpm"), GENERATORS, "generation.generator")
    class_names = class_names_of(manifest)
    prompts: dict[str, str] = {}
    if generator == "stable_diffusion":
        prompts = _class_prompts(generation.get("stable_diffusion") or {}, class_names)
        _check_stable_diffusion(generation.get("stable_diffusion") or {})
    training_set = generator_training_set(manifest, clusters, generation.get("use_clusters", "auto"))
    counts = training_set.groupby("class_name").size().reindex(class_names, fill_value=0)
    targets = target_classes(generation.get("classes"), counts)
    _check_train_counts(counts, targets, int(generation.get("min_train_images_per_class", 1)))
    sizes = pool_sizes(counts, targets, generation.get("pool") or {})
    plan = _pool_plan(training_set, sizes, _sampling_settings(generation), prompts, seed)
    logger.info("Planned %d synthetic images: %s", len(plan), {name: n for name, n in sizes.items() if n})
    return training_set, plan


def generator_training_set(manifest: pd.DataFrame, clusters: pd.DataFrame | None, use_clusters: Any) -> pd.DataFrame:
    """The real train rows (image_id, image_key, label, class_name, cluster, cluster_index), label order.

    ``cluster`` is the feature_clustering cluster id (-1 without clusters); ``cluster_index`` renumbers the
    clusters of each class 0..K-1 for the generator's (class, cluster) conditioning.
    """
    train = manifest.loc[manifest["split"] == "train", ["image_id", "image_key", "label", "class_name"]]
    if train.empty:
        raise ValueError("The manifest has no train images: the generator is fitted on the train split only")
    train = train.sort_values(["label", "image_id"]).reset_index(drop=True)
    if not _uses_clusters(clusters, use_clusters):
        return train.assign(cluster=NO_CLUSTER, cluster_index=0)
    return _attach_clusters(train, clusters)


def target_classes(classes: list[str] | str | None, counts: pd.Series) -> list[str]:
    """The classes to generate, in label order: ``generation.classes``, or every class below the largest."""
    if classes is None:
        largest = int(counts.max())
        targets = [str(name) for name, count in counts.items() if count < largest]
        if not targets:
            raise ValueError(
                f"generation.classes is null (every class below the largest train count), but every class has "
                f"{largest} train images: list the classes to generate in generation.classes"
            )
        return targets
    requested = [classes] if isinstance(classes, str) else [str(name) for name in classes]
    unknown = [name for name in requested if name not in counts.index]
    if unknown:
        raise ValueError(
            f"generation.classes names {unknown}, which the data does not have; known class names: {list(counts.index)}"
        )
    if not requested:
        raise ValueError("generation.classes is an empty list: name at least one class, or null for the default")
    return [name for name in counts.index if name in requested]


def pool_sizes(counts: pd.Series, targets: list[str], pool: dict[str, Any]) -> dict[str, int]:
    """Synthetic images per target class: ``multiple`` x train count (or the gap to the largest class when
    ``balance_to_largest``), times ``oversample``, rounded up. With ``cover_balanced`` (default) a class never
    gets fewer than its gap to the largest class, so the evaluation's ``balanced`` scenario can draw from it."""
    oversample = _number(pool.get("oversample", 1.0), "generation.pool.oversample")
    if oversample < 1:
        raise ValueError(f"generation.pool.oversample must be at least 1 (got {oversample}): it only adds images")
    if pool.get("balance_to_largest"):
        base = {name: int(counts.max() - counts[name]) for name in targets}
        source = "generation.pool.balance_to_largest (the target classes already have the largest train count)"
    else:
        multiple = _number(pool.get("multiple", 4), "generation.pool.multiple")
        if multiple <= 0:
            raise ValueError(f"generation.pool.multiple must be positive (got {multiple}): a pool of zero images")
        base = {name: multiple * int(counts[name]) for name in targets}
        if pool.get("cover_balanced", True):
            base = {name: max(amount, int(counts.max() - counts[name])) for name, amount in base.items()}
        source = "generation.pool.multiple"
    sizes = {name: math.ceil(round(amount * oversample, 6)) for name, amount in base.items()}
    if sum(sizes.values()) == 0:
        raise ValueError(f"The synthetic pool would hold zero images: check {source} and generation.classes")
    return sizes


def allocate_proportionally(total: int, weights: pd.Series) -> pd.Series:
    """Split ``total`` into integer shares proportional to ``weights`` (largest-remainder rounding)."""
    quotas = weights.to_numpy(dtype=float) / float(weights.sum()) * total
    shares = np.floor(quotas).astype(int)
    order = np.argsort(-(quotas - shares), kind="stable")
    shares[order[: total - int(shares.sum())]] += 1
    return pd.Series(shares, index=weights.index)


# --- node 2: train -----------------------------------------------------------------------------------------------
def train_generator(
    training_set: pd.DataFrame,
    real_images: dict[str, Any],
    generation: dict[str, Any],
    image: dict[str, Any],
    seed: int,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Fit the configured generator on the real train images; returns its weights and the loss per step.

    Checkpoints go to ``generation.checkpoint_dir`` every ``checkpoint_every`` steps; a rerun after an
    interruption resumes from the latest one and refuses a changed configuration.
    """
    images = stack_partitions(real_images, training_set["image_key"], int(image["size"]), str(image["mode"]))
    run_dir = _checkpoint_run_dir(generation, training_set)
    if generation.get("generator", "ddpm") == "ddpm":
        weights, losses = _train_ddpm(training_set, images, generation, image, seed, run_dir)
    else:
        weights, losses = _train_lora(training_set, images, generation, seed, run_dir)
    if run_dir is not None and not generation.get("keep_checkpoints", False):
        shutil.rmtree(run_dir, ignore_errors=True)
    log = pd.DataFrame({"step": np.arange(1, len(losses) + 1), "loss": np.asarray(losses, dtype=float)})
    return weights, log


def ddpm_config(training_set: pd.DataFrame, generation: dict[str, Any], image: dict[str, Any], seed: int) -> DDPMConfig:
    """The DDPM config: ``generation.ddpm`` settings plus what the data fixes (size, channels, classes)."""
    settings = {key: value for key, value in (generation.get("ddpm") or {}).items() if key != "sampling"}
    uses_clusters = bool((training_set["cluster"] != NO_CLUSTER).any())
    derived = {
        "image_size": int(image["size"]),
        "channels": channels_for(str(image["mode"])),
        "num_classes": int(training_set["label"].max()) + 1,
        "num_clusters": int(training_set["cluster_index"].max()) + 1 if uses_clusters else 0,
        "seed": derive_seed(seed, "generation", "ddpm"),
        "min_images_per_class": 1,
    }
    fixed = sorted(set(settings) & set(derived))
    if fixed:
        raise ValueError(
            f"generation.ddpm must not set {fixed}: they come from image.size, image.mode, the data and seed"
        )
    try:
        return DDPMConfig.from_dict({**settings, **derived})
    except (TypeError, ValueError) as error:
        raise ValueError(f"Invalid generation.ddpm parameters (image.size={image['size']}): {error}") from error


# --- node 3: generate --------------------------------------------------------------------------------------------
def generate_synthetic_pool(
    generator: dict[str, Any],
    plan: pd.DataFrame,
    real_images: dict[str, Any],
    generation: dict[str, Any],
    image: dict[str, Any],
) -> tuple[dict[str, Image.Image], pd.DataFrame]:
    """Generate every planned image; returns PNG partitions ``<class_name>/<image_id>`` and the manifest."""
    started = time.perf_counter()
    arrays = generate_images(generator, plan, real_images, generation, image)
    elapsed = time.perf_counter() - started
    logger.info("Generated %d images in %.1fs (%.2f images/s)", len(arrays), elapsed, len(arrays) / max(elapsed, 1e-9))
    manifest = plan[MANIFEST_COLUMNS].reset_index(drop=True)
    partitions = {key: array_to_pil(array) for key, array in zip(manifest["image_key"], arrays, strict=True)}
    return partitions, manifest


def generate_images(
    generator: dict[str, Any],
    plan: pd.DataFrame,
    real_images: dict[str, Any] | None,
    generation: dict[str, Any],
    image: dict[str, Any],
) -> np.ndarray:
    """The uint8 images (N, H, W, C) of ``plan`` rows (a pool plan or rows of ``synthetic_manifest``).

    Image ``i`` depends only on its row (seed, class, cluster, prompt, source image, sampler settings), so
    passing one manifest row regenerates that image (within one grey level: batched float arithmetic).
    """
    arrays = np.zeros((len(plan), int(image["size"]), int(image["size"]), channels_for(str(image["mode"]))), np.uint8)
    kind = generator["config"].get("generator")
    if kind not in GENERATORS:
        raise ValueError(f"The generator weights have an unknown generator {kind!r}; expected one of {GENERATORS}")
    pipeline = _stable_diffusion_with_lora(generator, generation) if kind == "stable_diffusion" else None
    rows = plan.reset_index(drop=True)
    for _, group in rows.groupby(SETTING_COLUMNS, dropna=False, sort=False):
        if kind == "ddpm":
            batch = _sample_ddpm_rows(generator, group, generation)
        else:
            batch = _sample_sd_rows(pipeline, group, real_images, generation, image)
        arrays[group.index] = np.stack([to_array(item, int(image["size"]), str(image["mode"])) for item in batch])
    return arrays


# --- node 4: report ----------------------------------------------------------------------------------------------
def report_generation(
    generator: dict[str, Any],
    training_log: pd.DataFrame,
    synthetic_manifest: pd.DataFrame,
    synthetic_images: dict[str, Any],
    training_set: pd.DataFrame,
    real_images: dict[str, Any],
    generation: dict[str, Any],
    image: dict[str, Any],
) -> tuple[dict[str, Figure], Figure, dict[str, Any], pd.DataFrame]:
    """Sample grids (real beside synthetic, one per class and an overview), the loss curve, MLflow metrics
    and the pool summary per class."""
    per_row = int((generation.get("report") or {}).get("images_per_row", 8))
    size, mode = int(image["size"]), str(image["mode"])
    real = {name: rows.head(per_row) for name, rows in training_set.groupby("class_name", sort=False)}
    fake = {name: rows.head(per_row) for name, rows in synthetic_manifest.groupby("intended_class", sort=False)}
    real_arrays = {name: stack_partitions(real_images, rows["image_key"], size, mode) for name, rows in real.items()}
    fake_arrays = {
        name: stack_partitions(synthetic_images, rows["image_key"], size, mode) for name, rows in fake.items()
    }
    grids = {f"{name}.png": _class_grid(name, real_arrays[name], fake_arrays[name], per_row) for name in fake_arrays}
    grids["overview.png"] = _overview_grid(real_arrays, fake_arrays, generator["config"].get("generator", ""), per_row)
    curve = loss_curve(training_log["loss"].to_numpy(), title=f"{generator['config'].get('generator')} training loss")
    summary = _pool_summary(training_set, synthetic_manifest)
    return grids, curve, _generation_metrics(generator, training_log, summary), summary


# --- planning helpers --------------------------------------------------------------------------------------------
def _choice(value: Any, allowed: tuple[str, ...], parameter: str) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if text not in allowed:
        raise ValueError(f"{parameter} must be one of {list(allowed)}; got {value!r}")
    return text


def _number(value: Any, parameter: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{parameter} must be a number; got {value!r}")
    return float(value)


def _uses_clusters(clusters: pd.DataFrame | None, use_clusters: Any) -> bool:
    mode = _choice(use_clusters, CLUSTER_MODES, "generation.use_clusters")
    present = clusters is not None and len(clusters) > 0
    if mode == "true" and not present:
        raise ValueError(
            "generation.use_clusters is true but the `clusters` dataset (04_feature/clusters.parquet) is absent: "
            "run `kedro run --pipeline=feature_clustering` first, or set generation.use_clusters to auto or false"
        )
    return mode != "false" and present


def _attach_clusters(train: pd.DataFrame, clusters: pd.DataFrame) -> pd.DataFrame:
    assigned = clusters[["image_id", "cluster"]].drop_duplicates("image_id")
    merged = train.merge(assigned, on="image_id", how="left")
    missing = merged.loc[merged["cluster"].isna(), "image_id"].tolist()
    if missing:
        raise ValueError(
            f"The `clusters` dataset has no cluster for {len(missing)} train images (e.g. {missing[:3]}): it is out "
            "of date; re-run the feature_clustering pipeline or set generation.use_clusters: false"
        )
    merged["cluster"] = merged["cluster"].astype(int)
    dense = merged.groupby("class_name")["cluster"].rank(method="dense")
    merged["cluster_index"] = dense.astype(int) - 1
    logger.info("Conditioning on (class, cluster): %d clusters in all", merged.groupby(["label", "cluster"]).ngroups)
    return merged


def _check_train_counts(counts: pd.Series, targets: list[str], minimum: int) -> None:
    for name in targets:
        if counts[name] < minimum:
            raise ValueError(
                f"Class {name!r} has {counts[name]} train images, fewer than generation.min_train_images_per_class "
                f"({minimum}): too few to train a generator on. Leave it out of generation.classes or lower the minimum"
            )


def _class_prompts(sd: dict[str, Any], class_names: list[str]) -> dict[str, str]:
    """One prompt per class: ``prompts[class]`` or ``prompt_template`` filled with the class name."""
    prompts = {str(name): str(prompt) for name, prompt in (sd.get("prompts") or {}).items()}
    unknown = sorted(set(prompts) - set(class_names))
    if unknown:
        raise ValueError(
            f"generation.stable_diffusion.prompts has prompts for {unknown}, which the data does not have; "
            f"known class names: {class_names}"
        )
    template = sd.get("prompt_template") or ""
    missing = [name for name in class_names if name not in prompts and not template]
    if missing:
        raise ValueError(
            f"generation.stable_diffusion.prompts has no prompt for {missing} and "
            "generation.stable_diffusion.prompt_template is empty"
        )
    try:
        return {name: prompts.get(name) or template.format(class_name=name.replace("_", " ")) for name in class_names}
    except (KeyError, IndexError) as error:
        raise ValueError(f"generation.stable_diffusion.prompt_template may only use {{class_name}}: {error}") from error


def _check_stable_diffusion(sd: dict[str, Any]) -> None:
    model = sd.get("model")
    if not model:
        raise ValueError(
            "generation.stable_diffusion.model is not set: give a local Stable Diffusion folder "
            "(saved with StableDiffusionPipeline.save_pretrained), or a hub id when online"
        )
    if _is_local_source(str(model)):
        try:
            validate_pipeline_folder(model)
        except ValueError as error:
            raise ValueError(f"generation.stable_diffusion.model: {error}") from error
    _choice(sd.get("mode", "text_to_image"), SD_MODES, "generation.stable_diffusion.mode")
    _choice(sd.get("sampler", "dpm_solver"), SD_SAMPLERS, "generation.stable_diffusion.sampler")
    strength = _number(sd.get("strength", 0.5), "generation.stable_diffusion.strength")
    if not 0 < strength <= 1:
        raise ValueError(f"generation.stable_diffusion.strength must be in (0, 1]; got {strength}")


def _sampling_settings(generation: dict[str, Any]) -> dict[str, Any]:
    """The per-image generation settings recorded in the plan (and so in the manifest)."""
    if generation.get("generator", "ddpm") == "ddpm":
        ddpm = generation.get("ddpm") or {}
        sampling = ddpm.get("sampling") or {}
        sampler = _choice(sampling.get("sampler", "dpm_solver"), DDPM_SAMPLERS, "generation.ddpm.sampling.sampler")
        ancestral_steps = int(ddpm.get("num_train_timesteps", DDPMConfig.num_train_timesteps))
        return {
            "generator": "ddpm",
            "mode": "class_conditional",
            "sampler": sampler,
            "steps": ancestral_steps if sampler == "ddpm" else int(sampling.get("steps", 20)),
            "guidance_scale": float(sampling.get("guidance_scale", 2.0)),
            "strength": float("nan"),
            "negative_prompt": "",
        }
    sd = generation["stable_diffusion"]
    mode = str(sd.get("mode", "text_to_image"))
    return {
        "generator": "stable_diffusion",
        "mode": mode,
        "sampler": str(sd.get("sampler", "dpm_solver")),
        "steps": int(sd.get("steps", 30)),
        "guidance_scale": float(sd.get("guidance_scale", 7.5)),
        "strength": float(sd.get("strength", 0.5)) if mode == "image_to_image" else float("nan"),
        "negative_prompt": str(sd.get("negative_prompt") or ""),
    }


def _pool_plan(
    training_set: pd.DataFrame, sizes: dict[str, int], settings: dict[str, Any], prompts: dict[str, str], seed: int
) -> pd.DataFrame:
    """One row per synthetic image; each (class, cluster) gets a share proportional to its train images."""
    by_cluster = settings["generator"] == "ddpm" or settings["mode"] == "image_to_image"
    frames = []
    for name, size in sizes.items():
        members = training_set[training_set["class_name"] == name]
        groups = dict(list(members.groupby("cluster_index"))) if by_cluster else {0: members}
        shares = allocate_proportionally(size, pd.Series({index: len(rows) for index, rows in groups.items()}))
        offsets = shares.cumsum() - shares
        frames += [
            _group_rows(rows, int(shares[index]), seed, int(offsets[index]), by_cluster)
            for index, rows in groups.items()
        ]
    plan = pd.concat(frames, ignore_index=True)
    plan["image_key"] = plan["intended_class"] + "/" + plan["image_id"]
    plan["path"] = plan["image_key"]
    plan["prompt"] = plan["intended_class"].map(prompts).fillna("") if prompts else ""
    plan = plan.assign(**settings)
    if settings["mode"] != "image_to_image":
        plan[["source_image_id", "source_image_key"]] = ""
    keys = zip(plan["intended_class"], plan["k"], strict=True)
    plan["seed"] = [derive_seed(seed, "generation", "image", name, k) for name, k in keys]
    return plan.drop(columns="k")[MANIFEST_COLUMNS]


def _group_rows(rows: pd.DataFrame, count: int, seed: int, offset: int, by_cluster: bool) -> pd.DataFrame:
    """``count`` plan rows for one (class, cluster) group; source images cycle through a seeded order."""
    first = rows.iloc[0]
    cluster_index = int(first["cluster_index"]) if by_cluster else 0
    order = numpy_rng(derive_seed(seed, "generation", "source", first["class_name"], cluster_index)).permutation(
        len(rows)
    )
    sources = rows.iloc[order[np.arange(count) % len(rows)]] if count else rows.iloc[:0]
    k = np.arange(offset, offset + count)
    return pd.DataFrame(
        {
            "image_id": [f"syn_{first['class_name']}_{index:05d}" for index in k],
            "intended_class": str(first["class_name"]),
            "label": int(first["label"]),
            "cluster": int(first["cluster"]) if by_cluster else NO_CLUSTER,
            "cluster_index": cluster_index,
            "source_image_id": sources["image_id"].to_numpy(),
            "source_image_key": sources["image_key"].to_numpy(),
            "k": k,
        }
    )


# --- training helpers --------------------------------------------------------------------------------------------
def _checkpoint_run_dir(generation: dict[str, Any], training_set: pd.DataFrame) -> Path | None:
    """``checkpoint_dir/<generator>-<fingerprint of the training set>``: other data never resumes a run."""
    root = generation.get("checkpoint_dir")
    if not root:
        return None
    generator = generation.get("generator", "ddpm")
    source = str((generation.get("stable_diffusion") or {}).get("model")) if generator != "ddpm" else ""
    columns = training_set[["image_id", "label", "cluster_index"]].to_csv(index=False)
    fingerprint = hashlib.sha1((columns + source).encode()).hexdigest()[:12]
    return Path(root) / f"{generator}-{fingerprint}"


def _check_resumable(run_dir: Path | None, config: dict[str, Any], resumable: tuple[str, ...], prefix: str) -> None:
    """Refuse to resume an interrupted run whose configuration differs, naming the parameters."""
    folder = latest_checkpoint(run_dir) if run_dir is not None else None
    if folder is None:
        return
    stored = json.loads((folder / METADATA_FILE).read_text())["config"]
    differing = config_differences(stored, config, ignore=resumable)
    if differing:
        details = "; ".join(
            f"{prefix}.{name}: checkpoint {stored.get(name)!r}, now {config.get(name)!r}" for name in differing
        )
        raise ValueError(
            f"generation.checkpoint_dir holds an interrupted run ({folder}) with another configuration ({details}). "
            f"Restore those parameters to resume it, or delete {run_dir} to start over"
        )
    logger.info("Resuming the interrupted training run in %s", folder)


def _train_ddpm(
    training_set: pd.DataFrame,
    images: np.ndarray,
    generation: dict[str, Any],
    image: dict[str, Any],
    seed: int,
    run_dir: Path | None,
) -> tuple[dict[str, Any], list[float]]:
    config = ddpm_config(training_set, generation, image, seed)
    _check_resumable(run_dir, config.to_dict(), DDPM_RESUMABLE_FIELDS, "generation.ddpm")
    clusters = training_set["cluster_index"].to_numpy(copy=True) if config.num_clusters else None
    labels = training_set["label"].to_numpy(copy=True)  # writable: torch.from_numpy warns on read-only arrays
    result = train_ddpm(images, labels, config, clusters, checkpoint_dir=run_dir, device=generation.get("device"))
    header = {
        "generator": "ddpm",
        "ddpm": config.to_dict(),
        "class_names": _class_names(training_set),
        "train_images": len(images),
        "steps_per_second": result.steps_per_second,
    }
    return {"state_dict": result.state_dict, "config": header}, result.loss_history


def _train_lora(
    training_set: pd.DataFrame, images: np.ndarray, generation: dict[str, Any], seed: int, run_dir: Path | None
) -> tuple[dict[str, Any], list[float]]:
    sd = generation["stable_diffusion"]
    settings = {
        **(sd.get("lora") or {}),
        "seed": derive_seed(seed, "generation", "lora"),
        "resolution": sd.get("resolution"),
    }
    try:
        config = LoraTrainingConfig.from_dict(settings)
    except (TypeError, ValueError) as error:
        raise ValueError(f"Invalid generation.stable_diffusion.lora parameters: {error}") from error
    _check_resumable(run_dir, config.to_dict(), LORA_RESUMABLE_FIELDS, "generation.stable_diffusion.lora")
    pipeline = _load_stable_diffusion(sd, generation.get("device"))
    prompts = _class_prompts(sd, _class_names(training_set))
    class_prompts = [prompts[name] for name in training_set["class_name"]]
    result = train_lora(
        pipeline, images, class_prompts, config, checkpoint_dir=run_dir, device=generation.get("device")
    )
    header = {
        "generator": "stable_diffusion",
        "model": str(sd["model"]),
        "lora": config.to_dict(),
        "class_names": _class_names(training_set),
        "prompts": prompts,
        "train_images": len(images),
        "steps_per_second": result.steps_per_second,
    }
    return {"state_dict": result.lora_state_dict, "config": header}, result.loss_history


def _class_names(training_set: pd.DataFrame) -> list[str]:
    return training_set.drop_duplicates("label").sort_values("label")["class_name"].tolist()


# --- sampling helpers --------------------------------------------------------------------------------------------
def _sample_ddpm_rows(generator: dict[str, Any], rows: pd.DataFrame, generation: dict[str, Any]) -> np.ndarray:
    config = DDPMConfig.from_dict(generator["config"]["ddpm"])
    sampling = (generation.get("ddpm") or {}).get("sampling") or {}
    first = rows.iloc[0]
    return sample_ddpm(
        generator["state_dict"],
        config,
        rows["label"].to_numpy(copy=True),
        rows["seed"].to_numpy(copy=True),
        clusters=rows["cluster_index"].to_numpy(copy=True) if config.num_clusters else None,
        num_inference_steps=int(first["steps"]),
        guidance_scale=float(first["guidance_scale"]),
        batch_size=int(sampling.get("batch_size", 64)),
        sampler=str(first["sampler"]),
        device=generation.get("device"),
    )


def _load_stable_diffusion(sd: dict[str, Any], device: str | None) -> StableDiffusionPipeline:
    try:
        return load_stable_diffusion(sd["model"], device=device)
    except Exception as error:  # diffusers raises OSError, KeyError, ValueError... on a broken folder
        message = f"{type(error).__name__}: {error}"
        raise ValueError(f"generation.stable_diffusion.model ({sd['model']}) does not load: {message}") from error


def _stable_diffusion_with_lora(generator: dict[str, Any], generation: dict[str, Any]) -> StableDiffusionPipeline:
    """The base pipeline with the trained LoRA adapter attached (and DPM-Solver++ when configured)."""
    sd, config = generation.get("stable_diffusion") or {}, generator["config"]
    if str(sd.get("model")) != config["model"]:
        logger.warning("LoRA was trained on %s; generating with %s", config["model"], sd.get("model"))
    pipeline = _load_stable_diffusion({**sd, "model": sd.get("model") or config["model"]}, generation.get("device"))
    metadata = _peft_lora_config(LoraTrainingConfig.from_dict(config["lora"])).to_dict()
    pipeline.unet.load_lora_adapter(
        dict(generator["state_dict"]), prefix=None, metadata=metadata, adapter_name=LORA_ADAPTER_NAME
    )
    if sd.get("sampler", "dpm_solver") == "dpm_solver":
        pipeline.scheduler = DPMSolverMultistepScheduler.from_config(pipeline.scheduler.config)
    return pipeline


def _sample_sd_rows(
    pipeline: StableDiffusionPipeline,
    rows: pd.DataFrame,
    real_images: dict[str, Any] | None,
    generation: dict[str, Any],
    image: dict[str, Any],
) -> np.ndarray:
    sd = generation["stable_diffusion"]
    first = rows.iloc[0]
    resolution = sd.get("resolution")
    options = {
        "steps": int(first["steps"]),
        "guidance_scale": float(first["guidance_scale"]),
        "height": resolution,
        "width": resolution,
        "batch_size": int(sd.get("batch_size", 4)),
    }
    negatives = rows["negative_prompt"].tolist() if rows["negative_prompt"].astype(bool).any() else None
    if first["mode"] == "text_to_image":
        return generate_text_to_image(pipeline, rows["prompt"].tolist(), negatives, rows["seed"].to_numpy(), **options)
    if real_images is None:
        raise ValueError("image_to_image generation needs the real images (catalog dataset real_images)")
    sources = stack_partitions(real_images, rows["source_image_key"], int(image["size"]), str(image["mode"]))
    return generate_image_to_image(
        pipeline,
        sources,
        rows["prompt"].tolist(),
        negatives,
        rows["seed"].to_numpy(),
        float(first["strength"]),
        **options,
    )


# --- report helpers ----------------------------------------------------------------------------------------------
def _class_grid(name: str, real: np.ndarray, synthetic: np.ndarray, per_row: int) -> Figure:
    rows = {"real": real, "synthetic": synthetic}
    return image_grid(rows, title=f"{name}: real train images and synthetic images", max_per_row=per_row)


def _overview_grid(
    real: dict[str, np.ndarray], synthetic: dict[str, np.ndarray], generator: str, per_row: int
) -> Figure:
    rows: dict[str, np.ndarray] = {}
    for name, images in real.items():
        rows[f"real\n{name}"] = images
        if name in synthetic:
            rows[f"synthetic\n{name}"] = synthetic[name]
    return image_grid(rows, title=f"Real train images and {generator} synthetic images per class", max_per_row=per_row)


def _pool_summary(training_set: pd.DataFrame, synthetic_manifest: pd.DataFrame) -> pd.DataFrame:
    real = training_set.groupby(["label", "class_name"]).agg(
        real_train=("image_id", "size"), clusters=("cluster_index", "nunique")
    )
    synthetic = synthetic_manifest.groupby("label").size().rename("synthetic")
    summary = real.reset_index().merge(synthetic, on="label", how="left").fillna({"synthetic": 0})
    summary["synthetic"] = summary["synthetic"].astype(int)
    summary["synthetic_per_real"] = (summary["synthetic"] / summary["real_train"]).round(3)
    return summary


def _generation_metrics(generator: dict[str, Any], log: pd.DataFrame, summary: pd.DataFrame) -> dict[str, Any]:
    losses = log["loss"].to_numpy(dtype=float)
    window = max(1, len(losses) // 100)
    smoothed = pd.Series(losses).rolling(window, min_periods=1).mean().to_numpy()
    points = [
        {"value": float(smoothed[step - 1]), "step": int(step)} for step in range(window, len(losses) + 1, window)
    ]
    metrics: dict[str, Any] = {
        "generation.train_steps_per_second": {
            "value": float(generator["config"].get("steps_per_second", 0)),
            "step": 0,
        },
        "generation.pool_size": {"value": float(summary["synthetic"].sum()), "step": 0},
        **{
            f"generation.pool_size.{row.class_name}": {"value": float(row.synthetic), "step": 0}
            for row in summary.itertuples()
            if row.synthetic
        },
    }
    if points:
        metrics["generation.loss"] = points
        metrics["generation.final_loss"] = {"value": float(losses[-max(1, len(losses) // 20) :].mean()), "step": 0}
    return metrics
