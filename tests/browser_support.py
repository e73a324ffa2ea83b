"""A throw-away Jupyter server and a headless system Chromium, for tests/test_browser.py.

Nothing here downloads anything: Chromium comes from the system's packages (`apt-get install chromium`),
Playwright from pip, and the server runs on 127.0.0.1 with temporary config, data, runtime, settings
and workspace folders, over a temporary copy of the notebooks (so autosave can never touch the repository).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/lib/chromium/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
HOW_TO_ENABLE = (
    "the browser test needs Chromium from the system's packages and Python Playwright: "
    "`apt-get install chromium` (make test does this as root on Debian/Ubuntu) and `pip install playwright` "
    "(in the dev extra); never `playwright install`, which downloads a browser"
)


def find_chromium() -> str | None:
    """The system Chromium's executable, or None."""
    found = os.environ.get("SCORELAB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return found or next((c for c in CHROMIUM_CANDIDATES if os.access(c, os.X_OK)), None)


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(folder: Path) -> None:
    """JupyterLab user settings: no autosave, no news or update checks (no pop-up over the notebook)."""
    plugins = {
        "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
        # render every cell (no virtual scrolling), so the test sees all prompts and outputs
        # and start the notebook's own kernel without asking ("Select Kernel" dialog)
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none", "autoStartDefaultKernel": True},
    }
    for name, value in plugins.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


@contextlib.contextmanager
def jupyter_server(notebooks: dict[str, Path], timeout: float = 90.0):
    """Start `jupyter lab` over a temporary root holding copies of `notebooks` ({name in root: source}); yield its URL."""
    with tempfile.TemporaryDirectory(prefix="scorelab-browser-") as tmp:
        tmp = Path(tmp)
        root = tmp / "root"
        for name, source in notebooks.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, root / name)
        folders = {k: tmp / k.lower() for k in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR")}
        for folder in folders.values():
            folder.mkdir()
        settings, workspaces = tmp / "settings", tmp / "workspaces"
        _settings(settings)
        workspaces.mkdir()
        env = {**os.environ, **{k: str(v) for k, v in folders.items()}, "TQDM_DISABLE": "1"}
        env.pop("MPLBACKEND", None)  # CI sets Agg; the kernels must use the inline backend a student gets
        # the kernel must find the same Python (and scorelab) as the tests
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            "--port-retries=0",
            "--IdentityProvider.token=",
            "--ServerApp.password=",
            f"--ServerApp.root_dir={root}",
            f"--LabApp.user_settings_dir={settings}",
            f"--LabApp.workspaces_dir={workspaces}",
            f"--JupyterNotebookApp.user_settings_dir={settings}",
            f"--JupyterNotebookApp.workspaces_dir={workspaces}",
            "--ServerApp.disable_check_xsrf=True",
            "--LabServerApp.open_browser=False",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")
        log = open(tmp / "server.log", "w")
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/api/status", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the Jupyter server did not start; its log:\n{(tmp / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()


def wait_for_idle_kernel(url: str, timeout: float = 120.0) -> None:
    """Until the server has a kernel that has started and reports idle (the page's indicator says idle earlier)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/api/kernels", timeout=10) as response:
                if any(k.get("execution_state") == "idle" for k in json.load(response)):
                    return
        except urllib.error.HTTPError as err:  # listing kernels while the previous one shuts down can answer 500
            if err.code < 500:
                raise
        time.sleep(0.5)
    raise RuntimeError(f"no kernel became idle within {timeout:.0f} s")


def shut_down_kernels(url: str) -> None:
    """Delete every session (and so its kernel): each notebook's kernel holds torch, two at once thrash 2 cores."""
    with urllib.request.urlopen(f"{url}/api/sessions", timeout=10) as response:
        sessions = json.load(response)
    for session in sessions:
        request = urllib.request.Request(f"{url}/api/sessions/{session['id']}", method="DELETE")
        urllib.request.urlopen(request, timeout=30).close()
