"""Execute notebooks headlessly; write executed copies and a static site that works offline.

    python tools/run_notebooks.py lessons toy --out build

Prints one row per notebook (name, seconds, status) and exits non-zero if any failed. In `--out`:
`<folder>/<name>.ipynb` (executed, with widget state, for Jupyter), `<folder>/<name>.html` (a static
page: MathJax from `_static/mathjax/`, no CDN; each demo shows its figure at the default settings) and
`index.html`, linking every page with its run time and the notebook's one-line summary.
"""

from __future__ import annotations

import argparse
import copy
import html
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError
from nbconvert import HTMLExporter
from nbconvert.filters.markdown_mistune import markdown2html_mistune

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
TEMPLATES = Path(__file__).parent / "site_template"


def find_notebooks(folders: list[str]) -> list[Path]:
    """Every `*.ipynb` directly inside the given folders, in name order (checkpoints skipped)."""
    found = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"no folder {folder}")
        found += sorted(folder.glob("*.ipynb"))
    return found


def summary(nb) -> tuple[str, str]:
    """(title, one-line summary) from the first Markdown cell: its heading and the first sentence after it."""
    text = next((c.source for c in nb.cells if c.cell_type == "markdown"), "")
    lines = text.strip().splitlines()
    title = lines[0].lstrip("# ").strip() if lines else ""
    body = " ".join(line.strip() for line in lines[1:] if line.strip())
    body = re.sub(r"\*\*Goal\.\*\*\s*", "", body)
    sentence = re.split(r"(?<=[.!?])\s", body, maxsplit=1)[0] if body else ""
    return title, sentence


def static_copy(nb):
    """The notebook as a page without a kernel: widget views give way to the static figure each explorer also
    provides (its `text/html`); widgets with nothing static to show (progress bars) are left out."""
    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)  # no widget manager to load
    for cell in nb.cells:
        kept = []
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW in data:
                del data[WIDGET_VIEW]
                if "text/html" not in data and "image/png" not in data:
                    continue  # its text/plain is the widget's repr at creation (a progress bar at 0%)
            kept.append(output)
        if cell.cell_type == "code":
            cell.outputs = kept
    return nb


MATHJAX_FONTS = (TEMPLATES / "mathjax_fonts.html").read_text()  # also included by offline.html.j2


def mathjax_address(depth: int) -> str:
    return "../" * depth + "_static/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"


def html_page(nb, depth: int) -> str:
    """A self-contained lab-style page; `depth` folders below the site root (for the MathJax address)."""
    exporter = HTMLExporter(
        template_name="lab",
        extra_template_paths=[str(TEMPLATES)],
        mathjax_url=mathjax_address(depth),
    )
    exporter.template_file = "offline.html.j2"
    page, _ = exporter.from_notebook_node(static_copy(nb))
    return page


def copy_mathjax(out_dir: Path) -> None:
    """MathJax 2.7 from the `jupyter-server-mathjax` package into `<out>/_static/mathjax` (once)."""
    import jupyter_server_mathjax

    source = Path(jupyter_server_mathjax.__file__).parent / "static"
    target = out_dir / "_static" / "mathjax"
    if not (target / "MathJax.js").exists():
        shutil.copytree(source, target, dirs_exist_ok=True)


def execute(path: Path, out_dir: Path, timeout: int) -> tuple[float, str, tuple[str, str]]:
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
    (target / path.with_suffix(".html").name).write_text(html_page(nb, depth=1), encoding="utf-8")
    return seconds, status, summary(nb)


def write_index(out_dir: Path, rows: list[tuple[Path, float, str, tuple[str, str]]]) -> Path:
    """`index.html`: every page grouped by folder, with its run time, status and summary."""
    body = []
    for folder in dict.fromkeys(path.parent.name for path, *_ in rows):
        body.append(f"<h2>{html.escape(folder)}/</h2>\n<table>\n<tr><th>page</th><th>what you will see</th><th>run time</th></tr>")
        for path, seconds, status, (title, sentence) in rows:
            if path.parent.name != folder:
                continue
            link = f"{folder}/{path.with_suffix('.html').name}"
            state = "" if status == "ok" else f' <span class="failed">{html.escape(status)}</span>'
            body.append(
                f'<tr><td><a href="{html.escape(link)}">{html.escape(title or path.stem)}</a></td>'
                f"<td>{markdown2html_mistune(sentence)}{state}</td><td>{seconds:.0f} s</td></tr>"
            )
        body.append("</table>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>scorelab: lessons and demos</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.45; color: #222; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ text-align: left; padding: 0.4rem 0.6rem; border-bottom: 1px solid #ddd; vertical-align: top; }}
td:last-child, th:last-child {{ text-align: right; white-space: nowrap; }}
a {{ color: #1f5fa8; }} .failed {{ color: #b00020; font-weight: bold; }} td p {{ margin: 0; }}
</style>
{MATHJAX_FONTS}
<script src="{mathjax_address(0)}"></script>
<script type="text/x-mathjax-config">
MathJax.Hub.Config({{tex2jax: {{inlineMath: [["$", "$"]], processEscapes: true}}, messageStyle: "none"}});
</script>
</head><body>
<h1>scorelab: lessons and demos</h1>
<p>Executed copies of every lesson and demo, readable without running anything (and without a network).
The demos show their figures at the default settings; open the notebooks in Jupyter to move the sliders.
Run times are this build's, on this machine.</p>
{chr(10).join(body)}
</body></html>
"""
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="folders whose notebooks to run")
    parser.add_argument("--out", default="build", help="output folder (default: build)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds allowed per cell")
    args = parser.parse_args(argv)
    notebooks = find_notebooks(args.folders)
    out_dir = Path(args.out)
    copy_mathjax(out_dir)
    width = max(len(str(path)) for path in notebooks)
    print(f"{'notebook':<{width}}  {'seconds':>8}  status", flush=True)
    rows = []
    for path in notebooks:
        seconds, status, about = execute(path, out_dir, args.timeout)
        rows.append((path, seconds, status, about))
        print(f"{str(path):<{width}}  {seconds:8.1f}  {status}", flush=True)
    index = write_index(out_dir, rows)
    print(f"executed notebooks and HTML in {out_dir}/; open {index}")
    return 1 if any(status != "ok" for _, _, status, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
