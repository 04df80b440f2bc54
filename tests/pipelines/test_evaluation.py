import numpy as np
import pandas as pd
import pytest
from PIL import Image

from generative_augmentation.core.images import array_to_pil
from generative_augmentation.pipelines.evaluation.nodes import score_scenario, train_scenario, training_arrays
from generative_augmentation.pipelines.evaluation.report import build_report, verdict
from generative_augmentation.pipelines.evaluation.study import (
    collect_scenario_metrics,
    mean_interval,
    ratio_curves,
    recall_bars,
    summarise_scenarios,
)
from tests.conftest import class_image

IMAGE = {"size": 16, "mode": "RGB"}
CLASSIFIER = {"architecture": "small_cnn", "epochs": 2, "batch_size": 16, "patience": 2}


@pytest.fixture
def real_data() -> tuple[pd.DataFrame, dict[str, Image.Image]]:
    rng = np.random.default_rng(0)
    rows, images = [], {}
    for label, name in enumerate(["a", "b", "c"]):
        for split, n in (("train", 12 - 3 * label), ("val", 4), ("test", 5)):
            for i in range(n):
                image_id = f"{split}_{name}_{i}"
                key = f"{split}/{name}/{image_id}"
                images[key] = array_to_pil(class_image(label, rng, 16))
                rows.append(
                    {"image_id": image_id, "label": label, "class_name": name, "split": split, "image_key": key}
                )
    return pd.DataFrame(rows), images


def training_manifest(manifest: pd.DataFrame) -> pd.DataFrame:
    train = manifest[manifest["split"] == "train"]
    return train.assign(origin="real", augment_seed=-1)[
        ["image_id", "label", "class_name", "origin", "image_key", "augment_seed"]
    ]


def test_train_and_score_every_seed(real_data) -> None:
    manifest, images = real_data
    weights, history = train_scenario(
        training_manifest(manifest), manifest, images, CLASSIFIER, {"seeds": [0, 1]}, IMAGE
    )
    assert weights["config"]["seeds"] == [0, 1] and set(history["seed"]) == {0, 1}
    assert {k.split(".")[0] for k in weights["state_dict"]} == {"seed_0", "seed_1"}
    table, mlflow_metrics, figure, predictions = score_scenario(weights, manifest, images, IMAGE)
    assert set(table["seed"]) == {0, 1}
    assert {"f1", "balanced_accuracy", "auc", "recall", "precision"} <= set(table["metric"])
    assert set(table["class_name"]) == {"a", "b", "c", "macro"}
    assert len(predictions) == 2 * 15 and "test_f1" in mlflow_metrics
    assert figure.axes


def test_same_seed_same_scores(real_data) -> None:
    manifest, images = real_data
    train = training_manifest(manifest)
    weights = [train_scenario(train, manifest, images, CLASSIFIER, {"seeds": [3]}, IMAGE)[0] for _ in range(2)]
    runs = [score_scenario(w, manifest, images, IMAGE)[0] for w in weights]
    pd.testing.assert_frame_equal(runs[0], runs[1])


def test_empty_seed_list_is_refused(real_data) -> None:
    manifest, images = real_data
    with pytest.raises(ValueError, match="evaluation.seeds is empty"):
        train_scenario(training_manifest(manifest), manifest, images, CLASSIFIER, {"seeds": []}, IMAGE)


def test_traditional_copies_are_seeded_transforms_of_their_source(real_data) -> None:
    manifest, images = real_data
    base = training_manifest(manifest).iloc[:2]
    copies = base.assign(origin="traditional", augment_seed=[11, 12])
    table = pd.concat([base, copies, copies.iloc[:1]], ignore_index=True)
    arrays, labels = training_arrays(table, images, None, IMAGE)
    assert arrays.shape == (5, 16, 16, 3) and labels.tolist() == [0, 0, 0, 0, 0]
    assert not np.array_equal(arrays[0], arrays[2])
    assert np.array_equal(arrays[2], arrays[4])


def test_unknown_origin_is_named(real_data) -> None:
    manifest, images = real_data
    table = training_manifest(manifest).assign(origin="gan")
    with pytest.raises(ValueError, match=r"Unknown origin\(s\) \['gan'\]"):
        training_arrays(table, images, None, IMAGE)


def test_interval_and_paired_difference_on_known_values() -> None:
    mean, low, high = mean_interval(np.array([1.0, 2.0, 3.0]), 0.95)
    assert mean == 2.0 and high - mean == pytest.approx(4.302653 * 1 / np.sqrt(3), rel=1e-5)
    rows = []
    for scenario, kind, ratio, values in (("real", "real", 0.0, [0.5, 0.6, 0.7]),
                                          ("synthetic_x1", "synthetic", 1.0, [0.6, 0.7, 0.8]),
                                          ("traditional_x1", "traditional", 1.0, [0.4, 0.65, 0.7])):  # fmt: skip
        rows += [{"scenario": scenario, "kind": kind, "ratio": ratio, "seed": s, "metric": "f1", "class_name": "macro",
                  "value": v} for s, v in enumerate(values)]  # fmt: skip
    summary = summarise_scenarios(pd.DataFrame(rows), {"confidence": 0.95}).set_index("scenario")
    assert summary.loc["synthetic_x1", "diff_vs_real"] == pytest.approx(0.1)
    assert summary.loc["synthetic_x1", "wins"] and not summary.loc["traditional_x1", "wins"]
    assert not summary.loc["traditional_x1", "loses"] and not summary.loc["real", "wins"]
    assert "synthetic_x1" in verdict(summary.reset_index())


def test_collect_adds_minority_rows_and_report_renders(real_data) -> None:
    manifest, _ = real_data
    per_class = [{"seed": 0, "metric": m, "class_name": c, "value": v}
                 for m in ("recall", "precision", "f1") for c, v in (("a", 0.9), ("b", 0.5), ("c", 0.3))]  # fmt: skip
    macro = [{"seed": 0, "metric": m, "class_name": "macro", "value": 0.6} for m in ("f1", "balanced_accuracy", "auc")]
    table = pd.DataFrame(per_class + macro)
    scenarios = {"real": {"kind": "real", "ratio": 0.0}, "synthetic_x1": {"kind": "synthetic", "ratio": 1.0}}
    metrics = collect_scenario_metrics(scenarios, manifest, real=table, synthetic_x1=table)
    minority = metrics[(metrics["class_name"] == "minority") & (metrics["metric"] == "recall")]
    assert minority["value"].tolist() == pytest.approx([0.4, 0.4])
    summary = summarise_scenarios(metrics, {})
    sizes = pd.DataFrame({"scenario": ["real", "synthetic_x1"], "train_size": [21, 30]})
    html = build_report(summary, sizes, pd.DataFrame(), pd.DataFrame({"class_name": ["a"]}), ratio_curves(summary),
                        recall_bars(summary, manifest), ratio_curves(summary), {"real": np.eye(3, dtype=int)},
                        ["a", "b", "c"], "Study")  # fmt: skip
    assert html.startswith("<!doctype html>") and html.count("data:image/png;base64,") == 4
    assert "synthetic_x1" in html and "minority-class recall" in html
