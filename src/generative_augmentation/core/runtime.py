"""Seeds, threads and devices: the one place that decides randomness and where tensors live.

The seed discipline: one project seed; every random consumer gets a child seed named after what it does
(``derive_seed(seed, "classifier", scenario, replicate)``), draws from generators of its own, and never from a
global RNG another consumer could have advanced. Code that must use torch's global RNG (weight initialisation,
dropout) runs inside :func:`seeded`, which restores the global state afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import sys
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from joblib import Parallel, delayed

from generative_augmentation.core.config import Config
from generative_augmentation.core.crowding import available_cores, warn_if_crowded

logger = logging.getLogger(__name__)
Result = TypeVar("Result")
SCATTER_BYTES = 1 << 20  # arrays common to every call and at least this large go to the workers once
GPU_TAG = "gpu"  # a node with this tag asks the Dask runner for a worker with a GPU (worker resource "GPU")


def derive_seed(seed: int, *keys: object) -> int:
    """A stable child seed for a named sub-task (same inputs, same seed, across processes and platforms)."""
    sequence = np.random.SeedSequence([int(seed), *[zlib.crc32(str(key).encode("utf-8")) for key in keys]])
    return int(sequence.generate_state(1)[0])


def torch_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator seeded with ``seed`` on ``device``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


def numpy_rng(seed: int) -> np.random.Generator:
    """A NumPy generator seeded with ``seed``."""
    return np.random.default_rng(int(seed))


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block on torch's global RNG seeded with ``seed`` (CPU and CUDA); the previous state comes back after."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run a block on one torch thread (the thread count comes back after): results then do not depend on the
    machine's cores, and parallel workers do not fight over them."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_jobs(function: Callable[..., Result], calls: Sequence[tuple], workers: int = 1) -> list[Result]:
    """``function(*call)`` for every call, results in order: independent units of work (replicates, chunks) that
    each fix their own seed and threads, so the results do not depend on where or beside what they run.

    Inside a task of the Dask runner, each call becomes a task of the same cluster (Dask's "tasks that submit
    tasks": the calling task leaves its slot while it waits), whatever ``workers`` says; large arguments common to
    every call (the same object in each: training arrays) go to every worker once (a copy on each, so a worker that
    dies loses none). A calling task that holds a worker resource (a GPU) runs the calls itself, on that device.
    Outside Dask, ``workers`` loky processes run them, or this process does, one after the other, when ``workers``
    is 1.
    """
    if len(calls) > 1 and _in_dask_task() and not _task_holds_resources():
        from distributed import worker_client

        common = [value for index, value in enumerate(calls[0]) if all(call[index] is value for call in calls)]
        state = _torch_state()
        with worker_client() as client:
            shared = {
                id(value): client.scatter([value], hash=False, broadcast=True)[0]
                for value in common
                if _worth_sending_once(value)
            }
            futures = [
                client.submit(
                    _call_in_state, state, function, *(shared.get(id(value), value) for value in call),
                    key=f"{function.__name__}-{uuid.uuid4().hex}",  # named after the work in Dask's task stream
                )
                for call in calls
            ]  # fmt: skip
            return client.gather(futures)
    if workers > 1 and len(calls) > 1:
        return Parallel(n_jobs=workers, backend="loky")(delayed(function)(*call) for call in calls)
    return [function(*call) for call in calls]


def _task_holds_resources() -> bool:
    """Whether the Dask task running this code was given worker resources (a GPU): its work stays with it."""
    from distributed import get_worker

    worker = get_worker()
    task = worker.state.tasks.get(worker.get_current_task())
    return bool(task is not None and task.resource_restrictions)


def _worth_sending_once(value: object) -> bool:
    """Large arguments and objects (a generator and its weights) go to the workers once; plain values do not."""
    from dask.sizeof import sizeof

    if isinstance(value, np.ndarray | tuple | list | dict):
        return sizeof(value) >= SCATTER_BYTES
    return not isinstance(value, int | float | str | bool | type(None) | Config)


def _torch_state() -> tuple[int, bool, bool]:
    return torch.get_num_threads(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark


def _call_in_state(state: tuple[int, bool, bool], function: Callable[..., Result], *args: object) -> Result:
    """``function(*args)`` with the calling task's torch threads and kernel settings: the same arithmetic on any
    worker (the thread count changes the order of CPU sums)."""
    previous = _torch_state()
    threads, torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = state
    torch.set_num_threads(threads)
    try:
        return function(*args)
    finally:
        torch.set_num_threads(previous[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[1:]


def _in_dask_task() -> bool:
    """Whether this code runs in a task on a Dask worker (distributed is only imported where one is used)."""
    if "distributed" not in sys.modules:
        return False
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


def pick_device(preferred: str | None = None) -> torch.device:
    """``preferred`` when given ("cpu", "cuda", "cuda:1"), else CUDA when present, else CPU."""
    if preferred and preferred != "auto":
        return torch.device(preferred)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


@dataclass(frozen=True)
class RuntimeConfig(Config):
    """How the run uses the machine: ``num_threads`` torch threads (null: the cores this process may use)."""

    where = "runtime"
    num_threads: int | None = None

    def checks(self):
        yield from self.at_least("num_threads")

    def threads(self) -> int:
        """The thread count this configuration asks for on this machine."""
        return self.num_threads or available_cores()


def apply_runtime(config: RuntimeConfig) -> dict[str, object]:
    """Set torch's thread count and deterministic kernels; returns what was set, to record with the run.

    Results are reproducible for the same configuration, seed and thread count: CPU kernels may sum in another
    order with another number of threads, which moves trained weights in the last digits.
    """
    threads = config.threads()
    torch.set_num_threads(threads)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    logger.info("torch uses %d thread(s) (runtime.num_threads)", threads)
    warn_if_crowded(threads)
    return {
        "num_threads": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }
