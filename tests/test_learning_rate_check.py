"""scripts/learning_rate_check.py: validation scores per learning rate, from train and validation images only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.conftest import load_script


def tiny_npz(path, with_test: bool = True) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in (("train", 36), ("val", 18), ("test", 18)):
        labels = np.arange(count) % 3
        images = rng.integers(0, 40, (count, 8, 8, 3)).astype(np.uint8)
        images += (labels * 80).astype(np.uint8)[:, None, None, None]  # the class is the brightness
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels[:, None]
    if not with_test:
        arrays = {key: value for key, value in arrays.items() if not key.startswith("test")}
    np.savez(path, **arrays)


def test_one_row_per_rate_and_seed_and_the_best_mean_is_reported(tmp_path, capsys) -> None:
    script = load_script("learning_rate_check")
    tiny_npz(tmp_path / "tiny.npz", with_test=False)  # the test split is never needed
    out = tmp_path / "rates.csv"
    args = [str(tmp_path / "tiny.npz"), "--rates", "0.01", "0.0001", "--seeds", "2", "--steps", "20", "--out", str(out)]
    script.main(args)
    table = pd.read_csv(out)
    assert sorted(zip(table.learning_rate, table.seed, strict=True)) == [(0.0001, 0), (0.0001, 1), (0.01, 0), (0.01, 1)]
    assert table.val_macro_f1.between(0, 1).all()
    best = table.groupby("learning_rate").val_macro_f1.mean().idxmax()
    assert f"learning rate {best:g}" in capsys.readouterr().out

    script.main([*args[:-1], str(tmp_path / "again.csv")])  # the same seeds give the same scores
    pd.testing.assert_series_equal(table.val_macro_f1, pd.read_csv(tmp_path / "again.csv").val_macro_f1)


def test_a_missing_learning_rate_list_is_refused(tmp_path) -> None:
    script = load_script("learning_rate_check")
    tiny_npz(tmp_path / "tiny.npz")
    with pytest.raises(SystemExit):
        script.main([str(tmp_path / "tiny.npz")])


def test_an_npz_without_validation_images_is_named(tmp_path) -> None:
    script = load_script("learning_rate_check")
    tiny_npz(tmp_path / "tiny.npz")
    arrays = dict(np.load(tmp_path / "tiny.npz"))
    np.savez(tmp_path / "no_val.npz", **{key: value for key, value in arrays.items() if not key.startswith("val")})
    with pytest.raises(SystemExit, match=r"no_val\.npz.*val_images"):
        script.main([str(tmp_path / "no_val.npz"), "--rates", "0.01"])
