"""Project-specific Kedro datasets, imported on first use (the generator dataset pulls in torch and diffusers)."""

from __future__ import annotations

import importlib
from typing import Any

_MODULES = {
    "AtomicDataset": "atomic",
    "AtomicFolderDataset": "atomic",
    "GeneratorDataset": "generator",
    "OptionalDataset": "optional",
    "RawCollectionDataset": "raw_collection",
    "SafetensorsModelDataset": "safetensors_model",
    "WorkingFolderDataset": "working_folder",
}
__all__ = [
    "AtomicDataset",
    "AtomicFolderDataset",
    "GeneratorDataset",
    "OptionalDataset",
    "RawCollectionDataset",
    "SafetensorsModelDataset",
    "WorkingFolderDataset",
]


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
