"""Project set-up: dependencies stated once, notebooks committed clean and in the lesson format."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "lessons").glob("*.ipynb")) + sorted((ROOT / "toy").glob("*.ipynb"))
LESSONS = sorted((ROOT / "lessons").glob("*.ipynb"))


def test_binder_builds_with_cpu_torch_and_installs_the_package():
    """repo2docker's conventions: environment.yml is built before the repository is copied (so no `-e .` there),
    postBuild installs the package with extras pyproject defines, and torch is a CPU build, never an unpinned pip one."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    env = (ROOT / "environment.yml").read_text()
    dependencies = [line.strip()[2:] for line in env.splitlines() if line.strip().startswith("- ")]
    assert any(d.startswith("pytorch-cpu") for d in dependencies), "environment.yml must pin conda-forge's CPU PyTorch"
    assert not any(re.match(r"(torch|pytorch)\b(?!-cpu)", d) for d in dependencies)
    assert "-e ." not in env.split("dependencies:")[1], "repo2docker has no source tree while building environment.yml"
    post_build = ROOT / "postBuild"
    assert post_build.stat().st_mode & 0o111, "postBuild must be executable"
    installs = re.findall(r'-e "?\.\[([a-z,]+)\]"?', post_build.read_text())
    assert installs and "dev" in installs[0].split(",") and set(installs[0].split(",")) <= extras


def test_repository_address_is_never_guessed():
    """No notebook hard-codes a repository address; every install cell is the same and asks for SCORELAB_REPO."""
    cells = {path.name: "".join(json.loads(path.read_text())["cells"][1]["source"]) for path in NOTEBOOKS}
    for name, cell in cells.items():
        assert "github.com/" not in cell.replace("github.com/OWNER", ""), name
        assert 'os.environ.get("SCORELAB_REPO")' in cell and "raise RuntimeError" in cell, name
    plain = {c.split("    from google.colab import output")[0].rstrip() for c in cells.values()}
    assert len(plain) == 1, "the install cells differ between notebooks"


NOTEBOOK_LINE_LIMIT = 100  # fits JupyterLab and Colab on a 1280-px laptop and a 1024-px projector without scrolling


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_code_fits_the_screen(path):
    cells = json.loads(path.read_text())["cells"]
    long = [
        (i, len(line))
        for i, cell in enumerate(cells)
        if cell["cell_type"] == "code"
        for line in "".join(cell["source"]).splitlines()
        if len(line) > NOTEBOOK_LINE_LIMIT
    ]
    assert not long, f"{path.name}: (cell, length) of lines over {NOTEBOOK_LINE_LIMIT} characters: {long}"


def test_torch_has_a_lower_bound_only():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_spec = next(d for d in deps if d.startswith("torch"))
    assert ">=" in torch_spec and "<" not in torch_spec.replace(">=", "") and "==" not in torch_spec


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; run nbstripout"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_lesson_follows_the_format(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    text = lambda c: "".join(c["source"])
    code = "\n".join(text(c) for c in cells if c["cell_type"] == "code")
    markdown = "\n".join(text(c) for c in cells if c["cell_type"] == "markdown")
    assert text(cells[0]).startswith("# ") and "**Goal.**" in text(cells[0]) and "*Follows:*" in text(cells[0])
    assert "google.colab" in text(cells[1])
    assert "$$" in markdown and "\\boxed" in markdown  # the derivation, with the tested equation highlighted
    assert "assert " in code and "plt.show()" in code
    assert "import scorelab as sl" in code and not re.search(r"^class ", code, re.M)  # lessons use the library, define none
    solutions = [c for c in cells if "solution" in c.get("metadata", {}).get("tags", [])]
    assert 2 <= len(solutions) <= 3 and all(c["metadata"]["jupyter"]["source_hidden"] for c in solutions)
    assert "## Exercises" in markdown


def test_readme_starts_with_the_two_commands():
    head = "\n".join((ROOT / "README.md").read_text().splitlines()[:20])
    assert "make lessons" in head and "make test" in head


def test_notebook_runner_writes_executed_copy_and_html(tmp_path):
    import nbformat

    folder = tmp_path / "demo"
    folder.mkdir()
    title = nbformat.v4.new_markdown_cell("# A · Answer\n\n**Goal.** Print the answer. Then stop.\n\n$$e^{i\\pi}+1=0$$")
    widget = "import ipywidgets as W\nW.VBox([W.IntSlider()])"  # a live widget: the static page must not need a CDN
    nb = nbformat.v4.new_notebook(cells=[title, nbformat.v4.new_code_cell("print(6 * 7)"), nbformat.v4.new_code_cell(widget)])
    nbformat.write(nb, folder / "a.ipynb")
    bad = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("assert False, 'boom'")])
    nbformat.write(bad, folder / "b.ipynb")
    out = tmp_path / "build"
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "run_notebooks.py"), str(folder), "--out", str(out)], capture_output=True, text=True
    )
    assert result.returncode == 1  # b.ipynb fails
    assert re.search(r"a\.ipynb\s+[\d.]+\s+ok", result.stdout) and "FAILED" in result.stdout
    executed = nbformat.read(out / "demo" / "a.ipynb", as_version=4)
    assert executed.cells[1].outputs[0]["text"].strip() == "42"
    assert "widgets" in executed.metadata  # the executed copy keeps the widget state for Jupyter
    page = (out / "demo" / "a.html").read_text()
    assert (out / "demo" / "b.html").exists()
    # offline: no script or stylesheet from another host, MathJax from the site's own folder
    assert not re.findall(r'<(?:script|link)[^>]+(?:src|href)="(?:https?:)?//', page)
    assert 'src="../_static/mathjax/MathJax.js' in page and (out / "_static" / "mathjax" / "MathJax.js").exists()
    assert 'availableFonts: ["STIX-Web"]' in page  # the only fonts the local copy has ("[Math Processing Error]" else)
    assert "application/vnd.jupyter.widget" not in page and "unpkg" not in page
    index = (out / "index.html").read_text()
    assert 'href="demo/a.html"' in index and "A · Answer" in index and "Print the answer." in index
    assert "Then stop" not in index  # one sentence
    assert 'availableFonts: ["STIX-Web"]' in index and 'src="_static/mathjax/MathJax.js' in index


@pytest.mark.parametrize(
    "script, args",
    [("sampling.py", ["--particles", "200", "--levels", "2", "--steps", "3", "--repeats", "2"]), ("likelihood.py", ["--points", "20"])],
)
def test_benchmarks_run_and_report_a_ratio(script, args):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "speed-up" in result.stdout


def test_image_bench_settings_do_not_leak_into_each_other():
    """bench/images.py times settings in turns on one network: channels_last must not stay on for the next row."""
    sys.path.insert(0, str(ROOT / "bench"))
    import images as image_bench
    import torch

    from scorelab import VPSDE, UNet

    net, data, cpu = UNet("tiny"), torch.zeros(8, 1, 16, 16), torch.device("cpu")
    for channels_last in (True, False):
        image_bench.train_rate(net, False, VPSDE(), data, 2, 1, 0, 1, False, channels_last, False, cpu)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        kernels = [p for p in net.parameters() if p.ndim == 4 and p.shape[1] > 1]  # where the two layouts differ
        assert kernels and all(p.is_contiguous(memory_format=layout) for p in kernels)
