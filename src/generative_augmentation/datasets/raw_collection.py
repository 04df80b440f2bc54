"""Read-only Kedro dataset over a user's labelled image collection (MedMNIST, ODIR-5K, class folders)."""

from __future__ import annotations

from typing import Any

from kedro.io import AbstractDataset, DatasetError

from generative_augmentation.core.sources import RawCollection, read_collection


class RawCollectionDataset(AbstractDataset[None, RawCollection]):
    """Loads a :class:`RawCollection` with the adapter named in configuration; images decode lazily."""

    def __init__(self, adapter: str, root: str, options: dict[str, Any] | None = None, metadata=None):
        self._adapter = adapter
        self._root = root
        self._options = dict(options or {})
        self.metadata = metadata

    def load(self) -> RawCollection:
        return read_collection(self._adapter, self._root, **self._options)

    def save(self, data: None) -> None:
        raise DatasetError("RawCollectionDataset is read-only: the raw data is the user's")

    def _describe(self) -> dict[str, Any]:
        return {"adapter": self._adapter, "root": self._root, "options": self._options}

    def _exists(self) -> bool:
        from pathlib import Path

        return Path(self._root).exists()
