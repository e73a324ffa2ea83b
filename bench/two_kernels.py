"""Two notebooks at once: one lesson workload alone, then two copies in two processes, per thread setting (issue 27).

    python bench/two_kernels.py                 # the settings below, 3 repeats each (~4 min on 2 cores)
    python bench/two_kernels.py --repeats 5 --settings default scorelab

The workload is what lessons 02, 04 and 09 do on a CPU: DSM training steps of a 3 x 128 `ScoreMLP` on a 2-D mixture
(batch 4096), annealed Langevin over 20 000 particles with the exact score, and U-Net training steps on 16 x 16
shapes (batch 32). Each copy runs in a fresh process, with the setting's environment given before torch is imported,
as a kernel would start. "default" is PyTorch's own setting (scorelab's adaptation off), "scorelab (auto)" is
what `import scorelab` does (`scorelab.threads`). For each setting it prints

- lone: the median wall time of one copy alone, and its ratio to today's default (PyTorch's one OpenMP thread per
  core, spinning waits) -- the cost of the setting to a student who runs one notebook;
- pair: the wall time until both of two copies started together have finished, over twice the setting's own lone
  time (1.0: the two share the cores without loss; above: thrash), and over twice the default's lone time.

Spread: each number is a median over `--repeats` runs, printed with its min-max range.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

#: the settings measured: name -> the environment each copy starts with
OFF = {"SCORELAB_THREADS": "off"}
SETTINGS = {
    "default": OFF,  # PyTorch's own: one OpenMP thread per core, spinning waits (scorelab's adaptation off)
    "threads=1": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    "OMP_WAIT_POLICY=PASSIVE": {**OFF, "OMP_WAIT_POLICY": "PASSIVE"},
    "GOMP_SPINCOUNT=0": {**OFF, "GOMP_SPINCOUNT": "0"},
    "GOMP_SPINCOUNT=10k": {**OFF, "GOMP_SPINCOUNT": "10000"},
    "GOMP_SPINCOUNT=100k": {**OFF, "GOMP_SPINCOUNT": "100000"},
    "scorelab (auto)": {},  # scorelab.threads: intra-op threads = the cores other processes leave free
}


def workload() -> float:
    """One copy: returns its own wall time in seconds (imports excluded)."""
    import torch

    import scorelab as sl
    from scorelab import losses, sampling

    start = time.perf_counter()
    torch.manual_seed(0)
    mix = sl.datasets.ring_mixture()
    net = sl.ScoreMLP(2, hidden=128, n_layers=3, n_fourier=16, log_condition=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = mix.sample(4096, generator=0)
    for step in range(120):  # DSM at one level, as lessons 02 and 04 train
        opt.zero_grad()
        losses.dsm(lambda y: net(y, torch.full((len(y),), 0.3)), x, 0.3, generator=step).backward()
        opt.step()
    sigmas = sl.noise.geometric_sigmas(5.0, 0.05, 10)  # annealed Langevin with the exact score (lesson 04)
    gen = torch.Generator().manual_seed(1)
    start_x = 5 * torch.randn(20_000, 2, generator=gen)
    sampling.annealed_langevin(mix.noisy_score, start_x, sigmas, 2e-5, 10, generator=2)
    images = sl.datasets.to_model_range(sl.datasets.shapes(128, size=16, generator=0)[0])  # U-Net training on shapes (lesson 09)
    unet = sl.UNet(sl.UNetConfig(base_channels=8, channel_mults=(1, 2), attention_levels=()))
    uopt = torch.optim.Adam(unet.parameters(), lr=1e-3)
    sde = sl.VPSDE()
    for step in range(12):
        uopt.zero_grad()
        losses.sde_dsm(unet, images[(step * 32) % 128 :][:32], sde, generator=step).backward()
        uopt.step()
    return time.perf_counter() - start


def run_copies(env: dict, copies: int) -> float:
    """Start `copies` fresh processes at once; each times its own workload (imports excluded), and as they start
    within milliseconds of each other the pair's wall time is the longer of the two."""
    procs = [
        subprocess.Popen([sys.executable, __file__, "--worker"], env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)
        for _ in range(copies)
    ]
    times = [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError("a worker failed")
    return max(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(f"{workload():.4f}")
        return 0
    clean = {k: v for k, v in os.environ.items() if k not in {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY",
                                                                "GOMP_SPINCOUNT", "SCORELAB_THREADS"}}  # fmt: skip
    os.environ.clear()
    os.environ.update(clean)
    names = ["default", *[s for s in args.settings if s != "default"]]
    lone, pair = {}, {}
    for _ in range(args.repeats):  # settings interleaved, so drift in the machine's speed hits all alike
        for name in names:
            lone.setdefault(name, []).append(run_copies(SETTINGS[name], 1))
            pair.setdefault(name, []).append(run_copies(SETTINGS[name], 2))
    print(f"{os.cpu_count()} cores; median over {args.repeats} repeats [min-max]; load average now {os.getloadavg()[0]:.2f}")
    print(f"{'setting':26s} {'lone s':>16s} {'lone/default':>13s} {'pair s':>16s} {'pair/(2 lone)':>14s} {'pair/(2 default lone)':>22s}")
    base = statistics.median(lone["default"])
    for name in names:
        lo, pa = statistics.median(lone[name]), statistics.median(pair[name])
        print(f"{name:26s} {lo:6.2f} [{min(lone[name]):.2f}-{max(lone[name]):.2f}] {lo / base:13.2f} "
              f"{pa:6.2f} [{min(pair[name]):.2f}-{max(pair[name]):.2f}] {pa / (2 * lo):14.2f} {pa / (2 * base):22.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
