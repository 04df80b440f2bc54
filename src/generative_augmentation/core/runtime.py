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
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from generative_augmentation.core.config import Config
from generative_augmentation.core.crowding import available_cores, warn_if_crowded

logger = logging.getLogger(__name__)


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
