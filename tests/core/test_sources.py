from pathlib import Path

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
