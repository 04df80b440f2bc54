"""Versioned Kedro dataset for model weights: one ``.safetensors`` file with its config in the header."""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

import fsspec
import torch
from kedro.io.core import AbstractVersionedDataset, Version, get_filepath_str, get_protocol_and_path
from safetensors import safe_open
from safetensors.torch import save

CONFIG_KEY = "config"


class SafetensorsModelDataset(AbstractVersionedDataset[dict[str, Any], dict[str, Any]]):
    """Saves ``{"state_dict": {name: tensor}, "config": {...}}``; the config travels as JSON header metadata."""

    def __init__(self, filepath: str, version: Version | None = None, metadata=None):
        protocol, path = get_protocol_and_path(filepath, version)
        self._protocol = protocol
        self._fs = fsspec.filesystem(protocol)
        self.metadata = metadata
        super().__init__(
            filepath=PurePosixPath(path), version=version, exists_function=self._fs.exists, glob_function=self._fs.glob
        )

    def load(self) -> dict[str, Any]:
        path = get_filepath_str(self._get_load_path(), self._protocol)
        with safe_open(path, framework="pt") as handle:
            config = json.loads((handle.metadata() or {}).get(CONFIG_KEY, "{}"))
            state_dict = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        return {"state_dict": state_dict, "config": config}

    def save(self, data: dict[str, Any]) -> None:
        path = get_filepath_str(self._get_save_path(), self._protocol)
        self._fs.makedirs(str(PurePosixPath(path).parent), exist_ok=True)
        tensors = {name: _storable(tensor) for name, tensor in data["state_dict"].items()}
        metadata = {CONFIG_KEY: json.dumps(data.get("config", {}), sort_keys=True, default=str)}
        # Written beside, then moved into place: a kill mid-write never leaves a truncated file that looks saved.
        partial = str(PurePosixPath(path).with_name(".partial-" + PurePosixPath(path).name))
        with self._fs.open(partial, "wb") as handle:
            handle.write(save(tensors, metadata=metadata))
        self._fs.mv(partial, path)
        self._fs.invalidate_cache(path)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "protocol": self._protocol, "version": self._version}

    def _exists(self) -> bool:
        try:
            path = get_filepath_str(self._get_load_path(), self._protocol)
        except Exception:  # noqa: BLE001 - no version saved yet
            return False
        return self._fs.exists(path)


def _storable(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous().clone()
