"""Timing helpers shared by the benchmarks (run as `python bench/NAME.py`, so this folder is on sys.path)."""

from __future__ import annotations

import statistics
import time


def interleaved(fns: dict, repeats: int = 5) -> dict[str, list[float]]:
    """Timings of several callables taken in turns (a, b, c, a, b, c, ...), so a slow spell of the machine
    hits all of them alike: the fair way to measure a ratio. One untimed warm-up call each first."""
    for fn in fns.values():
        fn()
    out = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - start)
    return out


def median_and_spread(values: list[float]) -> str:
    """`median [min-max]` of a list of numbers, three significant digits."""
    return f"{statistics.median(values):.3g} [{min(values):.3g}-{max(values):.3g}]"
