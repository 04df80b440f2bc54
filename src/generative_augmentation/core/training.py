"""The one training loop of the project, and resumable checkpoints through accelerate.

:func:`run_steps` runs optimisation steps ``start .. total - 1`` with a progress bar and calls back every
``every`` steps (to checkpoint a generator, or to score a classifier on validation and stop early). Every random
draw of step ``s`` comes from ``(seed, s)`` (:func:`step_generator`, :func:`batch_indices`), so a run resumed from
step ``s`` continues exactly as the uninterrupted run would have.

:class:`Checkpointer` saves and restores the state accelerate tracks (model, optimiser, LR scheduler, grad scaler,
RNG states) with ``Accelerator.save_state`` / ``load_state``, plus tensors of objects accelerate does not track
(an EMA copy) as safetensors and a JSON record (step, config, loss history). A checkpoint is written to a hidden
folder and renamed into place, so an interrupted save never leaves a half-written checkpoint behind; resuming
under another configuration is refused, naming the parameters that changed.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from generative_augmentation.core.config import Config
from generative_augmentation.core.runtime import derive_seed, numpy_rng, pick_device, torch_generator

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step-"
PARTIAL_PREFIX = ".partial-"
RECORD_FILE = "checkpoint.json"


def run_steps(
    train_step: Callable[[int], float],
    *,
    start: int,
    total: int,
    losses: list[float],
    description: str,
    every: int = 0,
    on_every: Callable[[int], bool | None] | None = None,
    progress: bool = True,
) -> float:
    """Run steps ``start .. total - 1``, appending each step's loss to ``losses``.

    ``on_every(completed)`` runs after every ``every`` completed steps and after the last one; when it returns
    True the loop stops early. Returns the steps per second of this call.
    """
    started, completed = time.perf_counter(), start
    with tqdm(total=total, initial=start, desc=description, disable=not progress, unit="step") as bar:
        for step in range(start, total):
            losses.append(train_step(step))
            completed = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
            due = every > 0 and (completed % every == 0 or completed == total)
            if due and on_every is not None and on_every(completed):
                break
    elapsed = time.perf_counter() - started
    ran = completed - start
    logger.info("%s: %d steps in %.1fs", description, ran, elapsed)
    return ran / elapsed if ran and elapsed > 0 else 0.0


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator for every random draw of training step ``step`` (0-based)."""
    return torch_generator(derive_seed(seed, "train-step", step))


def batch_indices(seed: int, step: int, batch_size: int, dataset_size: int) -> np.ndarray:
    """Dataset indices of the batch of step ``step``: consecutive slices of seeded per-epoch permutations."""
    position, remaining, parts = step * batch_size, batch_size, []
    while remaining:
        epoch, offset = divmod(position, dataset_size)
        take = min(remaining, dataset_size - offset)
        parts.append(_epoch_order(seed, epoch, dataset_size)[offset : offset + take])
        position, remaining = position + take, remaining - take
    return np.concatenate(parts).astype(np.int64)


@lru_cache(maxsize=8)
def _epoch_order(seed: int, epoch: int, dataset_size: int) -> np.ndarray:
    order = numpy_rng(derive_seed(seed, "epoch", epoch)).permutation(dataset_size)
    order.flags.writeable = False
    return order


def make_accelerator(device: str | None, mixed_precision: bool) -> Accelerator:
    """An accelerator on ``device`` (null: CUDA when present), with bf16/fp16 autocast on CUDA when asked."""
    target = pick_device(device)
    precision = "no"
    if mixed_precision and target.type == "cuda":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return Accelerator(cpu=target.type == "cpu", mixed_precision=precision)


def optimisation_step(
    accelerator: Accelerator,
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    parameters: list[torch.nn.Parameter],
    max_grad_norm: float | None,
) -> None:
    """Backward pass (scaled under fp16), optional gradient clipping, optimiser and LR-scheduler step."""
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    if max_grad_norm:
        accelerator.clip_grad_norm_(parameters, max_grad_norm)
    optimizer.step()
    lr_scheduler.step()


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclass
class Checkpointer:
    """Resumable checkpoints of one training run under ``root`` (none when ``root`` is None).

    ``config`` is compared with the checkpoint's; fields in ``resumable`` (``train_steps``, ...) may differ.
    ``extras`` are objects accelerate does not track (an EMA copy): their tensors go to safetensors files.
    """

    root: Path | None
    accelerator: Accelerator
    config: Config
    resumable: Collection[str] = ()
    extras: Mapping[str, Stateful] = field(default_factory=dict)
    keep_last: int = 1

    def resume(self) -> tuple[int, list[float]]:
        """Restore the latest checkpoint, if any; returns (completed steps, loss history)."""
        folder = latest_checkpoint(self.root) if self.root is not None else None
        if folder is None:
            return 0, []
        record = json.loads((folder / RECORD_FILE).read_text())
        self._check_same_config(record["config"], folder)
        self.accelerator.load_state(str(folder))
        for name, extra in self.extras.items():
            extra.load_state_dict(_read_state(folder, name, record["extras"][name]))
        logger.info("Resuming from %s (step %d)", folder, record["step"])
        return int(record["step"]), [float(loss) for loss in record["loss_history"]]

    def save(self, step: int, losses: list[float]) -> Path | None:
        """Write the checkpoint of ``step`` completed steps (atomically) and prune older ones.

        Every process of an ``accelerate launch`` calls it: accelerate writes the model and optimiser from the first
        process and each process's RNG state; the first process alone prepares, completes and renames the folder.
        """
        if self.root is None:
            return None
        accelerator = self.accelerator
        name = f"{CHECKPOINT_PREFIX}{step:08d}"
        partial, final = self.root / f"{PARTIAL_PREFIX}{name}", self.root / name
        if accelerator.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(partial, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(partial))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            extras = {name: _write_state(partial, name, extra.state_dict()) for name, extra in self.extras.items()}
            record = {"step": step, "config": self.config.to_dict(), "loss_history": losses, "extras": extras}
            (partial / RECORD_FILE).write_text(json.dumps(record))
            shutil.rmtree(final, ignore_errors=True)
            partial.rename(final)
            for older in _checkpoint_folders(self.root)[: -self.keep_last]:
                shutil.rmtree(older)
            logger.info("Saved checkpoint at step %d to %s", step, final)
        accelerator.wait_for_everyone()
        return final

    def _check_same_config(self, stored: Mapping[str, Any], folder: Path) -> None:
        current = self.config.to_dict()
        differing = config_differences(stored, current, ignore=self.resumable)
        if differing:
            details = "; ".join(
                f"{self.config.parameter(name)}: checkpoint {stored.get(name)!r}, now {current.get(name)!r}"
                for name in differing
            )
            raise ValueError(
                f"An interrupted run in {folder} was made with other settings ({details}). "
                f"Restore those parameters to resume it, or delete {self.root} to start over"
            )


def config_differences(
    stored: Mapping[str, Any], requested: Mapping[str, Any], ignore: Collection[str] = ()
) -> list[str]:
    """Names of the fields whose JSON values differ between two config dicts."""
    names = sorted((set(stored) | set(requested)) - set(ignore))
    return [name for name in names if stored.get(name) != requested.get(name)]


def latest_checkpoint(root: str | Path) -> Path | None:
    """The most advanced complete checkpoint folder under ``root``, or ``None``."""
    folders = _checkpoint_folders(Path(root))
    return folders[-1] if folders else None


def cpu_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies, as safetensors requires."""
    return {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in tensors.items()}


def _checkpoint_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    folders = [
        path
        for path in root.iterdir()
        if path.is_dir() and path.name.startswith(CHECKPOINT_PREFIX) and (path / RECORD_FILE).is_file()
    ]
    return sorted(folders, key=lambda path: int(path.name.removeprefix(CHECKPOINT_PREFIX)))


def _write_state(folder: Path, name: str, state: Mapping[str, Any]) -> dict[str, Any]:
    """Tensors (and lists of tensors) of ``state`` to ``<name>.safetensors``; returns the JSON rest."""
    tensors, rest = {}, {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            tensors[key] = value
        elif isinstance(value, list | tuple) and value and all(isinstance(item, torch.Tensor) for item in value):
            tensors |= {f"{key}.{index}": item for index, item in enumerate(value)}
            rest[key] = {"tensor_list": len(value)}
        else:
            rest[key] = value
    save_file(cpu_tensors(tensors), str(folder / f"{name}.safetensors"))
    return rest


def _read_state(folder: Path, name: str, rest: Mapping[str, Any]) -> dict[str, Any]:
    tensors = load_file(str(folder / f"{name}.safetensors"))
    state: dict[str, Any] = {}
    for key, value in rest.items():
        if isinstance(value, dict) and set(value) == {"tensor_list"}:
            state[key] = [tensors.pop(f"{key}.{index}") for index in range(value["tensor_list"])]
        else:
            state[key] = value
    return state | tensors
