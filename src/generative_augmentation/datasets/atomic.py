"""Datasets whose save is atomic: a kill or an error mid-write never leaves a partial output that looks complete,
and never destroys the previous, complete output.

Both write beside the target (``.partial-<name>``) through the ordinary kedro-datasets class, then move the
result into place: a file with ``os.replace`` (atomic on one filesystem); a folder by renaming the old folder
aside (``.previous-<name>``), renaming the new one in, and deleting the old one. A folder found missing next to
its ``.previous-`` copy (a kill between the two renames) is restored on the next access. Local paths only: on
object stores (s3://, gs://) a rename is a copy, and the write is not atomic there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset
from kedro.io.core import parse_dataset_definition
from kedro_datasets.partitions import PartitionedDataset

PARTIAL = ".partial-"
PREVIOUS = ".previous-"


class AtomicFolderDataset(AbstractDataset[dict[str, Any], dict[str, Any]]):
    """A folder of partitions (e.g. PNG images ``<class>/<id>.png``) replaced as a whole on save.

    Takes the arguments of kedro-datasets' ``PartitionedDataset`` (``path``, ``dataset``, ``filename_suffix``).
    """

    def __init__(
        self, path: str, dataset: str | dict[str, Any], filename_suffix: str = "", metadata: dict | None = None
    ):
        self._path = Path(path)
        self._options = {"dataset": dataset, "filename_suffix": filename_suffix}
        self.metadata = metadata

    def _partitions(self, path: Path, overwrite: bool = False) -> PartitionedDataset:
        return PartitionedDataset(path=str(path), overwrite=overwrite, **self._options)

    def load(self) -> dict[str, Any]:
        _restore_interrupted_swap(self._path)
        return self._partitions(self._path).load()

    def save(self, data: dict[str, Any]) -> None:
        partial = self._path.with_name(PARTIAL + self._path.name)
        shutil.rmtree(partial, ignore_errors=True)
        try:
            self._partitions(partial, overwrite=True).save(data)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        partial.mkdir(parents=True, exist_ok=True)  # an empty mapping still gives an (empty) folder
        _swap_in(partial, self._path)

    def _exists(self) -> bool:
        _restore_interrupted_swap(self._path)
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), **self._options}


class AtomicDataset(AbstractDataset[Any, Any]):
    """Any single-file dataset (``dataset: {type: pandas.ParquetDataset, filepath: ...}``) saved beside, then
    moved into place. Not for ``versioned: true`` datasets (they write a new version folder of their own)."""

    def __init__(self, dataset: dict[str, Any], metadata: dict | None = None):
        definition = dict(dataset)
        if definition.get("versioned"):
            raise ValueError("AtomicDataset wraps unversioned file datasets; a versioned one writes its own folders")
        self._filepath = Path(definition.pop("filepath"))
        self._class, self._config = parse_dataset_definition(definition)
        self.metadata = metadata

    def _dataset(self, path: Path) -> AbstractDataset:
        return self._class(filepath=str(path), **self._config)

    def load(self) -> Any:
        return self._dataset(self._filepath).load()

    def save(self, data: Any) -> None:
        partial = self._filepath.with_name(PARTIAL + self._filepath.name)
        partial.unlink(missing_ok=True)
        try:
            self._dataset(partial).save(data)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, self._filepath)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "dataset": self._class.__name__}


def _swap_in(new: Path, target: Path) -> None:
    """Move the complete folder ``new`` to ``target``; the old ``target`` is kept aside until then."""
    previous = target.with_name(PREVIOUS + target.name)
    _restore_interrupted_swap(target)
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        target.rename(previous)
    new.rename(target)
    shutil.rmtree(previous, ignore_errors=True)


def _restore_interrupted_swap(target: Path) -> None:
    previous = target.with_name(PREVIOUS + target.name)
    if not target.exists() and previous.is_dir():
        previous.rename(target)
