"""The brain MRI study (`--env=brain_mri`) on the real files of ../shared/data: its traps, as a new user meets them.

The release has test images whose bytes equal train images', a PNG saved as .jpg, and RGB/RGBA files among
grayscale ones. The test copies those files (and a few others per class) into a small class-per-folder tree and
runs data_preparation's nodes with the environment's own parameters.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from kedro.config import OmegaConfigLoader

from generative_augmentation.core.sources import read_collection
from generative_augmentation.pipelines.data_preparation.nodes import (
    assign_splits,
    audit_leakage,
    decode_images,
    select_classes,
)
from generative_augmentation.settings import CONFIG_LOADER_ARGS

PROJECT = Path(__file__).resolve().parents[1]
SUBSET = PROJECT.parent / "shared" / "data" / "brain_tumor_mri_subset"
pytestmark = pytest.mark.skipif(not SUBSET.is_dir(), reason="../shared/data/brain_tumor_mri_subset is absent")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, str]]]:
    """The byte-identical (train, test) pairs, the PNG named .jpg, and the first 6 other images per class and split."""
    train = {digest(path): path for path in sorted((SUBSET / "train").rglob("*.jpg"))}
    pairs = [(train[digest(path)], path) for path in sorted((SUBSET / "test").rglob("*.jpg")) if digest(path) in train]
    chosen = {path for pair in pairs for path in pair} | {SUBSET / "train/notumor/Tr-no_1011.jpg"}
    for split in ("train", "test"):
        for folder in sorted((SUBSET / split).iterdir()):
            chosen |= set(sorted(folder.glob("*.jpg"))[:6])
    root = tmp_path_factory.mktemp("brain_mri")
    for path in chosen:
        target = root / path.relative_to(SUBSET)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    relative = [(str(a.relative_to(SUBSET)), str(b.relative_to(SUBSET))) for a, b in pairs]
    return root, relative


def environment_parameters() -> dict:
    loader = OmegaConfigLoader(str(PROJECT / "conf"), env="brain_mri", **CONFIG_LOADER_ARGS)
    return loader["parameters"]


def prepare(root: Path, split: dict):
    parameters = environment_parameters()
    raw = read_collection("image_folder", root)
    records = select_classes(raw, {**parameters["dataset"], "adapter": "image_folder", "root": str(root)})
    decoded, arrays, undecodable = decode_images(raw, records, parameters["image"])
    return audit_leakage(assign_splits(decoded, split, parameters["seed"]), undecodable, split), arrays, undecodable


def test_the_release_holds_seventeen_test_images_whose_bytes_equal_a_train_image(small_tree) -> None:
    _, pairs = small_tree
    assert len({test for _, test in pairs}) == 17


def test_the_environment_drops_the_train_copies_keeps_the_test_images_and_lists_them(small_tree) -> None:
    root, pairs = small_tree
    split = environment_parameters()["split"]
    assert split["cross_split_duplicates"] == "drop_train_copies"
    (manifest, summary, skipped), arrays, undecodable = prepare(root, split)
    sources = set(manifest["source"])
    assert all(str(root / test) in sources and str(root / train) not in sources for train, test in pairs)
    dropped = set(skipped.loc[skipped["reason"] == "cross_split_duplicate", "source"])
    assert {str(root / train) for train, _ in pairs} <= dropped
    assert summary.set_index("class_name").loc["total", "dropped_duplicates"] == len(dropped)
    assert len(undecodable) == 0  # the PNG named .jpg and the RGBA file decode
    assert str(root / "train/notumor/Tr-no_1011.jpg") in sources
    shapes = {tuple(arrays[image_id].shape) for image_id in manifest["image_id"]}
    assert shapes == {(32, 32, 1)}  # grayscale at the working size, whatever the file's mode and size


def test_without_the_setting_the_audit_stops_and_names_the_files(small_tree) -> None:
    root, pairs = small_tree
    split = {**environment_parameters()["split"], "cross_split_duplicates": "fail"}
    train, test = pairs[0]
    with pytest.raises(ValueError, match=r"(?s)Leakage audit failed: .*" + Path(test).name + ".*" + Path(train).name):
        prepare(root, split)
