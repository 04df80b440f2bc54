"""The generator interface: fit on the real train images, sample with one seed per image, save, load.

A generator kind is one module under ``core/generators`` with a settings class (a :class:`Config`) and a
:class:`Generator` subclass registered with :func:`register`. Nothing else in the project branches on the kind:
planning asks the generator what it records per image (:meth:`Generator.sampling_record`) and whether it
conditions on clusters or needs source images; the pipeline calls :meth:`fit`, :meth:`generate`, :meth:`save` and
:func:`load_generator`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd

from generative_augmentation.core.config import Config
from generative_augmentation.core.images import ImageSpec

logger = logging.getLogger(__name__)

RECORD_FILE = "generator.json"
# What a pool plan records per image besides its class, cluster, seed and source: enough to regenerate it.
SAMPLING_COLUMNS = ("mode", "sampler", "steps", "guidance_scale", "strength", "prompt", "negative_prompt")
GENERATORS: dict[str, type[Generator]] = {}


@dataclass(frozen=True)
class TrainingImages:
    """What a generator is fitted on: real train images with their labels and cluster indices."""

    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # (N,) 0..K-1
    clusters: np.ndarray  # (N,) cluster index within the class, 0..num_clusters-1 (all 0 without clusters)
    class_names: list[str]
    num_clusters: int  # 0: the generator does not condition on clusters

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or len(self.images) == 0 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be a non-empty uint8 (N, H, W, C) array, got {self.images.dtype} {self.images.shape}"
            )
        if not len(self.labels) == len(self.clusters) == len(self.images):
            raise ValueError(
                f"{len(self.labels)} labels and {len(self.clusters)} clusters for {len(self.images)} images"
            )


class Generator(ABC):
    """A class-conditional image generator. Subclasses set ``kind`` and ``settings_class``."""

    kind: ClassVar[str]
    settings_class: ClassVar[type[Config]]

    def __init__(
        self,
        settings: Config,
        image: ImageSpec,
        class_names: list[str],
        num_clusters: int,
        seed: int,
        device: str | None = None,
    ):
        self.settings = settings
        self.device = device  # null: CUDA when present, else CPU (not saved: a loaded generator may move)
        self.image = image
        self.class_names = list(class_names)
        self.num_clusters = int(num_clusters)
        self.seed = int(seed)
        self.training: dict[str, Any] = {}  # loss_history, steps_per_second, train_images once fitted

    # --- planning --------------------------------------------------------------------------------------------
    @classmethod  # noqa: B027 - an optional hook: most kinds need no check against the data
    def check(cls, settings: Config, class_names: list[str]) -> None:
        """Refuse settings that do not fit the data (a prompt for an unknown class, say) before any work starts."""

    @classmethod
    def complete_settings(cls, settings: Config, blocks: Mapping[str, Config]) -> Config:
        """The settings, given every generator block of ``generation`` parsed (a kind built on another kind takes
        that kind's block from ``blocks``)."""
        return settings

    @classmethod
    def conditions_on_clusters(cls, settings: Config) -> bool:
        """Whether the generator is conditioned on (class, cluster), so the pool is planned per cluster."""
        return False

    @classmethod
    def uses_source_images(cls, settings: Config) -> bool:
        """Whether every synthetic image is made from a real train image (image-to-image)."""
        return False

    @classmethod
    @abstractmethod
    def sampling_record(cls, settings: Config, class_name: str) -> dict[str, Any]:
        """The :data:`SAMPLING_COLUMNS` values recorded for an image of ``class_name``."""

    @classmethod
    def checkpoint_key(cls, settings: Config) -> str:
        """What besides the training images identifies a training run (the base model of a fine-tune)."""
        return ""

    # --- lifecycle -------------------------------------------------------------------------------------------
    @abstractmethod
    def fit(self, data: TrainingImages, checkpoint_dir: Path | None = None, progress: bool = True) -> list[float]:
        """Train on ``data``; returns the loss per step. Checkpoints under ``checkpoint_dir`` and resumes there."""

    def generate(self, plan: pd.DataFrame, sources: np.ndarray | None = None, progress: bool = True) -> np.ndarray:
        """One uint8 image (N, H, W, C) per ``plan`` row (label, cluster_index, seed and the sampling columns).

        Image ``i`` depends only on row ``i`` (and ``sources[i]``), so one row regenerates its image.
        """
        rows = plan.reset_index(drop=True)
        images = self.image.empty(len(rows))
        for _, group in rows.groupby(list(SAMPLING_COLUMNS), dropna=False, sort=False):
            group_sources = sources[group.index] if sources is not None else None
            images[group.index] = self._sample(group, group_sources, progress)
        return images

    @abstractmethod
    def _sample(self, rows: pd.DataFrame, sources: np.ndarray | None, progress: bool) -> np.ndarray:
        """uint8 images of ``rows``, which share their sampling settings, at the working resolution."""

    def record(self) -> dict[str, Any]:
        """What the generator's folder records besides its weights: kind, settings, classes, seed, training."""
        return {
            "kind": self.kind,
            "settings": self.settings.to_dict(),
            "image": self.image.to_dict(),
            "class_names": self.class_names,
            "num_clusters": self.num_clusters,
            "seed": self.seed,
            "training": self.training,
        }

    def fingerprint(self) -> str:
        """What identifies this fitted generator: its kind, settings, classes, seed and training record."""
        record = {key: value for key, value in self.record().items() if key != "training"}
        record["loss_history"] = self.training.get("loss_history", [])
        return hashlib.sha1(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]

    def save(self, folder: str | Path) -> Path:
        """Write the generator into ``folder``: :data:`RECORD_FILE` and the kind's own files."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._save_model(folder)
        (folder / RECORD_FILE).write_text(json.dumps(self.record(), indent=2))
        logger.info("Saved the %s generator to %s", self.kind, folder)
        return folder

    @abstractmethod
    def _save_model(self, folder: Path) -> None: ...

    @classmethod
    def from_record(cls, record: dict[str, Any], folder: Path) -> Self:
        generator = cls(
            cls.settings_class.parse(record["settings"], f"generation.{cls.kind}"),
            ImageSpec.parse(record["image"]),
            record["class_names"],
            record["num_clusters"],
            record["seed"],
        )
        generator.training = dict(record.get("training") or {})
        generator._load_model(folder)
        return generator

    @abstractmethod
    def _load_model(self, folder: Path) -> None: ...


def register(cls: type[Generator]) -> type[Generator]:
    """Class decorator: make a generator kind selectable as ``generation.generator: <kind>``."""
    GENERATORS[cls.kind] = cls
    return cls


def generator_class(kind: str) -> type[Generator]:
    """The generator class registered as ``kind``."""
    if kind not in GENERATORS:
        raise ValueError(f"Parameter generation.generator must be one of {sorted(GENERATORS)}, got {kind!r}")
    return GENERATORS[kind]


def load_generator(folder: str | Path) -> Generator:
    """A generator written by :meth:`Generator.save`."""
    folder = Path(folder)
    record_path = folder / RECORD_FILE
    if not record_path.is_file():
        raise ValueError(f"{folder} is not a saved generator: {RECORD_FILE} is missing")
    record = json.loads(record_path.read_text())
    return generator_class(record["kind"]).from_record(record, folder)
