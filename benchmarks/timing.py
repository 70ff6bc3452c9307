"""The benchmarks' one timer (scripts in this folder import it by name:
`python benchmarks/<script>.py` puts the folder on `sys.path`)."""

import time

import numpy as np


def median_seconds(fn, repeats):
    """Median wall time of `fn()` over `repeats` calls after one warm-up
    call (which traces and compiles). `fn` must wait for its result, e.g.
    by returning `.numpy()` values."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times))
