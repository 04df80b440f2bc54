"""A Dask cluster of SLURM jobs (dask-jobqueue) for the Dask runner; run it on the cluster's login node.

    pip install -e ".[cluster]"
    .venv/bin/python scripts/slurm_cluster.py --jobs 4 --cores 8 --memory 32GB --walltime 04:00:00 [--gpus 1]
    # then, in another shell on the login node, with the address it prints:
    .venv/bin/kedro run --runner=generative_augmentation.dask_runner.DaskRunner --runner-params=address=tcp://...

It starts the Dask scheduler here and submits ``--jobs`` SLURM jobs; each job enters this project's folder and
activates its .venv (so the workers run the same code and libraries as ``kedro run``). A CPU job runs one
single-threaded Dask worker per core; with ``--gpus``, a job asks SLURM for that many GPUs and runs one worker that
tells Dask it has them (the ``GPU`` resource the generator's nodes ask for). The project folder, with its data
folder, must be on storage every node sees. ``--dry-run`` prints the job script without submitting anything. Ctrl-C
stops the workers' jobs and the scheduler.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def slurm_cluster(args: argparse.Namespace):
    """The SLURMCluster these arguments describe (no job is submitted until it is scaled)."""
    from dask_jobqueue import SLURMCluster  # the `cluster` extra

    gpu_directives = [f"--gres=gpu:{args.gpus}"] if args.gpus else []
    # Every worker runs one task at a time (the runner's tasks set process-wide torch settings): a CPU job holds one
    # single-threaded worker per core; a GPU job one worker holding its GPUs, whose tasks use the job's cores as
    # torch threads (runtime.num_threads: null).
    layout = {"cores": 1, "processes": 1, "job_cpu": args.cores} if args.gpus else {"cores": args.cores}
    return SLURMCluster(
        queue=args.partition,
        account=args.account,
        processes=layout.pop("processes", args.cores),
        **layout,
        memory=args.memory,
        walltime=args.walltime,
        python=sys.executable,
        job_script_prologue=[f"cd {ROOT}", f"source {ROOT / '.venv/bin/activate'}"],
        job_extra_directives=gpu_directives,
        worker_extra_args=["--resources", f"GPU={args.gpus}"] if args.gpus else [],
        scheduler_options={"port": args.port},
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="SLURM jobs, one Dask worker each")
    parser.add_argument("--cores", type=int, default=4, help="cores per job")
    parser.add_argument("--memory", default="16GB", help="memory per job")
    parser.add_argument("--walltime", default="02:00:00")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per job (0: none)")
    parser.add_argument("--partition", default=None, help="SLURM partition (default: the site's)")
    parser.add_argument("--account", default=None)
    parser.add_argument("--port", type=int, default=8786, help="the scheduler's port on this node")
    parser.add_argument("--dry-run", action="store_true", help="print the job script, submit nothing")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.cores < 1 or args.gpus < 0:
        parser.error("--jobs and --cores must be at least 1, --gpus at least 0")
    cluster = slurm_cluster(args)
    if args.dry_run:
        print(cluster.job_script())
        cluster.close()
        return
    cluster.scale(jobs=args.jobs)
    print(f"Scheduler at {cluster.scheduler_address}; {args.jobs} worker job(s) submitted. Run:", flush=True)
    print(
        ".venv/bin/kedro run --runner=generative_augmentation.dask_runner.DaskRunner "
        f"--runner-params=address={cluster.scheduler_address}",
        flush=True,
    )
    try:
        while True:
            time.sleep(60)
    except KeyboardInterrupt:
        cluster.close()


if __name__ == "__main__":
    main()
