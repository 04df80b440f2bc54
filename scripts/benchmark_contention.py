"""How the project runs beside a CPU-heavy neighbour: ratios against the idle machine, measured in one session.

Two measurements (docs/benchmarks.md has the results):

    .venv/bin/python scripts/benchmark_contention.py steps   # DDPM training s/step: torch threads x neighbour
    .venv/bin/python scripts/benchmark_contention.py steps --wait-policy default PASSIVE   # and OpenMP's wait policy
    .venv/bin/python scripts/benchmark_contention.py run     # a fresh clone's `make run`, idle then beside one

The neighbour is ``--neighbours`` processes (default: one per core) each multiplying 512x512 float64 matrices on
one thread without pause, started before the measurement and stopped after it: the shape of another engineer's
training job on the same cores. ``steps`` trains the default RetinaMNIST DDPM (``conf/base`` + ``conf/retinamnist``
generation settings, the 1,080 train images) for ``--steps`` steps (the whole fit, timed), once per thread count
(``runtime.num_threads``) and neighbour setting, each in its own process. ``run`` clones this repository twice
(``git clone``, so only committed work is measured), runs `make run` in each, the second beside the neighbour, and
reports both wall times and their ratio.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def busy() -> None:
    """One core's worth of work, for ever (float64 matrix products on one BLAS thread)."""
    os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = "1"
    import numpy as np

    matrix = np.random.default_rng(0).random((512, 512))
    while True:
        matrix = np.tanh(matrix @ matrix.T / 512)


@contextmanager
def neighbour(processes: int):
    """``processes`` busy processes for the duration of the block (none for 0)."""
    workers = [multiprocessing.Process(target=busy, daemon=True) for _ in range(processes)]
    for worker in workers:
        worker.start()
    time.sleep(2 if workers else 0)
    try:
        yield
    finally:
        for worker in workers:
            worker.terminate()
            worker.join()


STEP_PROBE = """
import json, sys, time
import numpy as np, torch
from kedro.config import OmegaConfigLoader
from generative_augmentation.core.generation import GenerationConfig
from generative_augmentation.core.generators import generator_class
from generative_augmentation.core.generators.base import TrainingImages
from generative_augmentation.core.images import ImageSpec
from generative_augmentation.core.runtime import RuntimeConfig, apply_runtime

threads, steps = int(sys.argv[1]), int(sys.argv[2])
apply_runtime(RuntimeConfig(num_threads=threads))
parameters = OmegaConfigLoader("conf", base_env="base", default_run_env="retinamnist",
                               merge_strategy={"parameters": "soft"})["parameters"]
config = GenerationConfig.parse(parameters["generation"])
image = ImageSpec.parse(parameters["image"])
data = np.load("data/01_raw/retinamnist.npz")
images, labels = data["train_images"], data["train_labels"].reshape(-1).astype(np.int64)
names = [str(name) for name in parameters["dataset"]["classes"]]
settings = config.settings.replace(train_steps=steps, warmup_steps=10)
generator = generator_class("ddpm")(settings, image, names, 0, 0, "cpu")
started = time.perf_counter()
generator.fit(TrainingImages(images, labels, np.zeros_like(labels), names, 0), progress=False)
elapsed = time.perf_counter() - started
print(json.dumps({"threads": threads, "seconds_per_step": elapsed / steps, "steps": steps}))
"""


def step_probe(threads: int, steps: int, wait_policy: str) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    if wait_policy != "default":
        env["OMP_WAIT_POLICY"] = wait_policy  # read by OpenMP when torch loads it, in the probe's own process
    result = subprocess.run(
        [sys.executable, "-c", STEP_PROBE, str(threads), str(steps)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_steps(args: argparse.Namespace) -> None:
    rows = []
    for processes in (0, args.neighbours):
        with neighbour(processes):
            for policy in args.wait_policy:
                for threads in args.threads:
                    probe = step_probe(threads, args.steps, policy)
                    rows.append({**probe, "neighbours": processes, "wait_policy": policy})
                    print(json.dumps(rows[-1]), flush=True)
    fastest_idle = min(row["seconds_per_step"] for row in rows if row["neighbours"] == 0)
    print(
        "\n| torch threads | OMP_WAIT_POLICY | neighbour processes | s / step | vs the fastest idle setting |"
        "\n|---:|---|---:|---:|---:|"
    )
    for row in rows:
        ratio = row["seconds_per_step"] / fastest_idle
        print(
            f"| {row['threads']} | {row['wait_policy']} | {row['neighbours']} | {row['seconds_per_step']:.3f} | "
            f"{ratio:.2f}x |"
        )


def timed_make_run(folder: Path) -> dict:
    subprocess.run(["git", "clone", "-q", str(ROOT), str(folder)], check=True)
    install = time.monotonic()
    subprocess.run(["make", "install"], cwd=folder, check=True, capture_output=True)
    started = time.monotonic()
    loads: list[float] = []
    done = threading.Event()

    def sample_load() -> None:  # the 1-minute load average every 30 s, to say how crowded the machine was
        while not done.wait(30):
            loads.append(os.getloadavg()[0])

    threading.Thread(target=sample_load, daemon=True).start()
    result = subprocess.run(["make", "run"], cwd=folder, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    done.set()
    (folder / "make_run.log").write_text(result.stdout + result.stderr)
    log = result.stdout + result.stderr
    if result.returncode != 0:
        raise SystemExit(f"make run failed in {folder}:\n{log[-3000:]}")
    plain = (folder / "kedro.log").read_text() if (folder / "kedro.log").exists() else log  # unwrapped lines
    timing = re.search(r"Run timing: (.*)", plain)
    return {
        "install_s": started - install,
        "make_run_s": wall,
        "run_timing": timing.group(1) if timing else "",
        "mean_load": sum(loads) / len(loads) if loads else None,
        "omp_wait_policy": "PASSIVE" if "OMP_WAIT_POLICY=PASSIVE" in plain else "default",
    }


def measure_run(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="contention_"))
    if args.idle_minutes is None:
        idle = timed_make_run(base / "idle")
        print(json.dumps({"idle": idle}), flush=True)
    else:  # an idle run measured earlier the same day, given in minutes
        idle = {"make_run_s": args.idle_minutes * 60}
    with neighbour(args.neighbours):
        busy_run = timed_make_run(base / "neighbour")
    print(json.dumps({"neighbour": busy_run}), flush=True)
    ratio = busy_run["make_run_s"] / idle["make_run_s"]
    print(
        "\n| machine | `make run` (after install) | ratio |\n|---|---:|---:|\n"
        f"| idle | {idle['make_run_s'] / 60:.1f} min | 1.00 |\n"
        f"| beside {args.neighbours} busy processes | {busy_run['make_run_s'] / 60:.1f} min | {ratio:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["steps", "run"])
    parser.add_argument("--neighbours", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument(
        "--idle-minutes", type=float, help="run: skip the idle run and compare with this earlier idle `make run`"
    )
    parser.add_argument(
        "--wait-policy", nargs="+", default=["default"], help="OpenMP wait policies to try: default, PASSIVE, ACTIVE"
    )
    args = parser.parse_args()
    measure_steps(args) if args.what == "steps" else measure_run(args)


if __name__ == "__main__":
    main()
