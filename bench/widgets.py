"""Explorer redraw times in Python: from a control's new value to the new PNG in the explorer's image widget.

    python bench/widgets.py [--repeats 9]

Each explorer starts at its default settings; one control at a time moves one slider step away and back (the same
key press a student makes), and every move is timed from setting the value to the new PNG bytes, split into
compute + drawing the artists, and rendering + PNG encoding. Printed as median [min-max] over `--repeats` moves.
Goal (issue 13): each redraw <= 150 ms median. What a browser adds on top (the websocket, decoding, painting) is
measured by tests/test_browser.py, which writes build/screenshots/latency.json.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import ipywidgets
import matplotlib
import torch
from _timing import median_and_spread

from scorelab import widgets

GOAL_MS = 150
SLIDERS = (ipywidgets.FloatSlider, ipywidgets.FloatLogSlider, ipywidgets.IntSlider)
#: explorer, then (control attribute, the value one slider step away from the default) per control
MOVES = {
    widgets.ScoreFieldExplorer: [("sigma", 10 ** (-1 + 0.05)), ("spread", 3.6), ("n_modes", 4)],
    widgets.LangevinPlayground: [("step_size", 10 ** (math.log10(4e-3) - 0.5)), ("n_particles", 1100), ("sigma_min", 10 ** (-1 + 0.05))],
    widgets.SDEExplorer: [
        ("time", 0.31),
        ("n_steps", 204),  # the slider moves in multiples of 4 (score evaluations)
        ("sde_name", "VE"),
        ("sde_name", "linear (FM)"),
        ("sampler", "probability-flow ODE"),
        ("corrector", True),
    ],
}


def time_moves(explorer, name: str, value, repeats: int) -> tuple[list[float], list[float]]:
    """Milliseconds of whole redraws and of their render + encode part, moving `name` to `value` and back."""
    control = getattr(explorer, name)
    default, totals, renders = control.value, [], []
    render = explorer.render

    def timed_render(fig):
        start = time.perf_counter()
        png = render(fig)
        renders.append(1e3 * (time.perf_counter() - start))
        return png

    explorer.render = timed_render
    try:
        for i in range(2 * repeats + 2):
            start = time.perf_counter()
            control.value = value if i % 2 == 0 else default
            totals.append(1e3 * (time.perf_counter() - start))
    finally:
        del explorer.render
    return totals[2:], renders[2:]  # the first move and back: one-off work (a first layout, caches)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="explorer redraw times")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, matplotlib {matplotlib.__version__}, {torch.get_num_threads()} threads; ms per redraw")
    worst = 0.0
    for cls, moves in MOVES.items():
        explorer = cls()
        print(f"  {cls.__name__}")
        for name, value in moves:
            control = getattr(explorer, name)
            totals, renders = time_moves(explorer, name, value, args.repeats)
            # a slider step costs the same either way; a choice's two values may not (the corrector doubles the
            # score evaluations), so each direction of a choice is its own row
            rows = {name: slice(None)}
            if not isinstance(control, SLIDERS):
                rows = {f"{name} = {value}": slice(0, None, 2), f"{name} = {control.value}": slice(1, None, 2)}
            for label, part in rows.items():
                total, render = totals[part], renders[part]
                compute = [t - r for t, r in zip(total, render)]
                worst = max(worst, statistics.median(total))
                print(f"    {label:32s} {median_and_spread(total):>20s}   (compute + artists {median_and_spread(compute)}, "
                      f"render + PNG {median_and_spread(render)})")  # fmt: skip
    print(f"  slowest median redraw {worst:.0f} ms (goal <= {GOAL_MS} ms)")


if __name__ == "__main__":
    main()
