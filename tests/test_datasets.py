"""The project's Kedro datasets: atomic saves that never leave a partial output or destroy a complete one."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from generative_augmentation.datasets import AtomicDataset, AtomicFolderDataset, OptionalDataset


def images(count: int, value: int) -> dict[str, Image.Image]:
    return {
        f"c{index % 2}/img_{index:03d}": Image.fromarray(np.full((4, 4, 3), value, np.uint8)) for index in range(count)
    }


def folder(path: Path) -> AtomicFolderDataset:
    return AtomicFolderDataset(str(path), "pillow.ImageDataset", ".png")


def test_a_folder_is_replaced_whole_and_an_error_mid_save_keeps_the_old_one(tmp_path: Path) -> None:
    dataset = folder(tmp_path / "images")
    assert not dataset.exists()
    dataset.save(images(6, 10))
    assert dataset.exists() and len(list((tmp_path / "images").rglob("*.png"))) == 6
    dataset.save(images(4, 20))  # fewer partitions: no stale file of the old set survives
    assert sorted(dataset.load()) == sorted(images(4, 20)) and len(list((tmp_path / "images").rglob("*.png"))) == 4
    broken = {**images(4, 30), "c0/zz_broken": "not an image"}
    with pytest.raises(Exception):  # noqa: B017 - whatever the image writer raises
        dataset.save(broken)
    loaded = dataset.load()
    assert len(loaded) == 4 and np.asarray(loaded["c0/img_000"]())[0, 0, 0] == 20  # the old, complete folder
    assert not (tmp_path / "images").with_name(".previous-images").exists()


def test_a_swap_interrupted_between_its_two_renames_is_restored(tmp_path: Path) -> None:
    dataset = folder(tmp_path / "images")
    dataset.save(images(2, 5))
    (tmp_path / "images").rename(tmp_path / ".previous-images")  # the state a kill between the renames leaves
    assert dataset.exists() and len(dataset.load()) == 2


def test_a_kill_minus_nine_during_a_save_leaves_no_folder_that_looks_complete(tmp_path: Path) -> None:
    script = f"""
import time
import numpy as np
from PIL import Image
from generative_augmentation.datasets import AtomicFolderDataset

def slow(index):
    def make():
        time.sleep(0.02)
        return Image.fromarray(np.full((4, 4, 3), index % 255, np.uint8))
    return make

dataset = AtomicFolderDataset({str(tmp_path / "images")!r}, "pillow.ImageDataset", ".png")
print("saving", flush=True)
dataset.save({{f"c/{{index:04d}}": slow(index) for index in range(2000)}})
"""
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "saving"
    time.sleep(1.0)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = tmp_path / ".partial-images"
    assert partial.is_dir() and 0 < len(list(partial.rglob("*.png"))) < 2000  # killed mid-write
    dataset = folder(tmp_path / "images")
    assert not dataset.exists()  # so --only-missing-outputs runs the node again
    dataset.save(images(3, 1))
    assert len(dataset.load()) == 3 and not partial.exists()


def test_a_file_is_written_beside_and_moved_into_place(tmp_path: Path) -> None:
    dataset = AtomicDataset({"type": "pandas.ParquetDataset", "filepath": str(tmp_path / "table.parquet")})
    dataset.save(pd.DataFrame({"a": [1, 2]}))
    with pytest.raises(Exception):  # noqa: B017 - pyarrow refuses a column of arbitrary objects
        dataset.save(pd.DataFrame({"a": [object(), object()]}))
    assert dataset.load()["a"].tolist() == [1, 2] and not (tmp_path / ".partial-table.parquet").exists()
    with pytest.raises(ValueError, match="versioned"):
        AtomicDataset({"type": "pandas.CSVDataset", "filepath": str(tmp_path / "x.csv"), "versioned": True})
    absent = {"type": "pandas.CSVDataset", "filepath": str(tmp_path / "absent.csv")}
    optional = OptionalDataset({"type": "generative_augmentation.datasets.AtomicDataset", "dataset": absent})
    assert optional.load() is None


def test_model_weights_are_written_beside_and_moved_into_place(tmp_path: Path, monkeypatch) -> None:
    import torch
    from kedro.io.core import Version

    from generative_augmentation.datasets.safetensors_model import SafetensorsModelDataset

    dataset = SafetensorsModelDataset(str(tmp_path / "model.safetensors"), version=Version(None, "v1"))
    record = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "config": {"steps": 3}}
    moves = []
    original_mv = dataset._fs.mv
    monkeypatch.setattr(dataset._fs, "mv", lambda source, target: (moves.append(source), original_mv(source, target)))
    dataset.save(record)
    loaded = SafetensorsModelDataset(str(tmp_path / "model.safetensors"), version=Version("v1", None)).load()
    assert torch.equal(loaded["state_dict"]["w"], record["state_dict"]["w"]) and loaded["config"] == {"steps": 3}
    assert len(moves) == 1 and Path(moves[0]).name == ".partial-model.safetensors"  # written beside, then moved
    assert [path.name for path in (tmp_path / "model.safetensors" / "v1").iterdir()] == ["model.safetensors"]
