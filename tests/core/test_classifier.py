"""Classifiers: architectures, the step-budget training loop with selection on validation, records."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from generative_augmentation.core.classifier import (
    ClassifierConfig,
    build_classifier,
    class_weight_vector,
    classifier_from_record,
    classifier_record,
    mixed_batches,
    phased_batches,
    predict_proba,
    train_classifier,
    weighted_cross_entropy,
)
from generative_augmentation.core.config import ConfigError
from generative_augmentation.core.images import AugmentationConfig, ImageSpec, to_unit_tensor
from tests.conftest import class_image


def easy_data(per_class: int, classes: int = 3, seed: int = 0, size: int = 16):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    return np.stack([class_image(int(y), rng, size) for y in labels]), labels


@pytest.mark.parametrize("architecture", ["small_cnn", "resnet18", "vgg19"])
def test_architectures_give_logits_and_features(architecture: str) -> None:
    model = build_classifier(ClassifierConfig(architecture=architecture), num_classes=4, image_size=16).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 16, 16))
        features = model.forward_features(torch.rand(2, 3, 16, 16))
    assert logits.shape == (2, 4)
    assert features.shape[0] == 2 and features.ndim == 2


def test_efficientnet_lite0_loads_offline_imagenet_weights_and_takes_grayscale() -> None:
    pretrained = build_classifier(ClassifierConfig(architecture="efficientnet_lite0"), 3, 32)
    random = build_classifier(ClassifierConfig(architecture="efficientnet_lite0", pretrained=False), 3, 32)
    name = "backbone.network._conv_stem.weight"
    assert not torch.equal(pretrained.state_dict()[name], random.state_dict()[name])
    assert pretrained.input_size == 64
    grey = build_classifier(ClassifierConfig(architecture="efficientnet_lite0", pretrained=False), 2, 32, in_channels=1)
    assert grey.eval()(torch.rand(2, 1, 32, 32)).shape == (2, 2)


def test_grayscale_input_is_supported() -> None:
    model = build_classifier(ClassifierConfig(), 2, 16, in_channels=1)
    assert model(torch.rand(3, 1, 16, 16)).shape == (3, 2)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"architecture": "alexnet"}, r"classifier.architecture must be one of \['small_cnn'"),
        ({"epochs": 3}, r"Unknown parameter\(s\) classifier.epochs"),
        ({"steps": 0}, r"classifier.steps must be at least 1, got 0"),
        ({"batch_size": 0}, r"classifier.batch_size must be at least 1, got 0"),
        ({"learning_rate": -1}, r"classifier.learning_rate must be positive"),
        ({"class_weights": "inverse"}, r"classifier.class_weights"),
        ({"keep": "best"}, r"classifier.keep must be one of \[.final., .best_val.\]"),
    ],
)
def test_bad_classifier_parameters_are_named(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ClassifierConfig.parse(values)


def test_training_learns_and_restores_the_best_weights_on_validation() -> None:
    train, val = easy_data(20), easy_data(6, seed=1)
    config = ClassifierConfig(steps=40, eval_every=5, batch_size=16, learning_rate=3e-3, keep="best_val", patience=8)
    model, result = train_classifier(train, val, config, num_classes=3, seed=0, progress=False)
    assert result.best_val_macro_f1 >= 0.9
    assert result.best_val_macro_f1 == max(entry["val_macro_f1"] for entry in result.history)
    assert [entry["step"] for entry in result.history if entry["kept"]] == [result.best_step]
    assert [entry["step"] for entry in result.history][:2] == [5, 10] and len(result.losses) <= 40
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor.cpu(), result.state_dict[name])
    proba = predict_proba(model, val[0])
    assert proba.shape == (18, 3) and np.allclose(proba.sum(1), 1, atol=1e-5)


def test_every_arm_gets_the_same_number_of_optimiser_steps_whatever_its_size() -> None:
    val = easy_data(3, seed=1)
    config = ClassifierConfig(steps=12, eval_every=4, batch_size=8, patience=100)
    small = train_classifier(easy_data(4), val, config, 3, seed=0, progress=False)[1]
    large = train_classifier(easy_data(40), val, config, 3, seed=0, progress=False)[1]
    assert len(small.losses) == len(large.losses) == 12


def test_early_stopping_after_patience_evaluations_without_improvement() -> None:
    train, val = easy_data(10), easy_data(3, seed=1)
    config = ClassifierConfig(steps=200, eval_every=2, batch_size=8, keep="best_val", patience=2, learning_rate=1e-9)
    _, result = train_classifier(train, val, config, 3, seed=0, progress=False)
    assert (
        len(result.losses) < 200
        and len(result.history) == result.history.index(max(result.history, key=lambda e: e["val_macro_f1"])) + 3
    )


def test_keep_final_trains_every_step_and_returns_the_last_weights() -> None:
    train, val = easy_data(10), easy_data(3, seed=1)
    config = ClassifierConfig(steps=30, eval_every=4, batch_size=8, keep="final", patience=1, learning_rate=1e-9)
    model, result = train_classifier(train, val, config, 3, seed=0, progress=False)
    assert len(result.losses) == 30 and result.best_step == 30  # a flat validation score stops nothing
    assert [entry["step"] for entry in result.history] == [4, 8, 12, 16, 20, 24, 28, 30]
    assert result.best_val_macro_f1 == result.history[-1]["val_macro_f1"]
    assert [entry["kept"] for entry in result.history] == [False] * 7 + [True]
    moving = config.replace(learning_rate=3e-2)
    final = train_classifier(train, val, moving, 3, seed=0, progress=False)[1]
    best = train_classifier(train, val, moving.replace(keep="best_val", patience=100), 3, seed=0, progress=False)[1]
    scored_once = moving.replace(keep="best_val", eval_every=30)  # its only candidate: the weights after step 30
    last = train_classifier(train, val, scored_once, 3, seed=0, progress=False)[1]
    assert best.best_step < 30  # so the final weights are not the best ones here
    assert all(torch.equal(final.state_dict[name], tensor) for name, tensor in last.state_dict.items())
    assert any(not torch.equal(final.state_dict[name], tensor) for name, tensor in best.state_dict.items())


def test_same_seed_same_weights_other_seed_other_weights_with_augmentation() -> None:
    train, val = easy_data(8), easy_data(3, seed=1)
    config = ClassifierConfig(steps=6, eval_every=3, batch_size=8)
    augmentation = AugmentationConfig(vertical_flip=True)
    runs = [
        train_classifier(train, val, config, 3, seed=5, augmentation=augmentation, progress=False)[1] for _ in range(2)
    ]
    other = train_classifier(train, val, config, 3, seed=6, augmentation=augmentation, progress=False)[1]
    assert runs[0].losses == runs[1].losses and runs[0].losses != other.losses
    for name in runs[0].state_dict:
        assert torch.equal(runs[0].state_dict[name], runs[1].state_dict[name])


def test_records_rebuild_the_classifier_and_local_weights_load(tmp_path: Path) -> None:
    source = build_classifier(ClassifierConfig(), 3, 16)
    record = classifier_record(
        {f"replicate_0.{k}": v for k, v in source.state_dict().items()},
        ClassifierConfig(),
        ["a", "b", "c"],
        ImageSpec(size=16),
    )
    rebuilt = classifier_from_record(record, "replicate_0.")
    assert torch.equal(rebuilt.head.weight, source.head.weight)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "w.safetensors")
    loaded = build_classifier(ClassifierConfig(weights_path=str(tmp_path / "w.safetensors")), 3, 16)
    assert torch.equal(loaded.head.weight, source.head.weight)
    with pytest.raises(FileNotFoundError, match=r"missing.pt.*classifier.weights_path"):
        build_classifier(ClassifierConfig(weights_path=str(tmp_path / "missing.pt")), 3, 16)


def test_balanced_class_weights() -> None:
    assert class_weight_vector(np.array([0, 0, 0, 1]), 3).tolist() == pytest.approx([4 / 9, 4 / 3, 0.0])


def test_read_only_images_convert_without_warning_and_keep_values() -> None:
    images = np.arange(2 * 3 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 3)
    images.flags.writeable = False
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensor = to_unit_tensor(images)
    assert tensor.shape == (2, 3, 3, 3)
    assert torch.allclose(tensor.permute(0, 2, 3, 1) * 255.0, torch.from_numpy(images.copy()).float())


SYNTHETIC = np.array([False] * 6 + [True] * 4)  # rows 0-5 real, 6-9 synthetic


def test_mixed_batches_draw_synthetic_rows_with_the_given_probability_and_repeat_by_seed() -> None:
    sample = mixed_batches(SYNTHETIC, 0.25, batch_size=4, seed=3)
    drawn = np.concatenate([sample(step) for step in range(500)])
    assert 0.2 < SYNTHETIC[drawn].mean() < 0.3
    again = mixed_batches(SYNTHETIC, 0.25, batch_size=4, seed=3)
    assert all(np.array_equal(sample(step), again(step)) for step in range(20))
    with pytest.raises(ValueError, match="needs both real and synthetic"):
        mixed_batches(np.zeros(5, dtype=bool), 0.5, 4, 0)


def test_phased_batches_pretrain_on_synthetic_rows_then_fine_tune_on_real_rows() -> None:
    sample = phased_batches(SYNTHETIC, pretrain_steps=5, batch_size=4, seed=1)
    early = np.concatenate([sample(step) for step in range(5)])
    late = np.concatenate([sample(step) for step in range(5, 40)])
    assert SYNTHETIC[early].all() and not SYNTHETIC[late].any()
    assert set(late) == set(range(6)) and set(early) == set(range(6, 10))  # every row of each kind is used
    with pytest.raises(ValueError, match="needs both real and synthetic"):
        phased_batches(np.ones(5, dtype=bool), 2, 4, 0)


def test_row_weights_scale_each_image_loss_on_top_of_class_weights() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    per_image = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    class_weights = torch.tensor([1.0, 3.0])
    assert torch.allclose(
        weighted_cross_entropy(logits, labels, class_weights, None),
        torch.nn.functional.cross_entropy(logits, labels, weight=class_weights),
    )
    rows = torch.tensor([1.0, 0.5, 0.0])  # the last image (class 1) does not count at all
    expected = (per_image[0] * 1.0 + per_image[1] * 0.5) / 1.5
    assert torch.allclose(weighted_cross_entropy(logits, labels, class_weights, rows), expected)


def test_soft_targets_replace_the_one_hot_labels_and_keep_the_class_and_row_weights() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    class_weights, rows = torch.tensor([1.0, 3.0]), torch.tensor([1.0, 0.5, 1.0])
    one_hot = torch.nn.functional.one_hot(labels, 2).float()
    assert torch.allclose(  # one-hot targets are the hard labels
        weighted_cross_entropy(logits, labels, class_weights, rows, one_hot),
        weighted_cross_entropy(logits, labels, class_weights, rows),
    )
    soft = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]])
    log_p = torch.log_softmax(logits, dim=1)
    per_image = -(soft * log_p).sum(dim=1)  # cross-entropy against the soft rows: log 2 + ... on the first
    weights = rows * class_weights[labels]
    expected = (per_image * weights).sum() / weights.sum()
    assert torch.allclose(weighted_cross_entropy(logits, labels, class_weights, rows, soft), expected)
    assert torch.allclose(weighted_cross_entropy(logits, labels, None, None, soft), per_image.mean())


def test_soft_targets_train_and_bad_ones_are_named() -> None:
    train, val = easy_data(8), easy_data(3, seed=1)
    config = ClassifierConfig(steps=6, eval_every=3, batch_size=24, patience=100)
    hard = train_classifier(train, val, config, 3, seed=0, progress=False)[1]
    one_hot = np.eye(3, dtype=np.float32)[train[1]]
    same = train_classifier(train, val, config, 3, seed=0, progress=False, targets=one_hot)[1]
    assert np.allclose(hard.losses, same.losses, rtol=1e-5)
    uniform = np.full((24, 3), 1 / 3, dtype=np.float32)
    taught = train_classifier(train, val, config, 3, seed=0, progress=False, targets=uniform)[1]
    assert min(taught.losses) >= np.log(3) - 1e-4  # uniform targets: no prediction brings the loss below log 3
    assert min(hard.losses) < np.log(3)
    with pytest.raises(ValueError, match=r"Soft targets of shape \(24, 2\) for 24 training images and 3 classes"):
        train_classifier(train, val, config, 3, seed=0, progress=False, targets=np.full((24, 2), 0.5))
    with pytest.raises(ValueError, match="every row must sum to 1"):
        train_classifier(train, val, config, 3, seed=0, progress=False, targets=np.ones((24, 3)))


def test_row_weights_of_one_change_nothing_and_other_weights_change_training() -> None:
    train, val = easy_data(8), easy_data(3, seed=1)
    config = ClassifierConfig(steps=6, eval_every=3, batch_size=24, patience=100)
    plain = train_classifier(train, val, config, 3, seed=0, progress=False)[1]
    ones = train_classifier(train, val, config, 3, seed=0, progress=False, row_weights=np.ones(24))[1]
    assert np.allclose(plain.losses, ones.losses, rtol=1e-6)
    lighter = np.where(train[1] == 2, 0.1, 1.0)
    weighted = train_classifier(train, val, config, 3, seed=0, progress=False, row_weights=lighter)[1]
    assert not np.allclose(plain.losses, weighted.losses)
    with pytest.raises(ValueError, match="3 row weights for 24 training images"):
        train_classifier(train, val, config, 3, seed=0, progress=False, row_weights=np.ones(3))


def test_an_arm_recipe_picks_its_batches_and_loss_weights() -> None:
    from generative_augmentation.core.evaluation import synthetic_use
    from generative_augmentation.core.scenarios import ScenarioConfig

    config = ClassifierConfig(steps=10, batch_size=4)
    assert synthetic_use(ScenarioConfig(kind="synthetic", ratio=1.0), SYNTHETIC, config, 10, 0) == (None,) * 3
    assert synthetic_use(None, SYNTHETIC, config, 10, 0) == (None,) * 3
    recipe = ScenarioConfig(kind="synthetic", ratio=1.0, pretrain_share=0.3, synthetic_loss_weight=0.5)
    batches, weights, apart = synthetic_use(recipe, SYNTHETIC, config, 10, 0)
    assert apart is None
    assert SYNTHETIC[batches(2)].all() and not SYNTHETIC[batches(3)].any()  # 3 of the 10 steps pre-train
    assert weights.tolist() == [1.0] * 6 + [0.5] * 4
    split = ScenarioConfig(kind="synthetic", ratio=1.0, synthetic_batch_norm=True)
    assert synthetic_use(split, SYNTHETIC, config, 10, 0)[2] is SYNTHETIC
    mixed, *_ = synthetic_use(
        ScenarioConfig(kind="synthetic", ratio=1.0, synthetic_probability=0.5), SYNTHETIC, config, 10, 0
    )
    assert SYNTHETIC[np.concatenate([mixed(step) for step in range(50)])].any()


def test_study_classifiers_do_not_depend_on_the_ambient_thread_count() -> None:
    from generative_augmentation.core.evaluation import train_replicates

    train, val = easy_data(8), easy_data(3, seed=1)
    config = ClassifierConfig(steps=4, eval_every=2, batch_size=8, patience=100)
    image = ImageSpec(size=16, mode="RGB")
    previous = torch.get_num_threads()
    records = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            records.append(train_replicates(train, val, config, None, {0: 5}, ["a", "b", "c"], image, "arm")[0])
    finally:
        torch.set_num_threads(previous)
    assert records[0]["state_dict"].keys() == records[1]["state_dict"].keys()
    assert all(torch.equal(records[0]["state_dict"][k], records[1]["state_dict"][k]) for k in records[0]["state_dict"])


def test_rows_normalised_apart_never_enter_the_running_statistics() -> None:
    from generative_augmentation.core.classifier import forward_split_norm

    torch.manual_seed(0)
    model = build_classifier(ClassifierConfig(width=4), 3, 16, 3).train()
    real = torch.rand(6, 3, 16, 16)
    synthetic = torch.rand(4, 3, 16, 16) + 5.0  # far brighter: their statistics would move the running mean a lot
    batch, apart = torch.cat([real, synthetic]), torch.tensor([False] * 6 + [True] * 4)
    reference = copy.deepcopy(model)
    torch.manual_seed(1)  # the same dropout draws for the real rows, which go first
    logits = forward_split_norm(model, batch, apart)
    torch.manual_seed(1)
    expected_real = reference(real)  # the real rows alone, through an identical copy: same logits, same statistics
    assert torch.allclose(logits[:6], expected_real, atol=1e-5)
    for mine, theirs in zip(model.modules(), reference.modules(), strict=True):
        if isinstance(mine, torch.nn.BatchNorm2d):
            assert torch.allclose(mine.running_mean, theirs.running_mean) and mine.momentum == theirs.momentum
            assert mine.num_batches_tracked == theirs.num_batches_tracked == 1  # one batch per step, not two
    logits.sum().backward()  # one graph through both groups
    assert all(parameter.grad is not None for parameter in model.parameters())
    joint = copy.deepcopy(reference)
    joint(batch)  # normalised together, the bright rows do move the running statistics
    first = next(m for m in joint.modules() if isinstance(m, torch.nn.BatchNorm2d))
    mine = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.allclose(first.running_mean, mine.running_mean)


def test_batched_augmentation_off_is_the_identity_and_flips_mirror_whole_images() -> None:
    torch.manual_seed(0)
    batch = torch.rand(16, 3, 12, 12)
    off = AugmentationConfig(horizontal_flip=False, rotation_degrees=0.0, color_jitter=0.0, crop_scale=(1.0, 1.0))
    assert torch.allclose(off.apply(batch), batch, atol=1e-5)
    flips = AugmentationConfig(rotation_degrees=0.0, color_jitter=0.0, crop_scale=(1.0, 1.0)).apply(batch)
    pairs = list(zip(flips, batch, strict=True))
    mirrored = torch.tensor([torch.allclose(out, image.flip(-1), atol=1e-5) for out, image in pairs])
    kept = torch.tensor([torch.allclose(out, image, atol=1e-5) for out, image in pairs])
    assert (mirrored | kept).all() and mirrored.any() and kept.any()  # each image on its own coin


def test_batched_augmentation_draws_per_image_and_repeats_under_a_seed() -> None:
    batch = torch.rand(32, 3, 16, 16)
    config = AugmentationConfig()
    torch.manual_seed(3)
    first = config.apply(batch)
    torch.manual_seed(3)
    assert torch.equal(first, config.apply(batch))
    assert first.shape == batch.shape and first.min() >= 0 and first.max() <= 1
    same = config.apply(batch[:1].expand(32, -1, -1, -1).contiguous())
    assert len({tuple(image.flatten()[:20].tolist()) for image in same}) == 32  # one image, 32 different draws
    grey = AugmentationConfig().apply(torch.rand(4, 1, 16, 16))  # grayscale: brightness and contrast only
    assert grey.shape == (4, 1, 16, 16)


def test_pre_training_steps_are_neither_chosen_nor_counted_towards_early_stopping() -> None:
    train, val = easy_data(8), easy_data(3, seed=1)
    config = ClassifierConfig(steps=40, eval_every=5, batch_size=8, keep="best_val", patience=2, learning_rate=1e-9)
    _, stopped = train_classifier(train, val, config, 3, seed=0, progress=False)
    _, waited = train_classifier(train, val, config, 3, seed=0, progress=False, select_after=30)
    assert len(stopped.losses) < 30  # a flat validation score stops plain training early
    assert len(waited.losses) >= 35 and waited.best_step > 30  # not before the fine-tuning phase, chosen from it
    assert [entry["step"] for entry in waited.history][:2] == [5, 10]  # the pre-training scores are still recorded
