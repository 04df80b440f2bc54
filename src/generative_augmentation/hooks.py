"""Project hooks: threads and determinism, MLflow artifacts and nested runs, run timing."""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from kedro.framework.hooks import hook_impl
from matplotlib.figure import Figure

from generative_augmentation.core.runtime import RuntimeConfig, apply_runtime, peak_rss_mib
from generative_augmentation.core.scenarios import ScenarioConfig
from generative_augmentation.datasets.safetensors_model import SafetensorsModelDataset

logger = logging.getLogger(__name__)


class ReproducibilityHooks:
    """Set torch's threads and deterministic kernels from ``runtime`` before any node runs, and record them."""

    def __init__(self) -> None:
        self.settings: dict[str, Any] = {}

    @hook_impl
    def after_context_created(self, context) -> None:
        # config_loader, not context.params: reading params validates them against the pipelines, which are built
        # from these very parameters (the scenario arms).
        parameters = context.config_loader["parameters"]
        self.settings = apply_runtime(RuntimeConfig.parse(parameters.get("runtime")))

    @hook_impl(trylast=True)  # after kedro-mlflow has opened the run
    def before_pipeline_run(self) -> None:
        if mlflow.active_run() is not None and self.settings:
            mlflow.log_params({f"runtime.{key}": value for key, value in self.settings.items()})


class MlflowArtifactHooks:
    """Log what a dataset just saved as an MLflow artifact when its metadata names an artifact path:

        metadata:
          mlflow_artifact_path: plots

    The saved object is logged by type (figures, tables, text, JSON; model records through their own files), so
    no private attribute of a Kedro dataset is read. kedro-mlflow's MlflowArtifactDataset cannot wrap a
    ``versioned: true`` dataset under Kedro 1.x, hence this hook.
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
        dataset = self._catalog.get(dataset_name)
        artifact_path = ((getattr(dataset, "metadata", None) or {}).get("mlflow_artifact_path")) if dataset else None
        if artifact_path is not None:
            log_artifact(data, artifact_path, dataset_name.rsplit(".", 1)[-1])


def is_generator(data: Any) -> bool:
    """Whether ``data`` is a fitted generator, without importing diffusers into every Kedro command: a generator
    exists only once its module has been imported."""
    module = sys.modules.get("generative_augmentation.core.generators.base")
    return module is not None and isinstance(data, module.Generator)


def log_artifact(data: Any, artifact_path: str, name: str) -> None:
    """Log one saved object under ``artifact_path``: by its type, as a user would want to open it."""
    if isinstance(data, Figure):
        mlflow.log_figure(data, f"{artifact_path}/{name}.png")
    elif isinstance(data, Mapping) and data and all(isinstance(value, Figure) for value in data.values()):
        for key, figure in data.items():
            mlflow.log_figure(figure, f"{artifact_path}/{name}/{key}")
    elif isinstance(data, pd.DataFrame):
        mlflow.log_text(data.to_csv(index=False), f"{artifact_path}/{name}.csv")
    elif isinstance(data, str):
        mlflow.log_text(
            data, f"{artifact_path}/{name}.html" if data.lstrip().startswith("<") else f"{artifact_path}/{name}.txt"
        )
    elif is_generator(data):
        with tempfile.TemporaryDirectory() as folder:
            mlflow.log_artifacts(str(data.save(folder)), artifact_path)
    elif isinstance(data, Mapping) and "state_dict" in data:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"{name}.safetensors"
            SafetensorsModelDataset(str(path)).save(dict(data))
            mlflow.log_artifact(str(path), artifact_path)
    elif isinstance(data, Mapping):
        mlflow.log_dict(dict(data), f"{artifact_path}/{name}.json")
    else:
        logger.warning("Not logged to MLflow: %s (%s) has no artifact form", name, type(data).__name__)


class ScenarioRunHooks:
    """One nested MLflow run per scenario and replicate under the ``kedro run``'s parent run, carrying the
    scenario's name, kind and ratio and the replicate as parameters and that replicate's test metrics."""

    def __init__(self) -> None:
        self.scenarios: dict[str, Any] = {}

    @hook_impl
    def after_context_created(self, context) -> None:
        self.scenarios = dict(context.config_loader["parameters"].get("scenarios") or {})

    @hook_impl
    def after_node_run(self, node, outputs: dict[str, Any]) -> None:
        if not node.name.endswith("score_on_test") or mlflow.active_run() is None:
            return
        scenario = node.namespace or node.name.split(".")[0]
        table = outputs.get(f"{scenario}.test_scores")
        if table is None:
            return
        spec = ScenarioConfig.parse(self.scenarios.get(scenario), f"scenarios.{scenario}")
        for replicate, rows in table.groupby("replicate"):
            with mlflow.start_run(run_name=f"{scenario} replicate {replicate}", nested=True):
                mlflow.set_tags({"scenario": scenario, "kind": spec.kind})
                mlflow.log_params(
                    {"scenario": scenario, "kind": spec.kind, "ratio": spec.ratio, "replicate": int(replicate)}
                )
                mlflow.log_metrics(scenario_metrics(rows))


def scenario_metrics(rows: pd.DataFrame) -> dict[str, float]:
    """``test_<metric>`` for macro rows and ``test_<metric>.<class>`` per class; NaNs left out."""
    metrics = {}
    for row in rows.itertuples(index=False):
        key = f"test_{row.metric}" if row.class_name == "macro" else f"test_{row.metric}.{row.class_name}"
        if row.value == row.value:  # not NaN
            metrics[key] = float(row.value)
    return metrics


class RunTimingHooks:
    """Wall time per pipeline, and peak memory, of every ``kedro run``: logged at the end of the run and to its
    MLflow run when one is open (``time_<pipeline>_s``, ``peak_rss_mib``), so one full run gives the per-pipeline
    table. A node's time runs from its start to the next node's start, so its outputs' saving (and the next
    node's input loading) count too and the pipelines add up to the whole run."""

    def __init__(self) -> None:
        self._starts: list[tuple[str, float]] = []
        self._run_started = 0.0

    @hook_impl
    def before_pipeline_run(self) -> None:
        self._starts, self._run_started = [], time.perf_counter()

    @hook_impl
    def before_node_run(self, node) -> None:
        self._starts.append((node.name, time.perf_counter()))

    @hook_impl(tryfirst=True)  # before kedro-mlflow's own hook closes the MLflow run
    def after_pipeline_run(self) -> None:
        ended = time.perf_counter()
        per_pipeline = seconds_per_pipeline(node_intervals(self._starts, self._run_started, ended))
        total, peak = ended - self._run_started, peak_rss_mib()
        summary = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in per_pipeline.items())
        logger.info("Run timing: %s; total %.0f s (%.1f min); peak RSS %.0f MiB", summary, total, total / 60, peak)
        if mlflow.active_run() is not None:
            metrics = {f"time_{name}_s": round(seconds, 1) for name, seconds in per_pipeline.items()}
            mlflow.log_metrics({**metrics, "time_total_s": round(total, 1), "peak_rss_mib": round(peak, 1)})


def node_intervals(starts: list[tuple[str, float]], run_started: float, run_ended: float) -> dict[str, float]:
    """Each node's share of the run: from its start (the run's start for the first) to the next node's start."""
    names = [name for name, _ in starts]
    boundaries = [run_started, *[moment for _, moment in starts[1:]], run_ended]
    return {name: boundaries[index + 1] - boundaries[index] for index, name in enumerate(names)}


def seconds_per_pipeline(node_seconds: dict[str, float]) -> dict[str, float]:
    """Node wall times summed per registered pipeline (in run order); nodes of no named pipeline under ``other``."""
    from kedro.framework.project import pipelines

    from generative_augmentation.pipeline_registry import PIPELINE_ORDER

    owner = {}
    for name in reversed(PIPELINE_ORDER):
        if name in pipelines:
            owner.update({node.name: name for node in pipelines[name].nodes})
    totals: dict[str, float] = defaultdict(float)
    for node_name, seconds in node_seconds.items():
        totals[owner.get(node_name, "other")] += seconds
    order = [*PIPELINE_ORDER, "other"]
    return {name: totals[name] for name in order if name in totals}
