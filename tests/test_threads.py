"""scorelab.threads: intra-op threads follow the cores other processes leave free (issue 27)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from scorelab import threads

needs_proc = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat (Linux)")


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
    threads.configure(os.environ.get("SCORELAB_THREADS") or "auto")


@needs_proc
def test_a_busy_process_elsewhere_takes_a_core_away(restore_threads):
    """A process spinning on one core is seen (busy_elsewhere near 1) and the thread count becomes the cores left."""
    threads.adapt()  # a recent look (as any scorelab call leaves) must not stop configure's fresh start
    threads.configure("auto")
    if os.environ.get("OMP_NUM_THREADS"):
        pytest.skip("OMP_NUM_THREADS is set: the adaptation is off by design")
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 4: pass"])
    try:
        time.sleep(0.3)  # let it start
        threads.adapt()  # the first look only reads the counters
        time.sleep(threads.INTERVAL + 0.5)
        threads.adapt()
        status = threads.status()
    finally:
        spinner.kill()
        spinner.wait()
    g = threads._governor
    assert status["busy_elsewhere"] >= 0.7, status  # one spinning core (minus scheduling noise)
    free = min(g.cores, g.machine_cores - status["busy_elsewhere"])
    assert status["threads"] == int(min(g.max_threads, max(1, round(free)))), status
    if g.max_threads == 2 and g.machine_cores == 2:  # the CI machine: one core left
        assert status["threads"] == 1


@needs_proc
def test_a_quiet_machine_keeps_every_thread(restore_threads):
    threads.configure("auto")
    if os.environ.get("OMP_NUM_THREADS"):
        pytest.skip("OMP_NUM_THREADS is set: the adaptation is off by design")
    torch.set_num_threads(1)  # as if adapted down while another process was busy
    threads.configure("auto")  # (an explicit set_num_threads switches it off; configure takes it back)
    threads._governor.last_set = 1
    threads.adapt()
    t = time.monotonic()
    while time.monotonic() - t < threads.INTERVAL + 0.1:  # this process busy, the others quiet
        torch.randn(256, 256) @ torch.randn(256, 256)
    threads.adapt()
    status = threads.status()
    if status["busy_elsewhere"] < 0.3:  # nothing else ran meanwhile: every core comes back
        assert status["threads"] == threads._governor.max_threads, status


def test_an_explicit_choice_is_kept(restore_threads):
    threads.configure("auto")
    threads._governor.last_set = torch.get_num_threads()
    torch.set_num_threads(1)  # the user's own call
    threads._governor.last_look = 0.0
    threads.adapt()
    assert threads.status()["mode"] == "off"
    assert torch.get_num_threads() == 1
    threads.configure(1)
    assert threads.status() == {**threads.status(), "mode": "fixed", "threads": 1}


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="SCORELAB_THREADS"):
        threads.configure("many")
    with pytest.raises(ValueError, match="SCORELAB_THREADS"):
        threads.configure("0")
    with pytest.raises(TypeError, match="setting"):
        threads.configure(2.5)
    code = "import scorelab, json; print(json.dumps(scorelab.threads.status()))"
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, "SCORELAB_THREADS": "lots"}, capture_output=True, text=True)
    assert run.returncode != 0 and "SCORELAB_THREADS must be" in run.stderr
    for env, mode in (({"SCORELAB_THREADS": "off"}, "off"), ({"OMP_NUM_THREADS": "1"}, "off"), ({"SCORELAB_THREADS": "1"}, "fixed")):
        clean = {k: v for k, v in os.environ.items() if k not in ("SCORELAB_THREADS", "OMP_NUM_THREADS")}
        run = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, check=True)
        assert f'"mode": "{mode}"' in run.stdout, (env, run.stdout)
