"""One generator per class, or per (class, cluster), as the second seed study trains them: ``generation.generator:
per_group``, beside the one model conditioned on (class, cluster) that the other kinds are.

Each group's model is the ``base`` kind with the settings of its own block (``generation.<base>``, the block the
base kind uses on its own), trained on that group's real train images alone, as a one-class model; each pool row
is sampled by its group's model with the row's own seed, so one row still regenerates its image. Training costs
one base training per group of the generator's training set, the classes the pool does not draw included.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from generative_augmentation.core.config import Config, ConfigError
from generative_augmentation.core.generators.base import (
    GENERATORS,
    Generator,
    TrainingImages,
    generator_class,
    load_generator,
    register,
)
from generative_augmentation.core.runtime import derive_seed


@dataclass(frozen=True)
class PerGroupSettings(Config):
    """Which kind each group's model is (``base``) and what a group is (``by``: a class, or a class's cluster)."""

    where = "generation.per_group"
    base: str = "ddpm"
    by: Literal["class", "class_cluster"] = "class_cluster"
    base_settings: dict[str, Any] | None = None  # filled from generation.<base> (the base kind's own block)

    def checks(self):
        kinds = sorted(kind for kind in GENERATORS if kind != PerGroupGenerator.kind)
        yield "base", self.base in kinds, f"must be one of {kinds}, got {self.base!r}"

    def base_config(self) -> Config:
        """The base kind's parsed settings."""
        return generator_class(self.base).settings_class.parse(self.base_settings, f"generation.{self.base}")


@register
class PerGroupGenerator(Generator):
    """Several one-class generators of one kind behind the generator interface, one per group."""

    kind = "per_group"
    settings_class = PerGroupSettings
    settings: PerGroupSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.models: dict[tuple[int, int], Generator] = {}  # (label, cluster index) -> fitted one-class model

    # --- planning --------------------------------------------------------------------------------------------
    @classmethod
    def complete_settings(cls, settings: PerGroupSettings, blocks: Mapping[str, Config]) -> PerGroupSettings:
        block = blocks.get(settings.base)
        return settings.replace(base_settings=block.to_dict() if block is not None else None)

    @classmethod
    def check(cls, settings: PerGroupSettings, class_names: list[str]) -> None:
        base = generator_class(settings.base)
        if base.uses_source_images(settings.base_config()):
            raise ConfigError(
                f"Parameter {settings.parameter('base')}: per-group models make images from noise; set "
                f"generation.{settings.base}'s sampling mode to text_to_image or class_conditional"
            )
        base.check(settings.base_config(), class_names)

    @classmethod
    def conditions_on_clusters(cls, settings: PerGroupSettings) -> bool:
        return settings.by == "class_cluster"

    @classmethod
    def sampling_record(cls, settings: PerGroupSettings, class_name: str) -> dict[str, Any]:
        return generator_class(settings.base).sampling_record(settings.base_config(), class_name)

    @classmethod
    def checkpoint_key(cls, settings: PerGroupSettings) -> str:
        return f"per_group-{settings.by}-" + generator_class(settings.base).checkpoint_key(settings.base_config())

    # --- lifecycle -------------------------------------------------------------------------------------------
    def fit(self, data: TrainingImages, checkpoint_dir: Path | None = None, progress: bool = True) -> list[float]:
        clusters = data.clusters if self.num_clusters else np.zeros_like(data.clusters)
        losses: list[float] = []
        for label, cluster in sorted(set(zip(data.labels.tolist(), clusters.tolist(), strict=True))):
            members = (data.labels == label) & (clusters == cluster)
            model = self._new_model(label, cluster)
            group = TrainingImages(
                images=data.images[members],
                labels=np.zeros(int(members.sum()), dtype=np.int64),
                clusters=np.zeros(int(members.sum()), dtype=np.int64),
                class_names=model.class_names,
                num_clusters=0,
            )
            folder = checkpoint_dir / _group_name(label, cluster) if checkpoint_dir is not None else None
            losses += model.fit(group, checkpoint_dir=folder, progress=progress)
            self.models[(label, cluster)] = model
        self.training = {
            "loss_history": losses,  # the groups' losses one after the other
            "groups": {_group_name(*key): model.training.get("train_images") for key, model in self.models.items()},
            "train_images": len(data.images),
            "steps_per_second": _combined_rate(self.models.values()),
        }
        return losses

    def _new_model(self, label: int, cluster: int) -> Generator:
        return generator_class(self.settings.base)(
            self.settings.base_config(),
            self.image,
            [self.class_names[label]],
            0,
            derive_seed(self.seed, "group", label, cluster),
            self.device,
        )

    def _sample(self, rows: pd.DataFrame, sources: np.ndarray | None, progress: bool) -> np.ndarray:
        images = self.image.empty(len(rows))
        rows = rows.reset_index(drop=True)
        clusters = rows["cluster_index"] if self.num_clusters else pd.Series(0, index=rows.index)
        for (label, cluster), group in rows.groupby([rows["label"], clusters], sort=True):
            model = self.models.get((int(label), int(cluster)))
            if model is None:
                raise ValueError(
                    f"No model was trained for class {self.class_names[int(label)]!r}, cluster {int(cluster)}: the "
                    "plan asks for images of a group the training set did not have"
                )
            images[group.index] = model.generate(group.assign(label=0, cluster_index=0), None, progress)
        return images

    # --- persistence -----------------------------------------------------------------------------------------
    def _save_model(self, folder: Path) -> None:
        if not self.models:
            raise ValueError("The per-group generator has not been fitted: nothing to save")
        for (label, cluster), model in self.models.items():
            model.save(folder / _group_name(label, cluster))

    def _load_model(self, folder: Path) -> None:
        self.models = {}
        for path in sorted(folder.glob("group-*")):
            _, label, cluster = path.name.split("-")
            self.models[(int(label), int(cluster))] = load_generator(path)


def _combined_rate(models: Iterable[Generator]) -> float | None:
    """All groups' steps over all groups' training seconds (each model records its own rate)."""
    steps, seconds = 0, 0.0
    for model in models:
        rate, count = model.training.get("steps_per_second"), len(model.training.get("loss_history", []))
        if not rate:
            return None
        steps, seconds = steps + count, seconds + count / rate
    return steps / seconds if seconds else None


def _group_name(label: int, cluster: int) -> str:
    return f"group-{label}-{cluster}"
