"""Execute notebooks headlessly; write executed copies and HTML to an output folder.

    python tools/run_notebooks.py lessons toy --out build

Prints one row per notebook (name, seconds, status) and exits non-zero if any failed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError
from nbconvert import HTMLExporter


def find_notebooks(folders: list[str]) -> list[Path]:
    """Every `*.ipynb` directly inside the given folders, in name order (checkpoints skipped)."""
    found = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"no folder {folder}")
        found += sorted(folder.glob("*.ipynb"))
    return found


def execute(path: Path, out_dir: Path, timeout: int) -> tuple[float, str]:
    """Run one notebook in its own folder; save `<out>/<folder>/<name>.ipynb` and `.html` whatever happens."""
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    # a local kernel over IPC sockets in a private folder: no TCP ports, no "unencrypted TCP" warnings
    with tempfile.TemporaryDirectory() as sockets:
        km = KernelManager(kernel_name="python3", transport="ipc", ip=str(Path(sockets) / "kernel"))
        client = NotebookClient(nb, km=km, timeout=timeout, resources={"metadata": {"path": str(path.parent)}})
        try:
            client.execute()
            status = "ok"
        except (CellExecutionError, CellTimeoutError) as err:
            status = "FAILED: " + str(err).strip().splitlines()[-1][:120]
        finally:
            if km.has_kernel:
                km.shutdown_kernel(now=True)
    seconds = time.perf_counter() - start
    target = out_dir / path.parent.name
    target.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target / path.name)
    html, _ = HTMLExporter().from_notebook_node(nb)
    (target / path.with_suffix(".html").name).write_text(html, encoding="utf-8")
    return seconds, status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="folders whose notebooks to run")
    parser.add_argument("--out", default="build", help="output folder (default: build)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds allowed per cell")
    args = parser.parse_args(argv)
    notebooks = find_notebooks(args.folders)
    width = max(len(str(path)) for path in notebooks)
    print(f"{'notebook':<{width}}  {'seconds':>8}  status", flush=True)
    failed = 0
    for path in notebooks:
        seconds, status = execute(path, Path(args.out), args.timeout)
        failed += status != "ok"
        print(f"{str(path):<{width}}  {seconds:8.1f}  {status}", flush=True)
    print(f"executed notebooks and HTML in {args.out}/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
