"""A folder a node works in while it runs (mid-training checkpoints): declared in the catalog like any other
location, so all paths live there. Loading gives the folder's path; nothing is saved through the dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError


class WorkingFolderDataset(AbstractDataset[None, Path]):
    """Loads the ``path`` of a working folder (created on first use by the node)."""

    def __init__(self, path: str, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> Path:
        return self._path

    def save(self, data: None) -> None:
        raise DatasetError(f"{self._path} is a working folder: nodes write into it while they run")

    def _exists(self) -> bool:
        return True

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
