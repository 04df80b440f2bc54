"""The Dask runner on a LocalCluster of two worker processes on 127.0.0.1: the tiny study's evaluation pipeline
gives the sequential runner's results, also when a worker is killed in the middle of a classifier's training; the
generation pipeline samples its pool in chunks spread over the workers and gets the sequential pool; a node's error
names the node and the worker; bad runner settings are named."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster, get_task_stream, get_worker
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline, node
from kedro.runner import SequentialRunner

from generative_augmentation.dask_runner import DaskRunner, WorkerNodeError
from tests.conftest import load_script, study_data
from tests.pipelines import test_generation
from tests.pipelines.test_evaluation import CLASSIFIER, TABLES, evaluation_run, tiny_pool, tiny_study
from tests.test_project_run import PROJECT
from tests.worker_exit import end_the_worker

# Replicates long enough (a second or so) to be killed in the middle of one.
SLOW_CLASSIFIER = {**CLASSIFIER, "steps": 60, "patience": 1000}


@pytest.fixture(scope="module")
def study() -> tuple[tuple, tuple]:
    """The tiny study's real data and kept synthetic pool (test_evaluation's)."""
    return tiny_study(), tiny_pool()


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        yield cluster


def tables(runner, study: tuple[tuple, tuple], folder: Path) -> dict[str, pd.DataFrame]:
    pipeline, catalog = evaluation_run(*study, folder, SLOW_CLASSIFIER)
    runner.run(pipeline, catalog)
    return {name: catalog.load(name) for name in TABLES}


@pytest.fixture(scope="module")
def sequential(study, tmp_path_factory) -> dict[str, pd.DataFrame]:
    return tables(SequentialRunner(), study, tmp_path_factory.mktemp("sequential"))


def assert_same(first: dict[str, pd.DataFrame], second: dict[str, pd.DataFrame]) -> None:
    assert first.keys() == second.keys()
    for name, table in first.items():
        pd.testing.assert_frame_equal(table, second[name], obj=name)


@pytest.mark.slow
def test_the_evaluation_on_two_workers_gives_the_sequential_results(cluster, sequential, study, tmp_path) -> None:
    on_dask = tables(DaskRunner(address=cluster.scheduler_address), study, tmp_path)
    assert_same(sequential, on_dask)
    assert len(on_dask["scenario_estimates"]) > 0


@pytest.mark.slow
def test_a_worker_killed_during_training_is_survived_with_the_same_results(
    cluster, sequential, study, tmp_path
) -> None:
    results: dict = {}
    runner = DaskRunner(address=cluster.scheduler_address)
    thread = threading.Thread(target=lambda: results.update(tables(runner, study, tmp_path)))
    with Client(cluster) as client:
        thread.start()
        victim = None
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline:
            training = {
                address: keys
                for address, keys in client.processing().items()
                if any("_train_one" in str(key) for key in keys)
            }
            victim = next(iter(training), None)
            time.sleep(0.05)
        assert victim is not None, "no classifier was ever seen training on a worker"
        os.kill(client.run(os.getpid, workers=[victim])[victim], signal.SIGKILL)
        thread.join(timeout=300)
        survivors = client.scheduler_info()["workers"]
    assert not thread.is_alive()
    assert victim not in survivors  # it was killed (its nanny started a new worker at another address)
    assert_same(sequential, results)


@pytest.mark.slow
def test_the_pool_is_sampled_in_chunks_over_the_workers_and_equals_the_sequential_one(cluster, tmp_path) -> None:
    data = study_data({"train": [12, 6, 4], "val": [2, 2, 2], "test": [3, 3, 3]}, size=test_generation.SIZE)
    generation = {**test_generation.GENERATION, "sample_chunk": 3}  # several chunks, so several tasks
    sequential = test_generation.run(tmp_path / "sequential", data, generation)
    with Client(cluster) as client, get_task_stream(client) as stream:
        on_dask = test_generation.run(
            tmp_path / "dask", data, generation, runner=DaskRunner(address=cluster.scheduler_address)
        )
    chunks = [task for task in stream.data if "_sample_chunk" in str(task["key"])]
    pool = sequential.load("synthetic_manifest")
    assert len(chunks) == -(-len(pool) // 3) > 1  # one task per chunk of 3 images
    pd.testing.assert_frame_equal(on_dask.load("synthetic_manifest"), pool)
    first, second = sequential.load("synthetic_images"), on_dask.load("synthetic_images")
    assert first.keys() == second.keys()
    for key, load in first.items():
        np.testing.assert_array_equal(np.asarray(load()), np.asarray(second[key]()))


def failing(value: int) -> int:
    raise ValueError(f"cannot use {value}")


@pytest.mark.slow
def test_an_error_names_the_node_and_the_worker(cluster) -> None:
    pipeline = Pipeline([node(failing, "value", "result", name="divide_by_zero")])
    catalog = DataCatalog({"value": MemoryDataset(3)})
    with pytest.raises(WorkerNodeError, match=r"node divide_by_zero failed on Dask worker tcp://127\.0\.0\.1:\d+"):
        DaskRunner(address=cluster.scheduler_address).run(pipeline, catalog)


@pytest.mark.slow
def test_a_node_that_kills_every_worker_it_runs_on_is_named() -> None:
    pipeline = Pipeline([node(end_the_worker, "value", "result", name="crash_the_worker")])
    catalog = DataCatalog({"value": MemoryDataset(3)})
    failure = r"node crash_the_worker: every Dask worker that ran it died"
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),  # give up at the first death
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None) as c,
        pytest.raises(WorkerNodeError, match=failure),
    ):
        DaskRunner(address=c.scheduler_address).run(pipeline, catalog)


def free_gpus(value: int) -> float:
    """The GPU units this worker has free while the task runs (0 when the task holds the worker's one GPU)."""
    return get_worker().state.available_resources["GPU"]


@pytest.mark.slow
def test_a_gpu_node_holds_a_gpu_of_a_worker_that_has_one() -> None:
    pipeline = Pipeline(
        [
            node(free_gpus, "value", "on_gpu", name="train_on_gpu", tags=["gpu"]),
            node(free_gpus, "value", "elsewhere", name="score_anywhere"),
        ]
    )
    catalog = DataCatalog({"value": MemoryDataset(1), "on_gpu": MemoryDataset(), "elsewhere": MemoryDataset()})
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None, resources={"GPU": 1}
    ) as cluster:  # a worker thread in this process: no process to start
        DaskRunner(address=cluster.scheduler_address).run(pipeline, catalog)
    assert catalog.load("on_gpu") == 0 and catalog.load("elsewhere") == 1


@pytest.mark.slow
def test_without_an_address_it_starts_and_closes_a_local_cluster() -> None:
    pipeline = Pipeline([node(abs, "value", "result", name="absolute")])
    catalog = DataCatalog({"value": MemoryDataset(-3), "result": MemoryDataset()})
    runner = DaskRunner(workers=1)
    runner.run(pipeline, catalog)
    assert catalog.load("result") == 3


def test_a_bad_worker_count_is_named() -> None:
    with pytest.raises(ValueError, match="--runner-params workers must be at least 1, got 0"):
        DaskRunner(workers=0)


def test_the_slurm_job_script_enters_the_project_and_gives_the_worker_its_gpus(capsys) -> None:
    pytest.importorskip("dask_jobqueue")
    load_script("slurm_cluster").main(["--dry-run", "--gpus", "1", "--cores", "8", "--port", "0"])
    script = capsys.readouterr().out
    assert "#SBATCH --gres=gpu:1" in script and "#SBATCH --cpus-per-task=8" in script
    assert f"cd {PROJECT}" in script and f"source {PROJECT / '.venv/bin/activate'}" in script
    assert "--resources GPU=1" in script  # the resource the generator's nodes ask for
    assert "--nthreads 1" in script  # one task at a time per worker


def test_a_cpu_slurm_job_runs_one_single_threaded_worker_per_core(capsys) -> None:
    pytest.importorskip("dask_jobqueue")
    load_script("slurm_cluster").main(["--dry-run", "--cores", "4", "--port", "0"])
    script = capsys.readouterr().out
    assert "#SBATCH --cpus-per-task=4" in script and "--nworkers 4" in script and "--nthreads 1" in script
    assert "--gres" not in script and "--resources" not in script


def test_the_slurm_script_names_a_bad_job_count(capsys) -> None:
    with pytest.raises(SystemExit):
        load_script("slurm_cluster").main(["--dry-run", "--jobs", "0"])
    assert "--jobs and --cores must be at least 1" in capsys.readouterr().err
