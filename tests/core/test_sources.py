import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from generative_augmentation.core.sources import read_collection


def test_medmnist_keeps_official_splits(tiny_npz: Path) -> None:
    raw = read_collection("medmnist_npz", tiny_npz)
    assert raw.records.groupby("official_split").size().to_dict() == {"test": 18, "train": 44, "val": 14}
    assert raw.load_image(raw.records["source"].iloc[0]).shape == (16, 16, 3)
    assert raw.records["source_id"].is_unique


def test_odir_reads_per_image_label_and_patient(tiny_odir: Path) -> None:
    raw = read_collection("odir5k", tiny_odir)
    assert len(raw.records) == 120
    assert set(raw.records["class_code"]) == {"N", "G", "C", "A"}
    assert raw.records.groupby("patient_id").size().eq(2).all()
    assert set(raw.records["eye"]) == {"left", "right"}
    assert raw.records["official_split"].isna().all()


def test_image_folder_reads_grayscale_tree(tiny_image_folder: Path) -> None:
    raw = read_collection("image_folder", tiny_image_folder)
    assert raw.records.groupby("class_code").size().to_dict() == {"normal": 10, "pneumonia": 10}


def test_missing_root_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.*dataset.root"):
        read_collection("odir5k", tmp_path / "nowhere")


def test_unknown_adapter_is_refused(tiny_npz: Path) -> None:
    with pytest.raises(ValueError, match="Unknown dataset adapter 'dicom'"):
        read_collection("dicom", tiny_npz)


def test_an_unknown_adapter_is_refused_with_the_parameter_before_any_reading() -> None:
    from generative_augmentation.core.config import ConfigError
    from generative_augmentation.core.preparation import DatasetConfig

    with pytest.raises(
        ConfigError, match=r"dataset\.adapter must be one of \['image_folder', 'medmnist_npz', 'odir5k'\]"
    ):
        DatasetConfig.parse({"adapter": "dicom", "root": "data/01_raw"})


def test_csv_without_needed_column_names_it(tiny_odir: Path) -> None:
    table = pd.read_csv(tiny_odir / "full_df.csv").drop(columns=["labels"])
    table.to_csv(tiny_odir / "full_df.csv", index=False)
    with pytest.raises(KeyError, match=r"full_df.csv.*lacks the column\(s\) \['labels'\]"):
        read_collection("odir5k", tiny_odir)


def test_odir_label_with_two_classes_is_refused(tiny_odir: Path) -> None:
    table = pd.read_csv(tiny_odir / "full_df.csv")
    table.loc[3, "labels"] = "['G', 'C']"
    table.to_csv(tiny_odir / "full_df.csv", index=False)
    with pytest.raises(ValueError, match="row 3: column 'labels' must hold one label"):
        read_collection("odir5k", tiny_odir)


# --- MedMNIST .npz -------------------------------------------------------------------------------------------------


def rewrite_npz(path: Path, **arrays: np.ndarray) -> Path:
    """The npz at ``path`` with some of its arrays replaced."""
    with np.load(path) as archive:
        values = {key: archive[key] for key in archive.files}
    np.savez(path, **(values | arrays))
    return path


def npz_array(path: Path, key: str) -> np.ndarray:
    with np.load(path) as archive:
        return archive[key]


def test_medmnist_labels_and_images_of_different_lengths_are_refused(tiny_npz: Path) -> None:
    rewrite_npz(tiny_npz, train_labels=npz_array(tiny_npz, "train_labels")[:-1])
    with pytest.raises(ValueError, match=r"tiny.npz': train_labels has 43 labels for 44 train_images"):
        read_collection("medmnist_npz", tiny_npz)


def test_medmnist_negative_label_is_refused(tiny_npz: Path) -> None:
    labels = npz_array(tiny_npz, "val_labels").astype(np.int64)
    labels[2] = -1
    rewrite_npz(tiny_npz, val_labels=labels)
    with pytest.raises(ValueError, match=r"val_labels holds a negative label, -1 at index 2"):
        read_collection("medmnist_npz", tiny_npz)


def test_medmnist_non_integer_label_is_refused(tiny_npz: Path) -> None:
    labels = npz_array(tiny_npz, "test_labels").astype(np.float32)
    labels[4] = 1.5
    rewrite_npz(tiny_npz, test_labels=labels)
    with pytest.raises(ValueError, match=r"test_labels holds a non-integer label, 1.5 at index 4"):
        read_collection("medmnist_npz", tiny_npz)


def test_medmnist_whole_float_labels_are_read_as_classes(tiny_npz: Path) -> None:
    rewrite_npz(tiny_npz, train_labels=npz_array(tiny_npz, "train_labels").astype(np.float64))
    raw = read_collection("medmnist_npz", tiny_npz)
    assert set(raw.records["class_code"]) == {"0", "1", "2"}


@pytest.mark.parametrize("scale", [1 / 255, 1.0])
def test_medmnist_float_images_are_scaled_from_their_range(tiny_npz: Path, scale: float, caplog) -> None:
    original = npz_array(tiny_npz, "train_images")
    rewrite_npz(tiny_npz, train_images=original.astype(np.float32) * np.float32(scale))
    with caplog.at_level("INFO"):
        raw = read_collection("medmnist_npz", tiny_npz)
    np.testing.assert_array_equal(raw.load_image("train_images/5"), original[5])
    assert raw.load_image("train_images/5").dtype == np.uint8
    expected = "in [0, 1]: scaled by 255" if scale < 1 else "in [0, 255]: rounded"
    assert f"train_images is float32 {expected}" in caplog.text


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (lambda x: x.astype(np.float32) - 10, r"train_images is float32 with values in \[-10, 245\]; expected \["),
        (lambda x: np.where(x > 250, np.nan, x / 255), "train_images holds NaN or infinite values"),
        (lambda x: x.astype(np.uint16) * 16, r"train_images is uint16 with values in \[0, 4080\]; expected 8-bit"),
        (lambda x: x > 0, "train_images has dtype bool; expected uint8"),
    ],
)
def test_medmnist_images_out_of_range_are_refused(tiny_npz: Path, values, message: str) -> None:
    rewrite_npz(tiny_npz, train_images=values(npz_array(tiny_npz, "train_images")))
    with pytest.raises(ValueError, match=message):
        read_collection("medmnist_npz", tiny_npz)


@pytest.mark.parametrize(
    ("reshape", "shape"),
    [(lambda x: x.reshape(len(x), -1), "(44, 768)"), (lambda x: x.transpose(0, 3, 1, 2), "(44, 3, 16, 16)")],
)
def test_medmnist_images_of_the_wrong_shape_are_refused(tiny_npz: Path, reshape, shape: str) -> None:
    rewrite_npz(tiny_npz, train_images=reshape(npz_array(tiny_npz, "train_images")))
    expected = rf"train_images has shape {re.escape(shape)}; expected \(N, H, W\) or \(N, H, W, C\) with C = 1, 3 or 4"
    with pytest.raises(ValueError, match=expected):
        read_collection("medmnist_npz", tiny_npz)


def test_medmnist_grayscale_images_without_channel_axis_are_read(tiny_npz: Path) -> None:
    rewrite_npz(tiny_npz, train_images=npz_array(tiny_npz, "train_images")[..., 0])
    assert read_collection("medmnist_npz", tiny_npz).load_image("train_images/0").shape == (16, 16)


# --- ODIR-5K CSV ---------------------------------------------------------------------------------------------------


def set_cell(root: Path, row: int, column: str, value) -> None:
    table = pd.read_csv(root / "full_df.csv")
    table[column] = table[column].astype(object)
    table.loc[row, column] = value
    table.to_csv(root / "full_df.csv", index=False)


def add_row(root: Path, **values) -> None:
    table = pd.read_csv(root / "full_df.csv")
    pd.concat([table, pd.DataFrame([values])], ignore_index=True).to_csv(root / "full_df.csv", index=False)


def test_odir_image_listed_twice_with_conflicting_labels_is_refused(tiny_odir: Path) -> None:
    add_row(tiny_odir, ID=4, filename="4_left.jpg", labels="['G']")  # row 8 lists 4_left.jpg as N
    expected = r"full_df.csv' lists image '4_left.jpg' twice with different labels: 'N' \(row 8\) and 'G' \(row 120\)"
    with pytest.raises(ValueError, match=expected):
        read_collection("odir5k", tiny_odir)


def test_odir_image_listed_twice_with_the_same_label_is_kept_once(tiny_odir: Path, caplog) -> None:
    add_row(tiny_odir, ID=4, filename="4_left.jpg", labels="['N']")
    with caplog.at_level("WARNING"):
        raw = read_collection("odir5k", tiny_odir)
    assert len(raw.records) == 120 and raw.records["source_id"].is_unique
    kept = "lists 1 image(s) more than once with the same label; kept the first row of each: '4_left.jpg' (rows 8, 120)"
    assert kept in caplog.text


def test_odir_image_listed_twice_for_two_patients_is_refused(tiny_odir: Path) -> None:
    add_row(tiny_odir, ID=5, filename="4_left.jpg", labels="['N']")
    with pytest.raises(ValueError, match=r"image '4_left.jpg' twice with different patients \(ID\): '4' \(row 8\)"):
        read_collection("odir5k", tiny_odir)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("../x.jpg", "points outside the image folder"),
        ("sub/../../full_df.csv", "points outside the image folder"),
        ("/etc/hostname", "is an absolute path; give file names relative to the image folder"),
    ],
)
def test_odir_file_name_outside_the_image_folder_is_refused(tiny_odir: Path, value: str, message: str) -> None:
    set_cell(tiny_odir, 3, "filename", value)
    with pytest.raises(ValueError, match=rf"row 3: column 'filename' value {re.escape(repr(value))} {message}"):
        read_collection("odir5k", tiny_odir)


def test_odir_symbolic_link_out_of_the_image_folder_is_refused(tiny_odir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes((tiny_odir / "preprocessed_images" / "3_left.jpg").read_bytes())
    (tiny_odir / "preprocessed_images" / "link.jpg").symlink_to(outside)
    set_cell(tiny_odir, 3, "filename", "link.jpg")
    with pytest.raises(ValueError, match=r"row 3: column 'filename' value 'link.jpg' is a symbolic link to .*elsewh"):
        read_collection("odir5k", tiny_odir)


def test_odir_file_in_a_subfolder_of_the_image_folder_is_read(tiny_odir: Path) -> None:
    images = tiny_odir / "preprocessed_images"
    (images / "sub").mkdir()
    (images / "3_left.jpg").rename(images / "sub" / "3_left.jpg")
    set_cell(tiny_odir, 6, "filename", "sub/3_left.jpg")
    raw = read_collection("odir5k", tiny_odir)
    assert "sub__3_left" in set(raw.records["source_id"])
    assert raw.load_image(raw.records.loc[6, "source"]).size == (24, 24)


@pytest.mark.parametrize(
    ("label", "problem"), [("['a/b']", "contains '/'"), ("['..']", "is '..'"), ("['x:y']", "contains ':'")]
)
def test_odir_class_that_cannot_be_a_folder_name_is_refused(tiny_odir: Path, label: str, problem: str) -> None:
    set_cell(tiny_odir, 3, "labels", label)
    with pytest.raises(ValueError, match=rf"row 3: class .* in column 'labels' cannot be a folder name: it {problem}"):
        read_collection("odir5k", tiny_odir)


@pytest.mark.parametrize("column", ["ID", "filename", "labels"])
def test_odir_empty_cell_is_refused(tiny_odir: Path, column: str) -> None:
    set_cell(tiny_odir, 3, column, None)
    with pytest.raises(ValueError, match=rf"full_df.csv' row 3: column '{column}' is empty"):
        read_collection("odir5k", tiny_odir)


def test_odir_two_files_with_one_id_are_refused(tiny_odir: Path) -> None:
    images = tiny_odir / "preprocessed_images"
    (images / "3_left.png").write_bytes((images / "3_left.jpg").read_bytes())
    add_row(tiny_odir, ID=3, filename="3_left.png", labels="['A']")
    with pytest.raises(ValueError, match=r"would get the same image id '3_left': .*3_left.jpg' and .*3_left.png'"):
        read_collection("odir5k", tiny_odir)


# --- class-per-folder tree -----------------------------------------------------------------------------------------


def test_image_folder_png_with_jpg_name_decodes(tiny_image_folder: Path) -> None:
    (tiny_image_folder / "normal" / "0.png").rename(tiny_image_folder / "normal" / "0.jpg")
    raw = read_collection("image_folder", tiny_image_folder)
    source = raw.records.loc[raw.records["source"].str.endswith("0.jpg"), "source"].item()
    assert raw.load_image(source).size == (20, 20)


def test_image_folder_reads_official_train_and_test_folders(tiny_split_folder: Path) -> None:
    raw = read_collection("image_folder", tiny_split_folder)
    assert raw.records.groupby("official_split").size().to_dict() == {"test": 18, "train": 60}
    assert raw.records["source_id"].is_unique


def test_image_folder_reads_training_and_testing_as_split_folders(tiny_split_folder: Path, caplog) -> None:
    (tiny_split_folder / "train").rename(tiny_split_folder / "Training")
    (tiny_split_folder / "test").rename(tiny_split_folder / "Testing")
    with caplog.at_level("INFO"):
        raw = read_collection("image_folder", tiny_split_folder)
    assert raw.records.groupby("official_split").size().to_dict() == {"test": 18, "train": 60}
    assert set(raw.records["class_code"]) == {"glioma", "meningioma", "notumor"}
    assert "Reading folder 'Training' as the train split" in caplog.text


def test_image_folder_with_two_folders_for_one_split_is_refused(tiny_split_folder: Path) -> None:
    (tiny_split_folder / "val" / "glioma").mkdir(parents=True)
    (tiny_split_folder / "validation" / "glioma").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"Folders 'val' and 'validation' under .* both look like the val split"):
        read_collection("image_folder", tiny_split_folder)


def test_image_folder_ignores_hidden_folders_and_files(tiny_split_folder: Path) -> None:
    (tiny_split_folder / "train" / ".ipynb_checkpoints").mkdir()
    (tiny_split_folder / "train" / "glioma" / "._train-00.png").write_bytes(b"AppleDouble")
    raw = read_collection("image_folder", tiny_split_folder)
    assert set(raw.records["class_code"]) == {"glioma", "meningioma", "notumor"}
    assert len(raw.records) == 78


@pytest.mark.parametrize(("name", "problem"), [("bad:name", "contains ':'"), ("star*", "contains '*'")])
def test_image_folder_class_that_cannot_be_a_folder_name_is_refused(tiny_split_folder: Path, name, problem) -> None:
    (tiny_split_folder / "train" / "glioma").rename(tiny_split_folder / "train" / name)
    expected = rf"Class folder .*train/{re.escape(name)}' cannot be a folder name: it {problem}"
    with pytest.raises(ValueError, match=expected):
        read_collection("image_folder", tiny_split_folder)


def test_image_folder_two_files_with_one_stem_are_refused(tiny_split_folder: Path) -> None:
    folder = tiny_split_folder / "train" / "glioma"
    (folder / "train-00.jpg").write_bytes((folder / "train-00.png").read_bytes())
    with pytest.raises(ValueError, match=r"same image id 'train_glioma_train-00': .*train-00.jpg' and .*train-00.png'"):
        read_collection("image_folder", tiny_split_folder)


def test_image_folder_nested_files_get_distinct_ids(tiny_split_folder: Path) -> None:
    folder = tiny_split_folder / "train" / "glioma"
    (folder / "more").mkdir()
    (folder / "more" / "train-00.png").write_bytes((folder / "train-01.png").read_bytes())
    raw = read_collection("image_folder", tiny_split_folder)
    assert {"train_glioma_train-00", "train_glioma_more__train-00"} <= set(raw.records["source_id"])
