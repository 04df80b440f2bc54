from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from generative_augmentation.core.classifier import (
    TrainingConfig,
    build_classifier,
    class_weight_vector,
    embed,
    predict_proba,
    train_classifier,
)
from tests.conftest import class_image


def easy_data(per_class: int, classes: int = 3, seed: int = 0, size: int = 16):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    return np.stack([class_image(int(y), rng, size) for y in labels]), labels


@pytest.mark.parametrize("architecture", ["small_cnn", "resnet18", "vgg19"])
def test_architectures_give_logits_and_features(architecture: str) -> None:
    model = build_classifier(architecture, num_classes=4, image_size=16).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 16, 16))
        features = model.forward_features(torch.rand(2, 3, 16, 16))
    assert logits.shape == (2, 4)
    assert features.shape[0] == 2 and features.ndim == 2


def test_efficientnet_lite0_loads_offline_imagenet_weights() -> None:
    pretrained = build_classifier("efficientnet_lite0", 3, 32)
    random = build_classifier("efficientnet_lite0", 3, 32, pretrained=False)
    name = "backbone.network._conv_stem.weight"
    assert not torch.equal(pretrained.state_dict()[name], random.state_dict()[name])
    assert pretrained.input_size == 64


def test_grayscale_input_is_supported() -> None:
    model = build_classifier("small_cnn", 2, 16, in_channels=1)
    assert model(torch.rand(3, 1, 16, 16)).shape == (3, 2)


def test_unknown_architecture_is_named() -> None:
    with pytest.raises(ValueError, match="Unknown classifier architecture 'alexnet'"):
        build_classifier("alexnet", 3, 16)


def test_unknown_training_parameter_is_named() -> None:
    with pytest.raises(ValueError, match=r"\['epoch'\]"):
        TrainingConfig.from_dict({"epoch": 3})


def test_training_learns_and_restores_best_checkpoint() -> None:
    train, val = easy_data(20), easy_data(6, seed=1)
    config = TrainingConfig(epochs=6, batch_size=16, learning_rate=3e-3, patience=3, seed=0)
    model, result = train_classifier(train, val, config, num_classes=3, progress=False)
    assert result.best_val_macro_f1 >= 0.9
    assert result.best_val_macro_f1 == max(h["val_macro_f1"] for h in result.history)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor.cpu(), result.state_dict[name])
    proba = predict_proba(model, val[0])
    assert proba.shape == (18, 3) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert embed(model, val[0]).shape == (18, 128)


def test_same_seed_same_weights() -> None:
    train, val = easy_data(8), easy_data(3, seed=1)
    config = TrainingConfig(epochs=2, batch_size=8, seed=5)
    runs = [train_classifier(train, val, config, 3, progress=False)[1] for _ in range(2)]
    for name in runs[0].state_dict:
        assert torch.equal(runs[0].state_dict[name], runs[1].state_dict[name])


def test_local_weights_file_is_loaded(tmp_path: Path) -> None:
    source = build_classifier("small_cnn", 3, 16)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "w.safetensors")
    loaded = build_classifier("small_cnn", 3, 16, weights_path=tmp_path / "w.safetensors")
    assert torch.equal(loaded.head.weight, source.head.weight)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        build_classifier("small_cnn", 3, 16, weights_path=tmp_path / "missing.pt")


def test_balanced_class_weights() -> None:
    weights = class_weight_vector(np.array([0, 0, 0, 1]), 3)
    assert weights.tolist() == pytest.approx([4 / 9, 4 / 3, 0.0])
