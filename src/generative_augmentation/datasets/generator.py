"""Versioned Kedro dataset for a fitted generator: a folder written by ``Generator.save``."""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io.core import AbstractVersionedDataset, Version

from generative_augmentation.core.generators import Generator, load_generator


class GeneratorDataset(AbstractVersionedDataset[Generator, Generator]):
    """Saves a :class:`Generator` into a folder (written beside, then renamed into place) and loads it back."""

    def __init__(self, filepath: str, version: Version | None = None, metadata: dict[str, Any] | None = None):
        self.metadata = metadata
        super().__init__(
            filepath=PurePosixPath(filepath), version=version, exists_function=lambda path: Path(path).is_dir()
        )

    def load(self) -> Generator:
        return load_generator(Path(str(self._get_load_path())))

    def save(self, data: Generator) -> None:
        final = Path(str(self._get_save_path()))
        partial = final.with_name(f".partial-{final.name}")
        shutil.rmtree(partial, ignore_errors=True)
        data.save(partial)
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "version": self._version}

    def _exists(self) -> bool:
        try:
            return Path(str(self._get_load_path())).is_dir()
        except Exception:  # noqa: BLE001 - no version saved yet
            return False
