r"""CPU threads that share the machine: fewer intra-op threads while other processes keep cores busy.

PyTorch starts one OpenMP thread per core, and its threads spin while they wait. Two busy notebooks on a 2-core
laptop then ask for four spinning threads on two cores and slow each other far beyond 2x (`bench/two_kernels.py`
measures 1.6x of the fair share on the CI machine). One thread per process removes the thrash but costs a lone
notebook about 20 %; OpenMP's passive waiting costs it about 10 %. Instead, scorelab watches how busy the *other*
processes keep the cores and sets PyTorch's intra-op thread count to the cores they leave free, at most PyTorch's
own choice and at least one:

    threads = clip(round(min(cores, machine cores - busy_elsewhere)), 1, max_threads),

where busy_elsewhere is the machine's busy CPU time (``/proc/stat``) minus this process's own (``/proc/self/stat``)
over the time since the last look, in cores. A lone notebook keeps every core; two busy ones settle on one thread
each within about half a second, and each takes the cores back when the other goes quiet.

It looks at most every `INTERVAL` seconds, from the loops of scorelab's samplers, losses and `fit` (`adapt()` is a
clock read when it is not yet time), always in the calling thread, since an OpenMP thread count belongs to the thread
that sets it. Loops of your own that never call scorelab keep whatever count was last set.

Override with the environment variable ``SCORELAB_THREADS``: ``auto`` (the default), ``off`` (leave PyTorch's
setting alone), or a number (that many threads, fixed). Setting ``OMP_NUM_THREADS``, or calling
`torch.set_num_threads` yourself, also turns the adaptation off: an explicit choice is kept. Without ``/proc``
(macOS, Windows) nothing changes. Introduced for issue 27 (two notebooks at once); `status()` says what it does now.
"""

from __future__ import annotations

import os
import time

import torch

#: seconds between looks at the machine's load
INTERVAL = 0.5

_MODES = ("auto", "off")


class _Governor:
    def __init__(self):
        self.mode = "off"
        self.max_threads = torch.get_num_threads()
        self.last_set: int | None = None
        self.last_look = 0.0
        self.last_busy: float | None = None
        self.last_own: float | None = None
        self.busy_elsewhere = 0.0
        self.ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.machine_cores = self.cores  # the CPUs /proc/stat sums over (more than ours inside a container)
        try:
            with open("/proc/stat") as f:
                self.machine_cores = max(self.cores, sum(line[:3] == "cpu" and line[3].isdigit() for line in f))
        except OSError:
            pass

    def configure(self, setting: str | None) -> None:
        setting = (setting or "auto").strip().lower()
        if setting in ("off", "auto"):
            self.mode = setting
        else:
            try:
                n = int(setting)
            except ValueError:
                raise ValueError(f"SCORELAB_THREADS must be 'auto', 'off' or a positive integer, got {setting!r}") from None
            if n < 1:
                raise ValueError(f"SCORELAB_THREADS must be 'auto', 'off' or a positive integer, got {setting!r}")
            torch.set_num_threads(n)
            self.mode = "fixed"
            return
        if self.mode == "auto" and (os.environ.get("OMP_NUM_THREADS") or not os.path.exists("/proc/stat")):
            self.mode = "off"  # an explicit OMP_NUM_THREADS is the user's choice; without /proc we cannot see the load

    def _read(self) -> tuple[float, float] | None:
        """(machine busy CPU seconds, this process's CPU seconds), or None when /proc cannot be read."""
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()[1:]
            with open("/proc/self/stat") as f:
                own = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        values = [int(v) for v in fields]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        busy = sum(values[:8]) - idle  # user nice system idle iowait irq softirq steal: guest is inside user
        return busy / self.ticks, (int(own[11]) + int(own[12])) / self.ticks  # utime + stime (all threads)

    def adapt(self) -> None:
        now = time.monotonic()
        if self.mode != "auto" or now - self.last_look < INTERVAL:
            return
        if self.last_set is not None and torch.get_num_threads() != self.last_set:
            self.mode = "off"  # someone called torch.set_num_threads: keep their choice
            return
        reading = self._read()
        if reading is None:
            self.mode = "off"
            return
        busy, own = reading
        if self.last_busy is not None:
            elapsed = now - self.last_look
            self.busy_elsewhere = max(0.0, (busy - self.last_busy) - (own - self.last_own)) / elapsed
            free = min(self.cores, self.machine_cores - self.busy_elsewhere)
            want = int(min(self.max_threads, max(1, round(free))))
            if want != torch.get_num_threads():
                torch.set_num_threads(want)
            self.last_set = want
        self.last_look, self.last_busy, self.last_own = now, busy, own


_governor = _Governor()
_governor.configure(os.environ.get("SCORELAB_THREADS"))


def adapt() -> None:
    """Look at the machine's load (at most every `INTERVAL` s) and set PyTorch's intra-op threads to the free cores.

    Called from the loops of scorelab's samplers, losses and `fit`; cheap when it is not yet time (a clock read).
    """
    _governor.adapt()


def configure(setting: str | None = "auto") -> None:
    """Choose the policy as ``SCORELAB_THREADS`` would: ``"auto"``, ``"off"`` or a number of threads (fixed)."""
    if setting is not None and not isinstance(setting, str | int):
        raise TypeError(f"setting must be 'auto', 'off' or an int, got {type(setting).__name__}")
    _governor.last_set, _governor.last_busy, _governor.last_look, _governor.busy_elsewhere = None, None, 0.0, 0.0
    _governor.configure(None if setting is None else str(setting))  # the next adapt() starts a fresh look


def status() -> dict:
    """What the policy does now: mode, PyTorch's current and maximal thread counts, cores busy elsewhere."""
    g = _governor
    return {"mode": g.mode, "threads": torch.get_num_threads(), "max_threads": g.max_threads, "busy_elsewhere": round(g.busy_elsewhere, 2)}
