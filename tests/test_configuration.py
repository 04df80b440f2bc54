"""The configuration: base defaults equal the code's, environments state only what differs, overrides are soft."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kedro.config import OmegaConfigLoader

from generative_augmentation.core.config import ConfigError
from generative_augmentation.core.generation import GenerationConfig
from generative_augmentation.core.generators import GENERATORS
from generative_augmentation.core.preparation import DatasetConfig
from generative_augmentation.settings import CONFIG_LOADER_ARGS
from generative_augmentation.validation import PARAMETER_BLOCKS, check_parameters

PROJECT = Path(__file__).resolve().parents[1]
BLOCKS = {name: config for name, config in PARAMETER_BLOCKS.items() if name not in ("dataset", "generation")}
GLOBALS = PROJECT / "conf" / "base" / "globals.yml"
ENVIRONMENTS = ("retinamnist", "odir5k", "odir5k_7class", "image_folder", "brain_mri")


def parameters(env: str = "base", runtime_params: dict | None = None) -> dict:
    loader = OmegaConfigLoader(str(PROJECT / "conf"), env=env, runtime_params=runtime_params, **CONFIG_LOADER_ARGS)
    return loader["parameters"]


@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_every_base_parameter_equals_the_code_default(block: str) -> None:
    config_class = BLOCKS[block]
    assert config_class.parse(parameters()[block]).to_dict() == config_class().to_dict()


def test_the_generation_and_dataset_defaults_equal_the_code_defaults() -> None:
    base = parameters()
    generation = dict(base["generation"])
    blocks = {kind: generation.pop(kind) for kind in list(generation) if kind in GENERATORS}
    assert GenerationConfig.parse(generation).replace(settings=None).to_dict() == GenerationConfig().to_dict()
    for kind, block in blocks.items():
        assert GENERATORS[kind].settings_class.parse(block).to_dict() == GENERATORS[kind].settings_class().to_dict(), (
            kind
        )
    dataset = DatasetConfig.parse(base["dataset"])
    assert (dataset.classes, dataset.class_names) == ([], {})
    assert base["seed"] == 42


def leaves(tree: dict, prefix: str = "") -> dict:
    """``{"a.b.c": value}`` for every leaf of a nested mapping (an empty mapping is a leaf)."""
    out = {}
    for key, value in tree.items():
        out |= leaves(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {f"{prefix}{key}": value}
    return out


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_environment_parses_and_states_only_what_differs(env: str) -> None:
    merged = parameters(env)
    check_parameters(merged)
    for pattern, base in (("parameters*.yml", parameters()), ("globals.yml", yaml.safe_load(GLOBALS.read_text()))):
        base_leaves = leaves(base)
        for path in (PROJECT / "conf" / env).glob(pattern):
            for key, value in leaves(yaml.safe_load(path.read_text())).items():
                assert base_leaves.get(key, object()) != value, f"{path.name}: {key} repeats the base value {value!r}"


def test_an_environment_inherits_the_globals_it_does_not_state() -> None:
    loader = OmegaConfigLoader(str(PROJECT / "conf"), env="image_folder", **CONFIG_LOADER_ARGS)
    raw = loader["catalog"]["raw_images"]
    assert (raw["adapter"], raw["options"]) == ("image_folder", {})  # from base: the environment states neither
    assert raw["root"] == "data/01_raw/image_folder"


def test_a_one_key_override_changes_that_key_and_nothing_else() -> None:
    before = parameters("retinamnist")
    after = parameters(
        "retinamnist", {"generation": {"ddpm": {"sampling": {"steps": 7}}}, "evaluation": {"replicates": 9}}
    )
    assert after["generation"]["ddpm"]["sampling"] == {**before["generation"]["ddpm"]["sampling"], "steps": 7}
    assert after["evaluation"] == {**before["evaluation"], "replicates": 9}
    assert {key: value for key, value in after.items() if key not in ("generation", "evaluation")} == {
        key: value for key, value in before.items() if key not in ("generation", "evaluation")
    }


@pytest.mark.parametrize("preset", sorted((PROJECT / "conf" / "presets").glob("*.yml")), ids=lambda path: path.stem)
def test_every_preset_overrides_existing_parameters_with_valid_values(preset: Path) -> None:
    overrides = yaml.safe_load(preset.read_text())["run"]["params"]
    base = leaves(parameters())
    for name, value in leaves(overrides).items():
        assert name in base, f"{preset.name}: {name} is not a parameter"
        assert value != base[name], f"{preset.name}: {name} repeats the default"
    for env in ("base", "retinamnist"):
        merged = parameters(env, runtime_params=overrides)
        check_parameters(merged)
        assert {name: leaves(merged)[name] for name in leaves(overrides)} == leaves(overrides)


def test_an_every_class_arm_that_generation_classes_leaves_out_stops_the_run_at_its_start() -> None:
    arms = [*parameters("odir5k_7class")["study"]["arms"], "every_class_synthetic_x1"]
    merged = parameters("odir5k_7class", runtime_params={"study": {"arms": arms}})
    with pytest.raises(ConfigError, match=r"every_class_synthetic_x1 .*\['diabetes', 'normal'\].*generation\.classes"):
        check_parameters(merged)  # the environment generates the five disease classes only
    every = ["diabetes", "glaucoma", "cataract", "amd", "hypertension", "myopia", "normal"]
    merged = parameters("odir5k_7class", runtime_params={"study": {"arms": arms}, "generation": {"classes": every}})
    check_parameters(merged)


def test_an_augmented_class_that_generation_classes_leaves_out_stops_the_run_at_its_start() -> None:
    merged = parameters("odir5k_7class", runtime_params={"generation": {"classes": ["glaucoma", "cataract"]}})
    missing = r"synthetic_x1 draws synthetic images of \['amd', 'hypertension', 'myopia'\]"
    with pytest.raises(ConfigError, match=missing):
        check_parameters(merged)
