"""The synthetic pool: its settings, its plan, and fitting and sampling the configured generator.

The plan fixes every synthetic image before any training: its class, cluster, seed, source image and sampling
settings, so one row of the pool's manifest is enough to regenerate its image. Pool sizes follow the real train
counts; within a class, each cluster gets a share proportional to its size (largest-remainder rounding).
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import pandas as pd

from generative_augmentation.core.config import Config, ConfigError
from generative_augmentation.core.generators import (
    GENERATORS,
    SAMPLING_COLUMNS,
    Generator,
    TrainingImages,
    generator_class,
)
from generative_augmentation.core.images import ImageSpec, stack_images
from generative_augmentation.core.manifest import class_names, resolve_classes, split_rows, train_counts
from generative_augmentation.core.runtime import derive_seed, numpy_rng, run_jobs
from generative_augmentation.core.scenarios import ScenarioConfig, synthetic_needs

logger = logging.getLogger(__name__)

NO_CLUSTER = -1
TRAINING_SET_COLUMNS = ["image_id", "image_key", "label", "class_name", "cluster", "cluster_index"]
POOL_COLUMNS = [
    "image_id",
    "image_key",
    "intended_class",
    "label",
    "generator",
    "seed",
    "cluster",
    "cluster_index",
    "source_image_id",
    "source_image_key",
    *SAMPLING_COLUMNS,
]


@dataclass(frozen=True)
class PoolConfig(Config):
    """How many synthetic images each generated class gets."""

    where = "generation.pool"
    # images per class = multiple x the class's real train count; auto: the largest ratio of the study's arms
    multiple: float | Literal["auto"] = "auto"
    balance_to_largest: bool = False  # ... or, when true, the gap to the largest class's train count
    # never fewer than the gap to the largest class (what a `balanced` arm draws); auto: when the study has one
    cover_balanced: bool | Literal["auto"] = "auto"
    oversample: float = 1.25  # extra share on top, so the pool still covers the ratios after pseudo_labeling drops

    def checks(self):
        if self.multiple != "auto":
            yield from self.at_least("multiple", minimum=0)  # 0: only the gaps to the largest class
        yield "oversample", self.oversample >= 1, f"must be at least 1 (it only adds images), got {self.oversample}"


@dataclass(frozen=True)
class GenerationReport(Config):
    where = "generation.report"
    images_per_row: int = 8

    def checks(self):
        yield from self.at_least("images_per_row")


@dataclass(frozen=True)
class GenerationConfig(Config):
    """The ``generation`` parameters: which generator, which classes, how big a pool; the chosen generator's own
    settings sit under ``generation.<generator>``."""

    where = "generation"
    generator: str = "ddpm"
    classes: list[str] | None = None
    pool: PoolConfig = field(default_factory=PoolConfig)
    use_clusters: bool | Literal["auto"] = "auto"
    min_train_images_per_class: int = 10
    keep_checkpoints: bool = False
    device: str | None = None
    sample_chunk: int = 256
    report: GenerationReport = field(default_factory=GenerationReport)
    settings: Any = None  # the generator's parsed settings (``generation.<generator>``)

    def checks(self):
        yield "generator", self.generator in GENERATORS, f"must be one of {sorted(GENERATORS)}, got {self.generator!r}"
        yield from self.at_least("min_train_images_per_class", "sample_chunk")

    @classmethod
    def parse(cls, values: Mapping[str, Any] | None, where: str | None = None, base: Self | None = None) -> Self:
        """Parse the common keys, then the chosen generator's block with its own settings class."""
        where = cls.where if where is None else where
        values = dict(values or {})
        blocks = {kind: values.pop(kind) for kind in list(values) if kind in GENERATORS}
        if "settings" in values:
            raise ConfigError(f"Unknown parameter(s) {where}.settings")
        config = super().parse(values, where, base)
        # every generator's block is checked (a typo surfaces whichever generator is chosen); the chosen one is kept
        parsed = {
            kind: GENERATORS[kind].settings_class.parse(block, f"{where}.{kind}") for kind, block in blocks.items()
        }
        chosen = parsed.get(config.generator) or config.generator_class.settings_class.parse(
            None, f"{where}.{config.generator}"
        )
        return config.replace(settings=config.generator_class.complete_settings(chosen, parsed))

    @property
    def generator_class(self) -> type[Generator]:
        return generator_class(self.generator)


def plan_pool(
    manifest: pd.DataFrame,
    clusters: pd.DataFrame | None,
    config: GenerationConfig,
    seed: int,
    arms: Mapping[str, ScenarioConfig] | None = None,
    augment_classes: list[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check the settings against the data; return the generator's training set and the pool plan.

    The training set is the real TRAIN split only (with each image's cluster when clusters are used); the plan has
    one row per synthetic image to generate, with its seed derived from ``seed``. ``arms``: the study's arms, which
    size an ``auto`` pool; ``augment_classes``: ``study.augment_classes``, what an arm without its own ``classes``
    draws.
    """
    kind = config.generator_class
    names = class_names(manifest)
    kind.check(config.settings, names)
    training_set = training_images_table(manifest, clusters, config.use_clusters)
    counts = train_counts(manifest)
    targets = resolve_classes(config.classes, counts, config.parameter("classes"))
    if config.classes is None and synthetic_needs(arms or {})[2]:
        targets = [str(name) for name in counts.index]
        logger.info("An arm of the study sets every_class (no synthetic shortcut): every class is generated")
    elif config.classes is None and counts.nunique() == 1:
        logger.info(
            "The train split is balanced (%d images per class): no class is a minority, every class is generated",
            counts.iloc[0],
        )
    all_classes = [str(name) for name in counts.index]
    augmented = resolve_classes(augment_classes, counts, "study.augment_classes")
    check_arms_covered(arms or {}, targets, config, all_classes, augmented)
    for name in targets:
        if counts[name] < config.min_train_images_per_class:
            raise ConfigError(
                f"Class {name!r} has {counts[name]} train images, fewer than "
                f"{config.parameter('min_train_images_per_class')} ({config.min_train_images_per_class}): too few to "
                "train a generator on. Leave it out of generation.classes or lower the minimum"
            )
    sizes = pool_sizes(counts, targets, resolve_pool(config.pool, arms or {}))
    by_cluster = kind.conditions_on_clusters(config.settings) or kind.uses_source_images(config.settings)
    plan = _plan_rows(training_set, sizes, config, seed, by_cluster)
    logger.info("Planned %d synthetic images: %s", len(plan), {name: count for name, count in sizes.items() if count})
    return training_set, plan


def training_images_table(
    manifest: pd.DataFrame, clusters: pd.DataFrame | None, use_clusters: bool | str
) -> pd.DataFrame:
    """The real train rows in label order, with ``cluster`` (feature_clustering's id, -1 without clusters) and
    ``cluster_index`` (the clusters of each class renumbered 0..K-1 for (class, cluster) conditioning)."""
    train = split_rows(manifest, "train")[["image_id", "image_key", "label", "class_name"]]
    train = train.sort_values(["label", "image_id"]).reset_index(drop=True)
    present = clusters is not None and len(clusters) > 0
    if use_clusters is True and not present:
        raise ConfigError(
            "Parameter generation.use_clusters is true but the `clusters` dataset (04_feature/clusters.parquet) is "
            "absent: run `kedro run --pipeline=feature_clustering` first, or set generation.use_clusters to auto or "
            "false"
        )
    if use_clusters is False or not present:
        return train.assign(cluster=NO_CLUSTER, cluster_index=0)[TRAINING_SET_COLUMNS]
    merged = train.merge(clusters[["image_id", "cluster"]].drop_duplicates("image_id"), on="image_id", how="left")
    missing = merged.loc[merged["cluster"].isna(), "image_id"].tolist()
    if missing:
        raise ValueError(
            f"The `clusters` dataset has no cluster for {len(missing)} train images (e.g. {missing[:3]}): it is out "
            "of date; re-run the feature_clustering pipeline or set generation.use_clusters: false"
        )
    merged["cluster"] = merged["cluster"].astype(int)
    merged["cluster_index"] = merged.groupby("class_name")["cluster"].rank(method="dense").astype(int) - 1
    logger.info("Conditioning on (class, cluster): %d clusters in all", merged.groupby(["label", "cluster"]).ngroups)
    return merged[TRAINING_SET_COLUMNS]


def check_arms_covered(
    arms: Mapping[str, ScenarioConfig],
    targets: Sequence[str],
    config: GenerationConfig,
    all_classes: Sequence[str] | None,
    augmented: Sequence[str] | None,
) -> None:
    """Refuse a pool that lacks a class an arm of the study draws synthetic images of. ``all_classes``: every
    class of the data; ``augmented``: what ``study.augment_classes`` resolves to. Either may be None when not yet
    known (the run's start, before the data is read): arms that depend on it are then left to the later check."""
    for name, spec in arms.items():
        if not spec.uses_synthetic:
            continue
        if spec.every_class:
            wanted, source = all_classes, "every_class"
        elif spec.classes is not None:
            wanted, source = spec.classes, spec.parameter("classes")
        else:
            wanted, source = augmented, "study.augment_classes"
        missing = [cls for cls in wanted or [] if cls not in targets]
        if missing:
            raise ConfigError(
                f"Arm {name} draws synthetic images of {missing} ({source}), which {config.parameter('classes')} "
                f"({list(targets)}) does not generate: add them there, or set it to null"
            )


def resolve_pool(pool: PoolConfig, arms: Mapping[str, ScenarioConfig]) -> PoolConfig:
    """``auto`` settings made concrete from what the study's arms draw (see :func:`synthetic_needs`)."""
    largest_ratio, balanced, _ = synthetic_needs(arms)
    multiple = pool.multiple
    if multiple == "auto":
        multiple = largest_ratio
        if multiple == 0 and not balanced:
            multiple = 1.0
            logger.info("No arm of the study draws synthetic images: the pool is 1x each class, for inspection")
    cover = balanced if pool.cover_balanced == "auto" else pool.cover_balanced
    return pool.replace(multiple=multiple, cover_balanced=cover)


def pool_sizes(counts: pd.Series, targets: list[str], pool: PoolConfig) -> dict[str, int]:
    """Synthetic images per target class: ``multiple`` x its train count (or the gap to the largest class when
    ``balance_to_largest``), never below that gap with ``cover_balanced``, times ``oversample``, rounded up."""
    largest = int(counts.max())
    if pool.balance_to_largest:
        base = {name: largest - int(counts[name]) for name in targets}
    else:
        base = {name: pool.multiple * int(counts[name]) for name in targets}
        if pool.cover_balanced:
            base = {name: max(amount, largest - int(counts[name])) for name, amount in base.items()}
    sizes = {name: math.ceil(round(amount * pool.oversample, 6)) for name, amount in base.items()}
    if sum(sizes.values()) == 0:
        raise ConfigError(
            "The synthetic pool would hold zero images: with generation.pool.multiple 0 or balance_to_largest the "
            "generated classes already have the largest train count; raise generation.pool.multiple or list other "
            "generation.classes"
        )
    return sizes


def allocate_proportionally(total: int, weights: pd.Series) -> pd.Series:
    """Split ``total`` into integer shares proportional to ``weights`` (largest-remainder rounding)."""
    quotas = weights.to_numpy(dtype=float) / float(weights.sum()) * total
    shares = np.floor(quotas).astype(int)
    order = np.argsort(-(quotas - shares), kind="stable")
    shares[order[: total - int(shares.sum())]] += 1
    return pd.Series(shares, index=weights.index)


def _plan_rows(
    training_set: pd.DataFrame, sizes: dict[str, int], config: GenerationConfig, seed: int, by_cluster: bool
) -> pd.DataFrame:
    kind = config.generator_class
    frames = []
    for name, size in sizes.items():
        members = training_set[training_set["class_name"] == name]
        groups = dict(list(members.groupby("cluster_index"))) if by_cluster else {0: members}
        shares = allocate_proportionally(size, pd.Series({index: len(rows) for index, rows in groups.items()}))
        offsets = shares.cumsum() - shares
        for index, rows in groups.items():
            frames.append(_group_rows(rows, int(shares[index]), seed, int(offsets[index]), by_cluster))
    plan = pd.concat(frames, ignore_index=True)
    plan["image_key"] = plan["intended_class"] + "/" + plan["image_id"]
    plan["generator"] = config.generator
    records = {name: kind.sampling_record(config.settings, name) for name in sizes}
    for column in SAMPLING_COLUMNS:
        plan[column] = plan["intended_class"].map(lambda name, column=column: records[name][column])
    plan["strength"] = _drawn_strengths(plan, records, seed)
    if not kind.uses_source_images(config.settings):
        plan[["source_image_id", "source_image_key"]] = ""
    plan["seed"] = [
        derive_seed(seed, "generation", "image", name, k)
        for name, k in zip(plan["intended_class"], plan["k"], strict=True)
    ]
    return plan.drop(columns="k")[POOL_COLUMNS]


def _drawn_strengths(plan: pd.DataFrame, records: Mapping[str, Mapping[str, Any]], seed: int) -> np.ndarray:
    """Each row's strength: its class's value, or one drawn per image from its class's list (DA-Fusion), seeded
    by the class and the image's index so one row's strength never depends on the others."""
    strengths = np.empty(len(plan), dtype=float)
    for position, (name, image_id) in enumerate(zip(plan["intended_class"], plan["image_id"], strict=True)):
        value = records[name]["strength"]
        if isinstance(value, list | tuple):
            value = numpy_rng(derive_seed(seed, "generation", "strength", image_id)).choice(value)
        strengths[position] = float(value)
    return strengths


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


def new_generator(
    config: GenerationConfig, training_set: pd.DataFrame, names: list[str], image: ImageSpec, seed: int
) -> Generator:
    """An unfitted generator of the configured kind, shaped by the data (classes, clusters, image size)."""
    uses_clusters = bool(
        (training_set["cluster"] != NO_CLUSTER).any()
    ) and config.generator_class.conditions_on_clusters(config.settings)
    num_clusters = int(training_set["cluster_index"].max()) + 1 if uses_clusters else 0
    return config.generator_class(
        config.settings, image, names, num_clusters, derive_seed(seed, "generation", config.generator), config.device
    )


def fit_generator(
    training_set: pd.DataFrame,
    real_images: Mapping[str, Any],
    names: list[str],
    config: GenerationConfig,
    image: ImageSpec,
    seed: int,
    checkpoint_root: Path | None,
    progress: bool = True,
) -> Generator:
    """Fit the configured generator on the real train images of ``training_set``.

    Checkpoints go to ``checkpoint_root/<kind>-<fingerprint>`` (a fingerprint of the training set and base model,
    so other data never resumes a run); they are removed after success unless ``keep_checkpoints``.
    """
    generator = new_generator(config, training_set, names, image, seed)
    data = TrainingImages(
        images=stack_images(real_images, training_set["image_key"], image),
        labels=training_set["label"].to_numpy(dtype=np.int64, copy=True),
        clusters=training_set["cluster_index"].to_numpy(dtype=np.int64, copy=True),
        class_names=names,
        num_clusters=generator.num_clusters,
    )
    run_dir = checkpoint_folder(checkpoint_root, config, training_set) if checkpoint_root is not None else None
    generator.fit(data, checkpoint_dir=run_dir, progress=progress)
    if run_dir is not None and not config.keep_checkpoints:
        shutil.rmtree(run_dir, ignore_errors=True)
    return generator


def checkpoint_folder(root: Path, config: GenerationConfig, training_set: pd.DataFrame) -> Path:
    """``root/<generator>-<fingerprint of the training set and the base model>``."""
    columns = training_set[["image_id", "label", "cluster_index"]].to_csv(index=False)
    extra = config.generator_class.checkpoint_key(config.settings)
    fingerprint = hashlib.sha1((columns + extra).encode()).hexdigest()[:12]
    return Path(root) / f"{config.generator}-{fingerprint}"


def generate_pool(
    generator: Generator,
    plan: pd.DataFrame,
    real_images: Mapping[str, Any] | None,
    progress: bool = True,
    cache: Path | None = None,
    chunk_size: int = 256,
) -> np.ndarray:
    """The uint8 images of ``plan`` rows (a pool plan, or rows of the synthetic manifest to regenerate).

    The rows are sampled in chunks of ``chunk_size``. With ``cache``, each finished chunk is kept there (written
    atomically) under a name made from the generator and the chunk's rows, so a run killed while sampling resumes
    with the chunks that are missing; chunks are the same batches either way, so the pool is byte-identical to an
    uninterrupted run's.
    """
    chunks = [plan.iloc[start : start + chunk_size] for start in range(0, len(plan), chunk_size)]
    images: list[np.ndarray | None] = [None] * len(chunks)
    calls, missing = [], []
    for index, rows in enumerate(chunks):
        path = _chunk_path(cache, generator, rows) if cache is not None else None
        if path is not None and path.is_file():
            images[index] = np.load(path)
            logger.info(
                "Chunk %d of %d was sampled before the interruption: kept (%s)", index + 1, len(chunks), path.name
            )
            continue
        sources = None
        if rows["source_image_key"].astype(bool).any():
            if real_images is None:
                raise ValueError("This generator makes each image from a real train image: pass the real images")
            sources = stack_images(real_images, rows["source_image_key"], generator.image)
        calls.append((generator, rows, sources, path, progress))
        missing.append(index)
    # one Dask task per chunk under the Dask runner (the generator sent to each worker once), else one by one
    for index, batch in zip(missing, run_jobs(_sample_chunk, calls), strict=True):
        images[index] = batch
    return np.concatenate(images) if images else generator.image.empty()


def _sample_chunk(
    generator: Generator, rows: pd.DataFrame, sources: np.ndarray | None, path: Path | None, progress: bool
) -> np.ndarray:
    """A chunk's images, sampled (and kept at ``path`` for a resume)."""
    batch = generator.generate(rows, sources, progress=progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(".partial-" + path.name)
        np.save(partial, batch)  # the name ends in .npy, so numpy writes exactly there
        partial.replace(path)
    return batch


def sample_cache_folder(root: Path, generator: Generator) -> Path:
    """Where the chunks of a generator's pool wait until the pool is saved."""
    return Path(root) / f"samples-{generator.kind}-{generator.fingerprint()}"


def _chunk_path(cache: Path, generator: Generator, rows: pd.DataFrame) -> Path:
    digest = hashlib.sha1((generator.fingerprint() + rows.to_csv(index=False)).encode()).hexdigest()[:16]
    return Path(cache) / f"chunk-{digest}.npy"


def pool_summary(training_set: pd.DataFrame, synthetic_manifest: pd.DataFrame) -> pd.DataFrame:
    """Per class: real train images, clusters, synthetic images, and synthetic per real."""
    real = training_set.groupby(["label", "class_name"]).agg(
        real_train=("image_id", "size"), clusters=("cluster_index", "nunique")
    )
    synthetic = synthetic_manifest.groupby("label").size().rename("synthetic")
    summary = real.reset_index().merge(synthetic, on="label", how="left").fillna({"synthetic": 0})
    summary["synthetic"] = summary["synthetic"].astype(int)
    summary["synthetic_per_real"] = (summary["synthetic"] / summary["real_train"]).round(3)
    return summary
