"""A wrapper that loads ``None`` when the wrapped dataset has not been saved yet.

Used for inputs a pipeline can do without, such as the clusters of ``feature_clustering`` that ``generation``
conditions on when they exist: the dataset name stays the same, so ``kedro run`` still orders the pipelines.
"""

from __future__ import annotations

from typing import Any

from kedro.io import AbstractDataset
from kedro.io.core import parse_dataset_definition


class OptionalDataset(AbstractDataset[Any, Any]):
    """Delegates to ``dataset``; ``load`` returns ``None`` when nothing has been saved."""

    def __init__(self, dataset: dict[str, Any], metadata: dict[str, Any] | None = None):
        dataset_class, config = parse_dataset_definition(dict(dataset))
        self._dataset = dataset_class(**config)
        self.metadata = metadata

    def load(self) -> Any:
        return self._dataset.load() if self._dataset.exists() else None

    def save(self, data: Any) -> None:
        self._dataset.save(data)

    def _exists(self) -> bool:
        return self._dataset.exists()

    def _describe(self) -> dict[str, Any]:
        return {"dataset": self._dataset._describe()}
