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


def test_environment_yml_installs_the_extras_pyproject_names():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    env = (ROOT / "environment.yml").read_text()
    installs = re.findall(r'"-e \.\[([a-z,]+)\]"', env)
    assert installs, "environment.yml must pip-install the package with extras: -e .[...]"
    named = set(installs[0].split(","))
    assert "dev" in named and named <= extras


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
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")])
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
    assert executed.cells[0].outputs[0]["text"].strip() == "42"
    assert (out / "demo" / "a.html").stat().st_size > 1000 and (out / "demo" / "b.html").exists()


@pytest.mark.parametrize(
    "script, args", [("sampling.py", ["--particles", "200", "--levels", "2", "--steps", "3"]), ("likelihood.py", ["--points", "20"])]
)
def test_benchmarks_run_and_report_a_ratio(script, args):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "speed-up" in result.stdout
