"""Timing helper shared by the benchmarks (run as `python bench/NAME.py`, so this folder is on sys.path)."""

from __future__ import annotations

import time


def best_of(fn, repeats: int = 3) -> float:
    """The fastest of `repeats` wall-clock timings of `fn()`, in seconds (the least disturbed run)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
