"""Image classifiers: architectures by name, the one training loop, and prediction.

Every architecture exposes ``forward_features(x)`` (the penultimate embedding) and ``forward(x)`` (logits), so
the same model can serve as a labeler and as a feature extractor.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from sklearn.metrics import f1_score
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from generative_augmentation.core.images import to_tensor
from generative_augmentation.core.runtime import pick_device, seed_everything, torch_generator

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageClassifier(nn.Module):
    """A backbone that maps images in [0, 1] to features, and a linear head."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, input_size: int, in_channels: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)
        self.input_size = input_size
        self.in_channels = in_channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN[:in_channels]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD[:in_channels]).view(1, -1, 1, 1))

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features of (N, C, H, W) images in [0, 1]."""
        if images.shape[-1] != self.input_size or images.shape[-2] != self.input_size:
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear", antialias=True)
        return self.backbone((images - self.mean) / self.std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(images))


def _small_cnn(in_channels: int, width: int) -> tuple[nn.Module, int]:
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )  # fmt: skip

    backbone = nn.Sequential(
        block(in_channels, width), block(width, 2 * width), block(2 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3),
    )  # fmt: skip
    return backbone, 4 * width


def _resnet18(in_channels: int, input_size: int) -> tuple[nn.Module, int]:
    from torchvision.models import resnet18

    model = resnet18(weights=None)
    if input_size <= 64:  # small images: keep resolution, as MedMNIST's ResNet-18 (28) does
        model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    model.fc = nn.Identity()
    return model, 512


def _vgg19(in_channels: int) -> tuple[nn.Module, int]:
    from torchvision.models import vgg19_bn

    model = vgg19_bn(weights=None)
    if in_channels != 3:
        model.features[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Sequential(nn.Flatten(), nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(0.5))
    return model, 512


class _EfficientNetBackbone(nn.Module):
    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.network.extract_features(images), 1), 1)


def _efficientnet_lite0(in_channels: int, input_size: int, pretrained: bool) -> tuple[nn.Module, int]:
    if in_channels != 3:
        raise ValueError("efficientnet_lite0 needs RGB input (parameter image.mode: RGB); grayscale is replicated")
    from efficientnet_lite_pytorch import EfficientNet

    from generative_augmentation.core.features import load_efficientnet_lite0

    if pretrained:
        return _EfficientNetBackbone(load_efficientnet_lite0(image_size=input_size, frozen=False)), 1280
    return _EfficientNetBackbone(EfficientNet.from_name("efficientnet-lite0", image_size=input_size)), 1280


ARCHITECTURES = ("small_cnn", "resnet18", "vgg19", "efficientnet_lite0")
MIN_INPUT_SIZE = {"small_cnn": 8, "resnet18": 8, "vgg19": 32, "efficientnet_lite0": 64}


def build_classifier(
    architecture: str,
    num_classes: int,
    image_size: int,
    in_channels: int = 3,
    pretrained: bool = True,
    weights_path: str | Path | None = None,
    width: int = 32,
) -> ImageClassifier:
    """A classifier by name; inputs are resized to at least the architecture's minimum size.

    ``pretrained`` applies to ``efficientnet_lite0`` (offline ImageNet weights); ``weights_path`` loads any
    local ``.safetensors`` or ``.pt`` state dict of the whole classifier; ``width`` is ``small_cnn``'s first
    block width (then 2x and 4x).
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"Unknown classifier architecture {architecture!r}; use one of {list(ARCHITECTURES)}")
    if num_classes < 2:
        raise ValueError(f"A classifier needs at least 2 classes, got num_classes={num_classes}")
    input_size = max(image_size, MIN_INPUT_SIZE[architecture])
    if architecture == "small_cnn":
        backbone, dim = _small_cnn(in_channels, width)
    elif architecture == "resnet18":
        backbone, dim = _resnet18(in_channels, input_size)
    elif architecture == "vgg19":
        backbone, dim = _vgg19(in_channels)
    else:
        backbone, dim = _efficientnet_lite0(in_channels, input_size, pretrained and weights_path is None)
    model = ImageClassifier(backbone, dim, num_classes, input_size, in_channels)
    if architecture == "efficientnet_lite0":  # the TF-converted Lite weights expect (x - 127) / 128
        model.mean.fill_(127.0 / 255.0)
        model.std.fill_(128.0 / 255.0)
    if weights_path:
        model.load_state_dict(load_state_dict(weights_path))
    return model


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Classifier weights file {str(path)!r} (parameter weights_path) not found")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


@dataclass
class TrainingConfig:
    """Settings of the one training loop."""

    architecture: str = "small_cnn"
    width: int = 32  # small_cnn only
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    class_weights: str | None = "balanced"  # "balanced" or None
    patience: int = 6
    seed: int = 0
    pretrained: bool = True
    weights_path: str | None = None
    device: str | None = None
    num_workers: int = 0

    @classmethod
    def from_dict(cls, values: dict) -> TrainingConfig:
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"Unknown classifier parameter(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


def rebuild_classifier(classifier: dict, num_classes: int, image_size: int, in_channels: int) -> ImageClassifier:
    """An untrained classifier shaped as the ``classifier`` parameters describe, to load saved weights into."""
    config = TrainingConfig.from_dict({k: v for k, v in classifier.items() if k != "seed"})
    return build_classifier(config.architecture, num_classes, image_size, in_channels, False, None, config.width)


@dataclass
class TrainingResult:
    """The best checkpoint (by validation macro-F1) and the per-epoch history."""

    state_dict: dict[str, torch.Tensor]
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_macro_f1: float = 0.0
    seconds: float = 0.0


class ArrayDataset(Dataset):
    """(N, H, W, C) ``uint8`` images with integer labels, optionally transformed per sample."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable | None = None):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = to_tensor(images)
        self.labels = torch.tensor(np.array(labels), dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        return (self.transform(image) if self.transform else image), self.labels[index]


def class_weight_vector(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency ("balanced") class weights; absent classes get weight 0."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    weights = np.divide(len(labels), num_classes * counts, out=np.zeros_like(counts), where=counts > 0)
    return torch.tensor(weights, dtype=torch.float32)


def train_classifier(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    config: TrainingConfig,
    num_classes: int,
    progress: bool = True,
) -> tuple[ImageClassifier, TrainingResult]:
    """Seed, build ``config.architecture``, train with AdamW + cosine decay, early-stop on validation macro-F1.

    Returns the model with its best weights restored, and the training record.
    """
    seed_everything(config.seed)
    image_size, in_channels = train[0].shape[1], train[0].shape[-1]
    model = build_classifier(
        config.architecture, num_classes, image_size, in_channels, config.pretrained, config.weights_path, config.width
    )
    device = pick_device(config.device)
    model.to(device)
    train_images, train_labels = train
    if len(train_labels) == 0 or len(val[1]) == 0:
        raise ValueError(f"Empty training ({len(train_labels)}) or validation ({len(val[1])}) set")
    loader = DataLoader(
        ArrayDataset(train_images, train_labels),
        batch_size=config.batch_size,
        shuffle=True,
        generator=torch_generator(config.seed),
        num_workers=config.num_workers,
        drop_last=len(train_labels) > config.batch_size,
    )
    weights = class_weight_vector(train_labels, num_classes).to(device) if config.class_weights == "balanced" else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs * len(loader)))
    best = TrainingResult(state_dict=copy.deepcopy(model.state_dict()), best_val_macro_f1=-1.0)
    started, stale = time.perf_counter(), 0
    bar = tqdm(range(1, config.epochs + 1), desc=f"train {config.architecture}", disable=not progress, unit="epoch")
    for epoch in bar:
        train_loss = _train_one_epoch(model, loader, optimizer, scheduler, weights, device)
        val_proba = predict_proba(model, val[0], batch_size=256, device=device)
        val_f1 = float(
            f1_score(val[1], val_proba.argmax(1), average="macro", labels=range(num_classes), zero_division=0)
        )
        best.history.append({"epoch": epoch, "train_loss": train_loss, "val_macro_f1": val_f1})
        bar.set_postfix(loss=f"{train_loss:.3f}", val_f1=f"{val_f1:.3f}")
        if val_f1 > best.best_val_macro_f1:
            best.state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            best.best_epoch, best.best_val_macro_f1, stale = epoch, val_f1, 0
        else:
            stale += 1
            if stale >= config.patience:
                logger.info("Early stop at epoch %d (best %d, val macro-F1 %.3f)", epoch, best.best_epoch, val_f1)
                break
    model.load_state_dict(best.state_dict)
    best.seconds = time.perf_counter() - started
    logger.info("Best epoch %d, val macro-F1 %.4f, %.1fs", best.best_epoch, best.best_val_macro_f1, best.seconds)
    return model, best


def _train_one_epoch(model, loader, optimizer, scheduler, weights, device) -> float:
    model.train()
    total, count = 0.0, 0
    for batch_images, batch_labels in loader:
        images, labels = batch_images.to(device, non_blocking=True), batch_labels.to(device, non_blocking=True)
        loss = F.cross_entropy(model(images), labels, weight=weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += float(loss.detach()) * len(labels)
        count += len(labels)
    return total / max(count, 1)


@torch.inference_mode()
def predict_proba(
    model: nn.Module, images: np.ndarray, batch_size: int = 256, device: torch.device | str | None = None
) -> np.ndarray:
    """Class probabilities (N, K) for (N, H, W, C) ``uint8`` images."""
    device = torch.device(device) if device else next(model.parameters()).device
    model.eval().to(device)
    outputs = [
        torch.softmax(model(to_tensor(images[start : start + batch_size]).to(device)), dim=1).cpu()
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(outputs).numpy() if outputs else np.zeros((0, model.head.out_features), dtype=np.float32)


@torch.inference_mode()
def embed(model: ImageClassifier, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Penultimate features (N, D) for (N, H, W, C) ``uint8`` images."""
    device = next(model.parameters()).device
    model.eval()
    chunks = [
        model.forward_features(to_tensor(images[i : i + batch_size]).to(device)).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks).numpy()
