"""Shared machinery of the resumable generator trainers (``ddpm`` and ``stable_diffusion``).

Three pieces make an interrupted run finish with exactly the weights of an uninterrupted one:

* checkpoint folders: weights as safetensors, optimiser / LR-scheduler / grad-scaler state as a
  ``torch.save`` file that is read back with ``weights_only=True``, and a JSON file with the step, the
  config and the loss history; each checkpoint is written to a hidden folder and renamed into place, so
  an interruption while saving never leaves a half-written checkpoint behind;
* step-indexed randomness: the batch order and every random draw of step ``s`` derive from
  ``(seed, s)`` alone, so no RNG state has to be saved;
* a config comparison that refuses to resume a run whose settings changed.

:func:`run_training_loop` ties them together: both trainers only supply "do step s" and "snapshot".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from generative_augmentation.core.runtime import derive_seed, numpy_rng, torch_generator

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step-"
PARTIAL_PREFIX = ".partial-"
METADATA_FILE = "checkpoint.json"
TRAINING_STATE_FILE = "training_state.pt"


class SerializableConfig:
    """Mixin for config dataclasses: a JSON-ready ``to_dict`` and a strict ``from_dict``."""

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON types (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        """Build the config from ``values``; unknown keys raise ``ValueError``."""
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"Unknown {cls.__name__} fields: {', '.join(unknown)}")
        converted = {
            name: tuple(value) if isinstance(value, list) and "tuple" in str(fields[name].type) else value
            for name, value in values.items()
        }
        return cls(**converted)


@dataclass
class Checkpoint:
    """Everything needed to continue a training run after ``step`` completed steps."""

    step: int
    config: dict[str, Any]
    tensors: dict[str, dict[str, torch.Tensor]]
    training_state: dict[str, Any]
    loss_history: list[float] = field(default_factory=list)


def run_training_loop(
    train_step: Callable[[int], float],
    make_checkpoint: Callable[[int, list[float]], Checkpoint],
    *,
    start_step: int,
    train_steps: int,
    losses: list[float],
    checkpoint_every: int,
    checkpoint_dir: str | Path | None,
    description: str,
    progress: bool = True,
) -> float:
    """Run steps ``start_step .. train_steps - 1``, appending their losses and checkpointing.

    ``train_step(s)`` performs step ``s`` and returns its loss; ``make_checkpoint(completed, losses)``
    snapshots the run. A checkpoint is written every ``checkpoint_every`` completed steps and after the
    last one. Returns the steps per second of this call.
    """
    started = time.perf_counter()
    with tqdm(total=train_steps, initial=start_step, desc=description, disable=not progress) as bar:
        for step in range(start_step, train_steps):
            losses.append(train_step(step))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
            completed = step + 1
            if checkpoint_dir is not None and (completed % checkpoint_every == 0 or completed == train_steps):
                save_checkpoint(checkpoint_dir, make_checkpoint(completed, losses))
    steps_run = max(train_steps - start_step, 0)
    elapsed = time.perf_counter() - started
    logger.info("%s: %d steps in %.1fs", description, steps_run, elapsed)
    return steps_run / elapsed if steps_run and elapsed > 0 else 0.0


def save_checkpoint(root: str | Path, checkpoint: Checkpoint, keep_last: int = 1) -> Path:
    """Write ``checkpoint`` to ``root/step-XXXXXXXX`` atomically and prune older checkpoints."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"{CHECKPOINT_PREFIX}{checkpoint.step:08d}"
    partial = root / f"{PARTIAL_PREFIX}{name}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    for group, tensors in checkpoint.tensors.items():
        save_file(cpu_tensors(tensors), str(partial / f"{group}.safetensors"))
    torch.save(checkpoint.training_state, partial / TRAINING_STATE_FILE)
    metadata = {"step": checkpoint.step, "config": checkpoint.config, "loss_history": checkpoint.loss_history}
    (partial / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    _prune_checkpoints(root, keep_last)
    logger.info("Saved checkpoint at step %d to %s", checkpoint.step, final)
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    """The most advanced complete checkpoint folder under ``root``, or ``None``."""
    folders = _checkpoint_folders(Path(root))
    return folders[-1] if folders else None


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint folder written by :func:`save_checkpoint` (weights onto ``device``)."""
    folder = Path(folder)
    metadata = json.loads((folder / METADATA_FILE).read_text())
    tensors = {path.stem: load_file(str(path), device=str(device)) for path in sorted(folder.glob("*.safetensors"))}
    # CPU: optimizer.load_state_dict moves the moments to the parameters, and Adam wants "step" on the CPU.
    training_state = torch.load(folder / TRAINING_STATE_FILE, map_location="cpu", weights_only=True)
    return Checkpoint(
        step=int(metadata["step"]),
        config=metadata["config"],
        tensors=tensors,
        training_state=training_state,
        loss_history=[float(loss) for loss in metadata["loss_history"]],
    )


def resume_checkpoint(
    root: str | Path | None,
    config: Mapping[str, Any],
    resumable_fields: Collection[str] = (),
    device: str | torch.device = "cpu",
) -> Checkpoint | None:
    """The latest checkpoint under ``root`` if there is one, after checking it was made with ``config``.

    Fields named in ``resumable_fields`` (e.g. ``train_steps``) may differ; any other difference raises
    ``ValueError`` naming the fields.
    """
    if root is None:
        return None
    folder = latest_checkpoint(root)
    if folder is None:
        return None
    checkpoint = load_checkpoint(folder, device)
    differing = config_differences(checkpoint.config, config, ignore=resumable_fields)
    if differing:
        details = "; ".join(
            f"{name}: checkpoint {checkpoint.config.get(name)!r}, requested {config.get(name)!r}" for name in differing
        )
        raise ValueError(
            f"Cannot resume from {folder}: the config changed ({details}). "
            f"Delete the folder {Path(root)} to start over, or restore the previous config."
        )
    logger.info("Resuming from %s (step %d)", folder, checkpoint.step)
    return checkpoint


def config_differences(
    stored: Mapping[str, Any], requested: Mapping[str, Any], ignore: Collection[str] = ()
) -> list[str]:
    """Names of the fields whose JSON values differ between two config dicts."""
    stored, requested = _as_json(stored), _as_json(requested)
    names = sorted((set(stored) | set(requested)) - set(ignore))
    return [name for name in names if stored.get(name) != requested.get(name)]


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator for every random draw of training step ``step`` (0-based)."""
    return torch_generator(derive_seed(seed, "train-step", step))


def batch_indices(seed: int, step: int, batch_size: int, dataset_size: int) -> np.ndarray:
    """Dataset indices of the batch of step ``step``: consecutive slices of seeded per-epoch permutations."""
    position = step * batch_size
    indices: list[np.ndarray] = []
    remaining = batch_size
    while remaining:
        epoch, offset = divmod(position, dataset_size)
        take = min(remaining, dataset_size - offset)
        indices.append(_epoch_order(seed, epoch, dataset_size)[offset : offset + take])
        position += take
        remaining -= take
    return np.concatenate(indices).astype(np.int64)


def optimisation_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    grad_scaler: torch.amp.GradScaler,
    max_grad_norm: float | None,
) -> None:
    """Backward pass, optional gradient clipping, optimiser and LR-scheduler step (fp16-safe)."""
    optimizer.zero_grad(set_to_none=True)
    grad_scaler.scale(loss).backward()
    if max_grad_norm:
        grad_scaler.unscale_(optimizer)
        parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
        torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    grad_scaler.step(optimizer)
    grad_scaler.update()
    lr_scheduler.step()


def cpu_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies, as safetensors requires."""
    return {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in tensors.items()}


@lru_cache(maxsize=8)
def _epoch_order(seed: int, epoch: int, dataset_size: int) -> np.ndarray:
    order = numpy_rng(derive_seed(seed, "epoch", epoch)).permutation(dataset_size)
    order.flags.writeable = False
    return order


def _checkpoint_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    folders = [
        path
        for path in root.iterdir()
        if path.is_dir() and path.name.startswith(CHECKPOINT_PREFIX) and (path / METADATA_FILE).is_file()
    ]
    return sorted(folders, key=lambda path: int(path.name.removeprefix(CHECKPOINT_PREFIX)))


def _prune_checkpoints(root: Path, keep_last: int) -> None:
    for folder in _checkpoint_folders(root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(folder)


def _as_json(values: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(values)))
