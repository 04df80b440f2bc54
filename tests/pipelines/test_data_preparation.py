from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from generative_augmentation.core.config import ConfigError
from generative_augmentation.core.preparation import SplitConfig
from generative_augmentation.core.sources import read_collection
from generative_augmentation.core.splits import stratified_group_split
from generative_augmentation.pipelines.data_preparation.nodes import (
    assign_splits,
    audit_leakage,
    decode_images,
    select_classes,
    write_working_images,
)

IMAGE = {"size": 16, "mode": "RGB"}
SPLIT = {"use_official": False, "ratios": {"train": 0.6, "val": 0.2, "test": 0.2}}


def dataset(root: Path, adapter: str, **values) -> dict:
    return {"adapter": adapter, "root": str(root), **values}


def prepare(root: Path, adapter: str, classes=None, split=SPLIT, seed=3):
    raw = read_collection(adapter, root)
    records = select_classes(raw, dataset(root, adapter, classes=classes or [], class_names={"G": "glaucoma"}))
    decoded, arrays, skipped = decode_images(raw, records, IMAGE)
    manifest, summary = audit_leakage(assign_splits(decoded, split, seed), skipped)
    return manifest, arrays, skipped, summary


def test_odir_split_is_patient_disjoint_and_stratified(tiny_odir: Path) -> None:
    manifest, arrays, _, summary = prepare(tiny_odir, "odir5k")
    assert manifest.groupby("patient_id")["split"].nunique().max() == 1
    fractions = manifest.groupby("split").size() / len(manifest)
    assert fractions["train"] == pytest.approx(0.6, abs=0.07)
    assert (manifest.groupby(["class_name", "split"]).size() > 0).all()
    assert set(manifest["class_name"]) == {"N", "glaucoma", "C", "A"}
    assert manifest.loc[manifest["class_code"] == "G", "class_name"].eq("glaucoma").all()
    assert summary.set_index("class_name").loc["total", "total"] == 120
    assert arrays[manifest["image_id"].iloc[0]].shape == (16, 16, 3)


def test_same_seed_same_split_other_seed_other_split(tiny_odir: Path) -> None:
    first, *_ = prepare(tiny_odir, "odir5k", seed=3)
    again, *_ = prepare(tiny_odir, "odir5k", seed=3)
    other, *_ = prepare(tiny_odir, "odir5k", seed=4)
    pd.testing.assert_frame_equal(first, again)
    assert not first.set_index("image_id")["split"].equals(other.set_index("image_id")["split"])


def test_class_selection_sets_labels_in_parameter_order(tiny_odir: Path) -> None:
    manifest, *_ = prepare(tiny_odir, "odir5k", classes=["G", "A"])
    assert manifest.groupby("class_code")["label"].first().to_dict() == {"G": 0, "A": 1}


def test_official_split_is_kept(tiny_npz: Path) -> None:
    manifest, *_ = prepare(tiny_npz, "medmnist_npz", split={"use_official": True})
    assert manifest.groupby("split").size().to_dict() == {"test": 18, "train": 44, "val": 14}


def test_working_images_are_partitioned_by_split_and_class(tiny_npz: Path) -> None:
    manifest, arrays, *_ = prepare(tiny_npz, "medmnist_npz", split={"use_official": True})
    partitions = write_working_images(manifest, arrays)
    assert len(partitions) == len(manifest)
    key = next(iter(partitions))
    assert key.split("/")[0] in {"train", "val", "test"} and partitions[key].size == (16, 16)


def test_grayscale_mode_gives_one_channel(tiny_image_folder: Path) -> None:
    raw = read_collection("image_folder", tiny_image_folder)
    records = select_classes(raw, dataset(tiny_image_folder, "image_folder"))
    _, arrays, _ = decode_images(raw, records, {"size": 12, "mode": "L"})
    assert next(iter(arrays.values())).shape == (12, 12, 1)


def test_unknown_class_is_named(tiny_odir: Path) -> None:
    raw = read_collection("odir5k", tiny_odir)
    with pytest.raises(ValueError, match=r"\['X'\] in parameter dataset.classes"):
        select_classes(raw, dataset(tiny_odir, "odir5k", classes=["G", "X"]))


def test_broken_image_is_skipped_and_counted(tiny_odir: Path) -> None:
    (tiny_odir / "preprocessed_images" / "5_left.jpg").write_bytes(b"not a jpeg")
    manifest, _, skipped, summary = prepare(tiny_odir, "odir5k")
    assert skipped["image_id"].tolist() == ["5_left"]
    assert "5_left" not in set(manifest["image_id"])
    assert summary.set_index("class_name").loc["total", "skipped_undecodable"] == 1


def test_class_left_empty_after_decoding_is_named(tiny_odir: Path) -> None:
    for path in (tiny_odir / "preprocessed_images").glob("*"):
        if int(path.stem.split("_")[0]) % 4 == 1:  # every G image
            path.write_bytes(b"broken")
    raw = read_collection("odir5k", tiny_odir)
    with pytest.raises(ValueError, match=r"\['G \(G\)'\] have no decodable image"):
        decode_images(raw, select_classes(raw, dataset(tiny_odir, "odir5k")), IMAGE)


@pytest.mark.parametrize(
    ("ratios", "message"),
    [
        ({"train": 0.7, "val": 0.2, "test": 0.2}, "Parameter split.ratios must add up to 1, got 1.1000"),
        ({"train": 0.7, "valid": 0.3}, r"Parameter split.ratios names unknown split\(s\) \['valid'\]"),
        ({"train": 1.2, "val": -0.2, "test": 0.0}, "Parameter split.ratios has a negative ratio"),
        ({"train": 0.9, "val": 0.1}, "Parameter split.ratios needs train > 0 and test > 0"),
    ],
)
def test_bad_split_ratios_are_refused(ratios: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SplitConfig.parse({"ratios": ratios})


def test_leak_of_a_patient_fails_the_audit(tiny_odir: Path) -> None:
    manifest, *_ = prepare(tiny_odir, "odir5k")
    leaked = manifest.copy()
    first_patient = leaked["patient_id"].iloc[0]
    rows = leaked.index[leaked["patient_id"] == first_patient]
    leaked.loc[rows[0], "split"] = "train"
    leaked.loc[rows[1], "split"] = "test"
    with pytest.raises(ValueError, match="Leakage audit failed: 1 patient_id"):
        audit_leakage(leaked, pd.DataFrame(columns=["class_name"]))


def test_identical_image_in_two_splits_fails_the_audit(tiny_npz: Path) -> None:
    manifest, *_ = prepare(tiny_npz, "medmnist_npz", split={"use_official": True})
    duplicated = manifest.copy()
    test_row = duplicated.index[duplicated["split"] == "test"][0]
    duplicated.loc[test_row, "content_hash"] = duplicated.loc[duplicated["split"] == "train", "content_hash"].iloc[0]
    with pytest.raises(ValueError, match="content_hash"):
        audit_leakage(duplicated, pd.DataFrame(columns=["class_name"]))


def test_group_split_never_splits_a_group() -> None:
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 40, 200)
    labels = rng.integers(0, 3, 200)
    splits = stratified_group_split(labels, groups, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=1)
    frame = pd.DataFrame({"g": groups, "s": splits})
    assert frame.groupby("g")["s"].nunique().max() == 1
