"""A node function that ends the Dask worker running it, as the kernel's out-of-memory killer would. In a module of
its own that imports nothing heavy, so each worker that runs it starts (and dies) in a moment."""

import os


def end_the_worker(value: int) -> int:
    os._exit(1)
