import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from generative_augmentation.core.config import ConfigError
from generative_augmentation.core.preparation import DatasetConfig, SplitConfig
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
    decoded, arrays, undecodable = decode_images(raw, records, IMAGE)
    manifest, summary, skipped = audit_leakage(assign_splits(decoded, split, seed), undecodable, split)
    return manifest, arrays, skipped, summary


NO_SKIPPED = pd.DataFrame(columns=["image_id", "source", "class_name", "split", "reason", "detail"])


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
    assert skipped["reason"].tolist() == ["undecodable"]
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
    message = rf"Leakage audit failed: 1 patient\(s\) in more than one split: '{first_patient}' \(test, train\)"
    for policy in ("fail", "drop_train_copies"):
        with pytest.raises(ValueError, match=message):
            audit_leakage(leaked, NO_SKIPPED, {"cross_split_duplicates": policy})


def test_identical_image_in_two_splits_fails_the_audit(tiny_npz: Path) -> None:
    manifest, *_ = prepare(tiny_npz, "medmnist_npz", split={"use_official": True})
    duplicated = manifest.copy()
    test_row = duplicated.index[duplicated["split"] == "test"][0]
    duplicated.loc[test_row, "content_hash"] = duplicated.loc[duplicated["split"] == "train", "content_hash"].iloc[0]
    message = r"(?s)1 image\(s\) sit in more than one split.*test 'test_images/0'.*train 'train_images/0'"
    with pytest.raises(ValueError, match=message):
        audit_leakage(duplicated, NO_SKIPPED, {})


def test_group_split_never_splits_a_group() -> None:
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 40, 200)
    labels = rng.integers(0, 3, 200)
    splits = stratified_group_split(labels, groups, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=1)
    frame = pd.DataFrame({"g": groups, "s": splits})
    assert frame.groupby("g")["s"].nunique().max() == 1


# --- bad inputs: they fail here, before any long work, naming what is at fault ------------------------------------


def test_label_outside_the_selected_classes_is_ignored(tiny_npz: Path, caplog) -> None:
    with np.load(tiny_npz) as archive:
        values = {key: archive[key] for key in archive.files}
    values["train_labels"][0] = 7
    np.savez(tiny_npz, **values)
    with caplog.at_level("INFO"):
        manifest, *_ = prepare(tiny_npz, "medmnist_npz", classes=["0", "1", "2"], split={"use_official": True})
    assert set(manifest["class_code"]) == {"0", "1", "2"} and len(manifest) == 75
    assert "Ignored 1 image(s) of class(es) ['7'], not in dataset.classes" in caplog.text


def test_png_with_jpg_name_is_decoded(tiny_odir: Path) -> None:
    image = Image.open(tiny_odir / "preprocessed_images" / "7_left.jpg")
    image.save(tiny_odir / "preprocessed_images" / "7_left.jpg", format="PNG")
    manifest, arrays, skipped, _ = prepare(tiny_odir, "odir5k")
    assert skipped.empty and arrays["7_left"].shape == (16, 16, 3)


def test_identical_image_in_two_class_folders_is_refused(tiny_split_folder: Path) -> None:
    train = tiny_split_folder / "train"
    shutil.copyfile(train / "glioma" / "train-03.png", train / "notumor" / "copy.png")
    raw = read_collection("image_folder", tiny_split_folder)
    records = select_classes(raw, dataset(tiny_split_folder, "image_folder"))
    expected = r"1 image\(s\) sit under two classes .*\n  .*glioma/train-03.png' \(glioma\) = .*notumor/copy.png'"
    with pytest.raises(ValueError, match=expected):
        decode_images(raw, records, IMAGE)


def test_missing_val_folder_is_carved_from_train(tiny_split_folder: Path, caplog) -> None:
    with caplog.at_level("INFO"):
        manifest, *_ = prepare(tiny_split_folder, "image_folder", split={"use_official": True})
    assert manifest.groupby("split").size().to_dict() == {"test": 18, "train": 51, "val": 9}
    assert manifest[manifest["split"] == "val"].groupby("class_name").size().to_dict() == {
        "glioma": 3,
        "meningioma": 3,
        "notumor": 3,
    }
    assert manifest.loc[manifest["split"] == "val", "source"].str.contains("/train/").all()
    assert "The official split has no val images: moved 9 of 60 train images (9 of 60 patients) to val" in caplog.text


def test_carved_val_keeps_identical_train_images_together(tiny_split_folder: Path) -> None:
    folder = tiny_split_folder / "train" / "glioma"
    for index in range(20):
        shutil.copyfile(folder / f"train-{index:02d}.png", folder / f"copy-{index:02d}.png")
    for seed in range(3):
        manifest, *_ = prepare(tiny_split_folder, "image_folder", split={"use_official": True}, seed=seed)
        assert manifest.groupby("content_hash")["split"].nunique().max() == 1
        assert (manifest["split"] == "val").sum() > 0


def test_val_carving_turned_off_names_the_parameter(tiny_split_folder: Path) -> None:
    message = (
        r"Split 'val' is empty: the dataset's official split has no val images and split.val_from_train is 0; "
        r"set split.val_from_train \(e.g. 0.15\) to carve val from train, or split.use_official: false"
    )
    with pytest.raises(ValueError, match=message):
        prepare(tiny_split_folder, "image_folder", split={"use_official": True, "val_from_train": 0})


def test_official_split_without_test_names_the_cure(tiny_split_folder: Path) -> None:
    shutil.rmtree(tiny_split_folder / "test")
    message = (
        r"Split 'test' is empty: the dataset's official split has no test images; add them, "
        r"or set split.use_official: false to split every image by split.ratios"
    )
    with pytest.raises(ValueError, match=message):
        prepare(tiny_split_folder, "image_folder", split={"use_official": True})


def test_ratio_split_too_small_names_the_ratios(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8), color=(10, 20, 30) if name == "a" else (200, 0, 0)).save(tmp_path / name / "1.png")
    message = r"Split 'test' is empty: split.ratios \{.*\} gave it no image of the 2 images \(2 patients\); raise its"
    with pytest.raises(ValueError, match=message):
        prepare(tmp_path, "image_folder")


def test_identical_images_across_official_splits_fail_the_audit_naming_the_files(tiny_split_folder: Path) -> None:
    shutil.copyfile(tiny_split_folder / "train/notumor/train-04.png", tiny_split_folder / "test/notumor/dup.png")
    message = (
        r"(?s)Leakage audit failed: 1 image\(s\) sit in more than one split .*"
        r"\n  test '[^']*test/notumor/dup.png' = (train|val) '[^']*train/notumor/train-04.png'.*"
        r"set split.cross_split_duplicates: drop_train_copies to drop the train copies and keep the test images"
    )
    with pytest.raises(ValueError, match=message):
        prepare(tiny_split_folder, "image_folder", split={"use_official": True})


def test_drop_train_copies_keeps_the_test_images_and_lists_the_dropped(tiny_split_folder: Path, caplog) -> None:
    pairs = [
        ("train/notumor/train-04.png", "test/notumor/dup-a.png"),
        ("train/glioma/train-07.png", "test/glioma/b.png"),
    ]
    for train_copy, test_copy in pairs:
        shutil.copyfile(tiny_split_folder / train_copy, tiny_split_folder / test_copy)
    split = {"use_official": True, "cross_split_duplicates": "drop_train_copies"}
    with caplog.at_level("WARNING"):
        manifest, arrays, skipped, summary = prepare(tiny_split_folder, "image_folder", split=split)
    sources = set(manifest["source"])
    for train_copy, test_copy in pairs:
        assert str(tiny_split_folder / test_copy) in sources and str(tiny_split_folder / train_copy) not in sources
    dropped = skipped[skipped["reason"] == "cross_split_duplicate"].sort_values("source")
    assert dropped["source"].tolist() == sorted(str(tiny_split_folder / train_copy) for train_copy, _ in pairs)
    assert dropped["detail"].str.startswith("identical to test image '").all()
    assert dropped["detail"].str.contains("dup-a.png|b.png").all()
    audit = summary.set_index("class_name")["dropped_duplicates"].to_dict()
    assert audit == {"glioma": 1, "meningioma": 0, "notumor": 1, "total": 2}
    assert "Dropped 2 cross-split duplicate(s)" in caplog.text
    assert len(manifest) == 78


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"val_from_train": 1.0}, r"Parameter split.val_from_train must be in \[0, 1\), got 1.0"),
        (
            {"cross_split_duplicates": "keep"},
            r"Parameter split.cross_split_duplicates must be one of \['fail', 'drop_train_copies'\], got 'keep'",
        ),
    ],
)
def test_bad_split_settings_are_refused(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SplitConfig.parse(values)


def test_class_name_that_cannot_be_a_folder_name_is_refused() -> None:
    message = r"Parameter dataset.class_names maps 'G' to 'glau/coma', which cannot be a folder name: it contains '/'"
    with pytest.raises(ConfigError, match=message):
        DatasetConfig.parse({"adapter": "odir5k", "root": "x", "class_names": {"G": "glau/coma"}})


def test_two_classes_with_one_name_are_refused(tiny_odir: Path) -> None:
    raw = read_collection("odir5k", tiny_odir)
    with pytest.raises(ConfigError, match=r"dataset.class_names gives classes 'G' and 'N' the same name 'N'"):
        select_classes(raw, dataset(tiny_odir, "odir5k", class_names={"G": "N"}))
