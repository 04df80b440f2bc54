"""How busy the machine is, decided without importing torch (so that it can act before OpenMP starts).

Torch's CPU kernels run on OpenMP threads that spin while they wait for each other. When other processes
already keep cores busy, a spinning thread burns the time slice of the one it waits for and the generator's training
stalls; with idle threads sleeping (``OMP_WAIT_POLICY=PASSIVE``) it slows only by its share of the cores, while on an
idle machine sleeping costs speed (docs/benchmarks.md has the measurements). The wait policy changes no arithmetic,
so choosing it from the machine's state keeps results identical; the thread count would not.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)

#: Cores' worth of other processes' work from which idle OpenMP threads sleep.
CROWDED_CORES = 0.75


def available_cores() -> int:
    """The CPU cores this process may use (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def machine_load() -> float | None:
    """The 1-minute load average, or None where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def busy_cores(window_s: float = 0.3) -> float | None:
    """How many cores' worth of work the machine does now, measured from ``/proc/stat`` over ``window_s`` seconds
    while this process sleeps (so the figure is other processes' work). None where there is no ``/proc/stat``.

    The load average would be cheaper, but it remembers the last minutes: right after ``pip install`` an idle
    machine looks busy, and a neighbour that has just started looks idle.
    """
    stat = Path("/proc/stat")
    if not stat.exists():
        return None

    def sample() -> tuple[int, int]:
        fields = [int(value) for value in stat.read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle and iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    busy_before, total_before = sample()
    time.sleep(window_s)
    busy_after, total_after = sample()
    cores = os.cpu_count() or 1
    return cores * (busy_after - busy_before) / max(1, total_after - total_before)


def choose_openmp_wait_policy(busy: float | None = None) -> str | None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` when other processes keep at least ``CROWDED_CORES`` busy, unless the user
    set a policy or torch (and with it OpenMP, which reads the variable once) is already loaded. ``busy`` (cores'
    worth of other work) is measured when not given. Returns the policy set."""
    if "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return None
    busy = busy_cores() if busy is None else busy
    if busy is None or busy < CROWDED_CORES:
        return None
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "PASSIVE"


def warn_if_crowded(threads: int, busy: float | None = None, cores: int | None = None) -> bool:
    """Warn when other processes already keep cores busy (``busy``, cores' worth: measured with
    :func:`busy_cores`, or the load average where there is no ``/proc/stat``): torch's threads then stall each
    other. The thread count is not changed behind the user's back: it is part of what makes a run reproducible.
    Returns whether it warned."""
    cores = available_cores() if cores is None else cores
    if busy is None and threads > 1:
        busy = busy_cores(window_s=0.1)
        busy = machine_load() if busy is None else busy
    if busy is None:
        return False
    free = cores - busy
    if threads > 1 and free < threads - 0.5:
        suggested = max(1, int(free + 0.5))
        logger.warning(
            "Other processes keep about %.1f of the %d cores busy: %d torch threads will stall each other%s. Set "
            "runtime.num_threads to %d (--params=runtime.num_threads=%d) to run faster; results then differ in the "
            "last digits from a %d-thread run",
            min(busy, cores),
            cores,
            threads,
            " (idle OpenMP threads sleep: OMP_WAIT_POLICY=PASSIVE)" if os.environ.get("OMP_WAIT_POLICY") else "",
            suggested,
            suggested,
            threads,
        )
        return True
    return False
