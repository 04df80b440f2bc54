"""One model per class or per (class, cluster) (`generation.generator: per_group`): each group's one-class model
trains on that group's images alone, samples its rows with their own seeds, round-trips through save and load, and
takes its settings from the base kind's own block."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from generative_augmentation.core.config import ConfigError
from generative_augmentation.core.generation import GenerationConfig
from generative_augmentation.core.generators import TrainingImages, generator_class, load_generator
from generative_augmentation.core.generators.per_group import PerGroupSettings
from tests.core.test_generators import IMAGE, NAMES, SIZE, ddpm_settings, two_tone


def per_group(by: str = "class_cluster", clusters: int = 2, seed: int = 3, train_steps: int = 40):
    settings = PerGroupSettings(base="ddpm", by=by, base_settings=ddpm_settings(train_steps=train_steps).to_dict())
    return generator_class("per_group")(settings, IMAGE, NAMES, clusters if by == "class_cluster" else 0, seed, "cpu")


def plan(generator, labels: list[int], clusters: list[int], seeds: list[int]) -> pd.DataFrame:
    record = generator.sampling_record(generator.settings, NAMES[0])
    return pd.DataFrame({"label": labels, "cluster_index": clusters, "seed": seeds}).assign(**record)


@pytest.fixture(scope="module")
def fitted():
    generator = per_group()
    generator.fit(two_tone(), progress=False)
    return generator


def test_each_class_and_cluster_gets_its_own_model_trained_on_its_images(fitted) -> None:
    assert sorted(fitted.models) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert fitted.training["groups"] == {f"group-{label}-{cluster}": 4 for label in (0, 1) for cluster in (0, 1)}
    assert len(fitted.training["loss_history"]) == 4 * 40  # the groups' losses one after the other
    assert all(model.class_names == [NAMES[label]] for (label, _), model in fitted.models.items())
    seeds = {model.seed for model in fitted.models.values()}
    assert len(seeds) == 4  # each group's model from a seed of its own
    seconds = sum(40 / model.training["steps_per_second"] for model in fitted.models.values())
    assert fitted.training["steps_per_second"] == pytest.approx(160 / seconds)  # all steps over all groups' time


def test_rows_are_sampled_by_their_groups_model_and_depend_only_on_their_own_seed(fitted) -> None:
    rows = plan(fitted, [0, 1, 0, 1], [0, 0, 1, 1], [11, 12, 13, 14])
    images = fitted.generate(rows, progress=False)
    assert images.shape == (4, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert images[[1, 3]].mean() > images[[0, 2]].mean() + 60  # the white class's models make brighter images
    alone = fitted.generate(rows.iloc[[2]], progress=False)
    np.testing.assert_array_equal(alone[0], images[2])
    group_model = fitted.models[(0, 1)]
    direct = group_model.generate(rows.iloc[[2]].assign(label=0, cluster_index=0), progress=False)
    np.testing.assert_array_equal(direct[0], images[2])


def test_it_saves_and_loads_with_every_group(fitted, tmp_path) -> None:
    folder = fitted.save(tmp_path / "generator")
    loaded = load_generator(folder)
    assert loaded.kind == "per_group" and sorted(loaded.models) == sorted(fitted.models)
    assert loaded.fingerprint() == fitted.fingerprint()
    rows = plan(fitted, [0, 1], [1, 0], [5, 6])
    np.testing.assert_array_equal(loaded.generate(rows, progress=False), fitted.generate(rows, progress=False))


def test_by_class_ignores_the_clusters() -> None:
    generator = per_group(by="class", train_steps=2)  # which groups get a model, not what they learn
    data = two_tone()
    generator.fit(TrainingImages(data.images, data.labels, data.clusters, NAMES, num_clusters=0), progress=False)
    assert sorted(generator.models) == [(0, 0), (1, 0)]


def test_a_group_without_a_model_is_named(fitted) -> None:
    with pytest.raises(ValueError, match=r"No model was trained for class 'white', cluster 5"):
        fitted.generate(plan(fitted, [1], [5], [1]), progress=False)


def test_the_base_kind_takes_its_own_block_and_bad_settings_are_named() -> None:
    config = GenerationConfig.parse(
        {"generator": "per_group", "per_group": {"base": "ddpm", "by": "class"}, "ddpm": {"train_steps": 7}}
    )
    assert config.settings.base_config().train_steps == 7  # generation.ddpm applies to every group's model
    with pytest.raises(ConfigError, match=r"generation.per_group.base must be one of \['ddpm', 'gan', "):
        GenerationConfig.parse({"generator": "per_group", "per_group": {"base": "per_group"}})
    with pytest.raises(ConfigError, match=r"generation.per_group.by"):
        GenerationConfig.parse({"generator": "per_group", "per_group": {"by": "cluster"}})
    image_to_image = GenerationConfig.parse(
        {"generator": "per_group", "ddpm": {"sampling": {"mode": "image_to_image"}}}
    ).settings
    with pytest.raises(ConfigError, match=r"per-group models make images from noise"):
        generator_class("per_group").check(image_to_image, NAMES)
