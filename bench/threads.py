"""Intra-op threads for small CPU work: 1 vs 2 (and all cores), measured side by side in one run.

    python bench/threads.py

Prints, for each workload typical of the lessons, ms per call and the speed-up of N threads
over 1. Measured on the 2-core CI machine (two runs): tiny training steps are a wash
(0.90-1.11x, within run-to-run noise), while the mixture score on 20k points (1.8-1.9x) and
an MLP forward on 20k points (1.7-1.9x) gain clearly. So a lone notebook keeps PyTorch's default of
one intra-op thread per core (2 there); scorelab.threads lowers it only while other processes keep cores busy
(bench/two_kernels.py).
"""

from __future__ import annotations

import os
import time

import torch

import scorelab as sl
from scorelab import losses


def median_ms(step, min_seconds: float = 1.0) -> float:
    step()
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < min_seconds or len(times) < 5:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return 1e3 * sorted(times)[len(times) // 2]


def workloads() -> dict:
    torch.manual_seed(0)
    mix = sl.datasets.ring_mixture()
    small_net, big_net = sl.ScoreMLP(2, hidden=64, n_layers=2), sl.ScoreMLP(2, hidden=256, n_layers=3)
    opt = torch.optim.Adam(small_net.parameters())
    x512, x4096, x20k = mix.sample(512, generator=0), mix.sample(4096, generator=0), mix.sample(20_000, generator=0)

    def train_step(x, loss):
        def step():
            opt.zero_grad()
            loss(x).backward()
            opt.step()

        return step

    return {
        "DSM step, MLP 64, batch 512": train_step(x512, lambda x: losses.dsm(small_net, x, 0.1, generator=0)),
        "ISM step, MLP 64, batch 512": train_step(x512, lambda x: losses.ism(small_net, x)),
        "DSM step, MLP 64, batch 4096": train_step(x4096, lambda x: losses.dsm(small_net, x, 0.1, generator=0)),
        "mixture score, 8 modes, 20k points": lambda: mix.score(x20k),
        "MLP 256 forward, 20k points": lambda: big_net(x20k).sum().item(),
    }


def main() -> None:
    cores = os.cpu_count() or 1
    counts = sorted({1, 2, cores})
    print(f"{'workload':<38}" + "".join(f"{f'{n} thr ms':>11}" for n in counts) + "".join(f"{f'{n}/1 speed-up':>15}" for n in counts[1:]))
    for name, step in workloads().items():
        ms = {}
        for n in counts:
            torch.set_num_threads(n)
            ms[n] = median_ms(step)
        print(f"{name:<38}" + "".join(f"{ms[n]:>11.2f}" for n in counts) + "".join(f"{ms[1] / ms[n]:>15.2f}" for n in counts[1:]))


if __name__ == "__main__":
    main()
