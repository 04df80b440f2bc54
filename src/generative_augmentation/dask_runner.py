"""Run the pipelines on a Dask cluster: ``kedro run --runner=generative_augmentation.dask_runner.DaskRunner``.

It follows Kedro's guide "Deployment to a Dask cluster" (a runner that submits nodes to a ``distributed.Client`` in
the order their dependencies allow) with one difference: the ``kedro run`` process keeps the catalog and the hooks,
and each node's function is the Dask task. MLflow, the run lock, the artifact logging and every other hook work as
under the SequentialRunner, datasets are saved by one process (atomically, as they always are), and a task whose
worker died is simply run again elsewhere: it writes nothing but its return value. Files a node writes itself (the
generator's checkpoints, the folder datasets it reads lazily) are under ``data_dir``, which must therefore be on
storage every worker sees.

Where the scheduler is: ``--runner-params=address=tcp://host:8786``, else Dask's own ``scheduler-address``
configuration (``DASK_SCHEDULER_ADDRESS``), else a ``LocalCluster`` on 127.0.0.1 with one single-threaded worker
process per available core (``--runner-params=workers=N`` to choose), closed after the run.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections import Counter
from itertools import chain
from typing import Any

import dask
import torch
from distributed import Client, Future, KilledWorker, LocalCluster, get_worker, wait
from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node
from kedro.runner import AbstractRunner
from kedro.runner.task import Task

from generative_augmentation.core.crowding import available_cores
from generative_augmentation.core.runtime import GPU_TAG, RuntimeConfig, apply_runtime

logger = logging.getLogger(__name__)

GPU_RESOURCE = "GPU"  # nodes tagged GPU_TAG ask for one unit of it (dask worker --resources GPU=1)


class WorkerNodeError(RuntimeError):
    """A node's function raised on a Dask worker, or every worker that tried it died."""


class DaskRunner(AbstractRunner):
    """Submit each node's function to a Dask cluster as soon as the nodes it depends on are done."""

    def __init__(self, address: str | None = None, workers: int | None = None, is_async: bool = False) -> None:
        super().__init__(is_async=False)
        if is_async:
            logger.warning("DaskRunner: --async is not used (the tasks run on the cluster; this process only loads)")
        if workers is not None and int(workers) < 1:
            raise ValueError(f"--runner-params workers must be at least 1, got {workers}")
        self.address = address or dask.config.get("scheduler-address", None)
        self.workers = int(workers) if workers is not None else None

    def connect(self) -> tuple[Client, LocalCluster | None]:
        """A client of the configured scheduler, or of a new local cluster (returned too, to be closed)."""
        if self.address:
            logger.info("Dask: connecting to the scheduler at %s", self.address)
            return Client(self.address), None
        workers = self.workers or available_cores()
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        )
        logger.info("Dask: started a local cluster of %d worker process(es) at %s", workers, cluster.scheduler_address)
        return Client(cluster), cluster

    def _get_executor(self, max_workers: int) -> None:
        """Not used: the cluster, not an executor of this process, runs the nodes (see ``_run``)."""
        return None

    def _run(self, pipeline: Pipeline, catalog, hook_manager=None, run_id: str | None = None) -> None:
        streaming = sorted(node.name for node in pipeline.nodes if inspect.isgeneratorfunction(node.func))
        if streaming:
            raise ValueError(f"DaskRunner: nodes that yield their outputs in chunks are not supported: {streaming}")
        client, cluster = self.connect()
        try:
            self._run_on(client, pipeline, catalog, hook_manager, run_id)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()

    def _run_on(self, client: Client, pipeline: Pipeline, catalog, hook_manager, run_id: str | None) -> None:
        runtime = _runtime_config(catalog)
        dependencies = pipeline.node_dependencies
        load_counts = Counter(chain.from_iterable(node.inputs for node in pipeline.nodes))
        todo, done = set(pipeline.nodes), set()
        running: dict[Future, tuple[Node, dict[str, Any]]] = {}
        try:
            while todo or running:
                for node in sorted(node for node in todo if dependencies[node] <= done):
                    todo.discard(node)
                    inputs = self._load_inputs(node, catalog, hook_manager, run_id)
                    gpu = GPU_TAG in node.tags and _has_gpu_workers(client)  # asked now: jobs may join late
                    # The inputs travel inside the task (not scattered): the scheduler keeps them, so a task whose
                    # worker died can run again on another one.
                    future = client.submit(
                        run_node_function, node, inputs, runtime, key=f"{node.name}-{uuid.uuid4().hex}",
                        pure=False, resources={GPU_RESOURCE: 1} if gpu else None,
                    )  # fmt: skip
                    running[future] = (node, inputs)
                if not running:
                    raise RuntimeError(f"DaskRunner: nodes {sorted(n.name for n in todo)} can never run")
                finished, _ = wait(list(running), return_when="FIRST_COMPLETED")
                for future in finished:
                    node, inputs = running.pop(future)
                    try:
                        outputs = _result(future, node)
                    except Exception as error:
                        cause = error.__cause__ if isinstance(error.__cause__, Exception) else error
                        hook_manager.hook.on_node_error(
                            error=cause, node=node, catalog=catalog, inputs=inputs, is_async=False, run_id=run_id
                        )
                        raise
                    self._save_outputs(node, catalog, hook_manager, inputs, outputs, run_id)
                    done.add(node)
                    self._logger.info("Completed node: %s", node.name)
                    self._logger.info("Completed %d out of %d tasks", len(done), len(pipeline.nodes))
                    self._release_datasets(node, catalog, load_counts, pipeline)
        except BaseException:
            # Tasks not started are dropped; one a worker is already running goes on until it ends (Dask cannot
            # stop it), and writes nothing but its result, which nobody collects.
            client.cancel(list(running))
            self._suggest_resume_scenario(pipeline, done, catalog)
            raise

    @staticmethod
    def _load_inputs(node: Node, catalog, hook_manager, run_id: str | None) -> dict[str, Any]:
        """The node's inputs, loaded here with the dataset and before-node hooks, as the SequentialRunner does."""
        inputs = {}
        for name in node.inputs:
            hook_manager.hook.before_dataset_loaded(dataset_name=name, node=node)
            inputs[name] = catalog.load(name)
            hook_manager.hook.after_dataset_loaded(dataset_name=name, data=inputs[name], node=node)
        inputs.update(Task._collect_inputs_from_hook(node, catalog, inputs, False, hook_manager, run_id=run_id))
        return inputs

    @staticmethod
    def _save_outputs(node: Node, catalog, hook_manager, inputs, outputs, run_id: str | None) -> None:
        hook_manager.hook.after_node_run(
            node=node, catalog=catalog, inputs=inputs, outputs=outputs, is_async=False, run_id=run_id
        )
        for name, data in outputs.items():
            hook_manager.hook.before_dataset_saved(dataset_name=name, data=data, node=node)
            catalog.save(name, data)
            hook_manager.hook.after_dataset_saved(dataset_name=name, data=data, node=node)
        for name in node.confirms:
            catalog.confirm(name)


def run_node_function(node: Node, inputs: dict[str, Any], runtime: RuntimeConfig | None) -> dict[str, Any]:
    """On a worker: the node's function on its inputs, with the run's torch threads (``runtime.num_threads``; null:
    this worker's cores) and deterministic kernels. An error is re-raised naming the node and the worker."""
    if runtime is not None:
        _prepare_worker(runtime)
    try:
        return node.run(inputs)
    except Exception as error:
        raise WorkerNodeError(f"node {node.name} failed on Dask worker {get_worker().address}: {error}") from error


def _prepare_worker(runtime: RuntimeConfig) -> None:
    """Torch's threads and kernels as ``runtime`` says, set before every task (another run on the same long-lived
    worker may have asked for other threads); logged when they change."""
    if torch.get_num_threads() != runtime.threads() or not torch.backends.cudnn.deterministic:
        apply_runtime(runtime)


def _result(future: Future, node: Node) -> dict[str, Any]:
    """The future's outputs; a task that killed every worker it ran on is reported with the node's name."""
    try:
        return future.result()
    except KilledWorker as error:
        last = getattr(error.last_worker, "address", error.last_worker)
        raise WorkerNodeError(
            f"node {node.name}: every Dask worker that ran it died (the last: {last}); Dask stops after "
            f"distributed.scheduler.allowed-failures={error.allowed_failures} retries. That worker's log says why "
            "it died (memory, a signal)."
        ) from error


def _runtime_config(catalog) -> RuntimeConfig | None:
    """The run's ``runtime`` parameters, when the catalog has them (a Kedro session's always does)."""
    if "params:runtime" not in catalog:
        return None
    return RuntimeConfig.parse(catalog.load("params:runtime"))


def _has_gpu_workers(client: Client) -> bool:
    workers = client.scheduler_info().get("workers", {}).values()
    return any(GPU_RESOURCE in worker.get("resources", {}) for worker in workers)
