"""Project hooks: global seeding, and MLflow artifacts for versioned datasets."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl

from generative_augmentation.core.runtime import seed_everything

logger = logging.getLogger(__name__)


class ReproducibilityHooks:
    """Seed every library from the one ``seed`` parameter before any node runs."""

    @hook_impl
    def after_context_created(self, context) -> None:
        seed = int(context.params.get("seed", 0))
        seed_everything(seed)
        logger.info("Global seed set to %d", seed)


class MlflowArtifactHooks:
    """Log the file a dataset just saved as an MLflow artifact when its metadata names an artifact path.

    kedro-mlflow's MlflowArtifactDataset cannot wrap a ``versioned: true`` dataset under Kedro 1.x (the wrapped
    dataset gets its own save version and the catalog refuses it), so versioned files are logged here instead:

        metadata:
          mlflow_artifact_path: plots
    """

    def __init__(self) -> None:
        self._catalog = None

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        self._catalog = catalog

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node) -> None:
        if self._catalog is None or mlflow.active_run() is None:
            return
        dataset = self._catalog.get(dataset_name) if hasattr(self._catalog, "get") else None
        artifact_path = ((getattr(dataset, "metadata", None) or {}).get("mlflow_artifact_path")) if dataset else None
        if artifact_path is None:
            return
        path = saved_path(dataset)
        if path is None or not Path(path).exists():
            logger.warning("Cannot log %s to MLflow: no saved file found", dataset_name)
            return
        if Path(path).is_dir():
            mlflow.log_artifacts(path, artifact_path=artifact_path)
        else:
            mlflow.log_artifact(path, artifact_path=artifact_path)


def saved_path(dataset) -> str | None:
    """The local path a (possibly versioned) file dataset last saved to."""
    from kedro.io.core import get_filepath_str

    protocol = getattr(dataset, "_protocol", "file")
    if getattr(dataset, "_version", None) is not None:
        return get_filepath_str(dataset._get_load_path(), protocol)
    filepath = getattr(dataset, "_filepath", None)
    return str(filepath) if filepath is not None else None
