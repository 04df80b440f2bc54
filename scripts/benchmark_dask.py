"""The evaluation pipeline on a local Dask cluster of 1, then 2, worker processes, back to back, with every task's time.

Usage (from the project root, after `make install` and a finished default `make run` of this version, here or in
another clone given with --data-from, whose upstream outputs the evaluation reads):

    .venv/bin/python scripts/benchmark_dask.py --replicates 4 --workers 1 2 [--data-from ../other-clone]

Each run works on its own copy of the project (configuration and data folder), so the project's outputs are left
alone; it starts a LocalCluster on 127.0.0.1 with that many single-threaded worker processes and runs
`--pipelines=evaluation` through the Dask runner (`runtime.num_threads: 1`, so a task uses one core). It prints a
Markdown table of the wall times and their ratio, the compute time of each kind of task (Dask's task stream), whether
the two runs' pre-registered contrasts are identical, and the wall time projected for more workers by scheduling the
measured tasks longest-first on N workers. The projection leaves out the `train_classifier` tasks, which only wait
for their replicates' tasks, and the workers' start and the runner's own overhead. Results also go to --output as
JSON.
"""

from __future__ import annotations

import argparse
import heapq
import json
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd
from distributed import Client, LocalCluster, get_task_stream
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from generative_augmentation.dask_runner import DaskRunner

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("conf", "pyproject.toml", "data")


def copy_project(folder: Path, data_from: Path) -> Path:
    """This project's configuration and ``data_from``'s data folder, copied (no MLflow store: a fresh one is made)."""
    for name in COPIED:
        source = (data_from if name == "data" else ROOT) / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("local", "*.lock"))
        else:
            shutil.copy(source, folder / name)
    (folder / "conf" / "local").mkdir(exist_ok=True)
    (folder / "src").mkdir()
    return folder


def task_name(key: object) -> str:
    """A node task's node name (the runner keys them ``<node>-<uuid>``), or the function of a replicate task."""
    text = str(key[0] if isinstance(key, tuple) else key)
    return text.rsplit("-", 1)[0]


def run_once(workers: int, replicates: int, folder: Path, data_from: Path) -> dict:
    project = copy_project(folder, data_from)
    bootstrap_project(project)
    params = {"evaluation": {"replicates": replicates}, "runtime": {"num_threads": 1}}
    with LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster, Client(cluster) as client:  # fmt: skip
        client.wait_for_workers(workers)
        with get_task_stream(client) as stream, KedroSession.create(project, runtime_params=params) as session:
            started = time.perf_counter()
            session.run(pipeline_names=["evaluation"], runner=DaskRunner(address=cluster.scheduler_address))
            wall = time.perf_counter() - started
    tasks = []
    for record in stream.data:
        for span in record["startstops"]:
            if span["action"] == "compute":
                tasks.append({"task": task_name(record["key"]), "seconds": span["stop"] - span["start"]})
    contrasts = sorted((project / "data/08_reporting/primary_contrasts.csv").glob("*/*"))[-1]
    return {"workers": workers, "wall_s": wall, "tasks": tasks, "contrasts": pd.read_csv(contrasts)}


def project_wall(seconds: list[float], workers: int) -> float:
    """The makespan of independent tasks of these durations scheduled longest-first on ``workers`` workers."""
    finish = [0.0] * workers
    for duration in sorted(seconds, reverse=True):
        heapq.heapreplace(finish, finish[0] + duration)
    return max(finish)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicates", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--project-to", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--output", default="dask_benchmark.json")
    parser.add_argument("--data-from", type=Path, default=ROOT, help="a project folder with a finished default run")
    args = parser.parse_args()
    runs = []
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as folder:
            runs.append(run_once(workers, args.replicates, Path(folder), args.data_from))
        print(f"{workers} worker(s): {runs[-1]['wall_s']:.1f} s", flush=True)

    base = runs[0]
    print("\n| workers | wall (s) | ratio to first |\n|---:|---:|---:|")
    for run in runs:
        print(f"| {run['workers']} | {run['wall_s']:.1f} | {base['wall_s'] / run['wall_s']:.2f}x |")
    per_task = defaultdict(list)
    for task in base["tasks"]:
        per_task[task["task"]].append(task["seconds"])
    print(f"\nTasks of the {base['workers']}-worker run (time on a worker; train_classifier: waiting included):\n")
    print("| task | count | mean (s) | min (s) | max (s) | total (s) |\n|---|---:|---:|---:|---:|---:|")
    for name, seconds in sorted(per_task.items(), key=lambda item: -sum(item[1])):
        figures = [sum(seconds) / len(seconds), min(seconds), max(seconds)]
        print(f"| {name} | {len(seconds)} | " + " | ".join(f"{x:.2f}" for x in figures) + f" | {sum(seconds):.1f} |")
    identical = all(run["contrasts"].equals(base["contrasts"]) for run in runs)
    print(f"\nPre-registered contrasts identical across the runs: {identical}")
    waiting = {name for name in per_task if name.endswith("train_classifier")}  # they wait for their replicates
    durations = [task["seconds"] for task in base["tasks"] if task["task"] not in waiting]
    print("\n| workers (projected) | wall (s) |\n|---:|---:|")
    projected = {n: project_wall(durations, n) for n in [*args.workers, *args.project_to]}
    for workers, seconds in projected.items():
        print(f"| {workers} | {seconds:.1f} |")
    summary = {
        "replicates": args.replicates,
        "runs": [{"workers": run["workers"], "wall_s": round(run["wall_s"], 1)} for run in runs],
        "tasks": {name: {"count": len(s), "total_s": round(sum(s), 2)} for name, s in per_task.items()},
        "identical_contrasts": identical,
        "projected_wall_s": {str(n): round(s, 1) for n, s in projected.items()},
    }
    Path(args.output).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
