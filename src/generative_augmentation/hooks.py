"""Project hooks: global seeding, and MLflow artifacts for versioned datasets."""

from __future__ import annotations

import logging
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl

from generative_augmentation.core.runtime import seed_everything
from generative_augmentation.scenarios import configured_scenarios, remember_parameters

logger = logging.getLogger(__name__)


class ReproducibilityHooks:
    """Seed every library from the one ``seed`` parameter before any node runs."""

    @hook_impl
    def after_context_created(self, context) -> None:
        # config_loader, not context.params: reading params validates them against the pipelines, which are
        # built from these very parameters (the scenario list).
        parameters = dict(context.config_loader["parameters"])
        remember_parameters(parameters)
        seed = int(parameters.get("seed", 0))
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


class ScenarioRunHooks:
    """One nested MLflow run per scenario and seed under the ``kedro run``'s parent run.

    Each nested run carries the scenario's name, kind, ratio and seed as parameters and that seed's test metrics,
    so ``mlflow ui`` can compare scenarios side by side.
    """

    @hook_impl
    def after_node_run(self, node, outputs: dict[str, Any]) -> None:
        if not node.name.endswith("score_on_test") or mlflow.active_run() is None:
            return
        scenario = node.namespace or node.name.split(".")[0]
        spec = configured_scenarios().get(scenario, {"kind": "unknown", "ratio": 0.0})
        table = outputs.get(f"{scenario}.test_scores")
        if table is None:
            return
        for seed, rows in table.groupby("seed"):
            with mlflow.start_run(run_name=f"{scenario} seed {seed}", nested=True):
                mlflow.log_params(
                    {"scenario": scenario, "kind": spec["kind"], "ratio": spec["ratio"], "seed": int(seed)}
                )
                mlflow.log_metrics(scenario_seed_metrics(rows))


def scenario_seed_metrics(rows) -> dict[str, float]:
    """``test_<metric>`` for macro rows and ``test_<metric>.<class>`` per class; NaNs left out."""
    metrics = {}
    for row in rows.itertuples(index=False):
        key = f"test_{row.metric}" if row.class_name == "macro" else f"test_{row.metric}.{row.class_name}"
        if row.value == row.value:  # not NaN
            metrics[key] = float(row.value)
    return metrics


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


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
