"""What the GPU machine of bench/gpu_run.sh has and lacks, how to bring the rest, and a CPU rehearsal of that machine.

    python bench/gpu_machine.py prepare            # here, with PyPI: .gpu/data/mnist and .whl/ for the GPU call
    python bench/gpu_machine.py check              # the wheels in .whl/ and the machine's packages cover diffusers
    python bench/gpu_machine.py rehearse --out DIR # CI: bench/gpu_run.sh as that machine runs it, tiny sizes, on the CPU

The GPU machine (/work/.library/device/KINDS.md in the workplace that lends it): python3 is Python 3.12 with PyTorch
2.11 (CUDA) and the packages of `MACHINE_PACKAGES`; nothing outside it can be reached, so `pip` finds no index and a
build-isolated `pip install -e .` cannot fetch setuptools. Only the working tree travels: tracked files, untracked files
git does not ignore, and the ignored paths a call names in `carry`. `../shared` does not. So `prepare` copies the
MNIST test digits into `.gpu/data/mnist` and downloads the wheels of diffusers and of what it declares that the machine
lacks into `.whl/`; both folders are ignored by git and carried: `carry=[".gpu", ".whl"]`.

`rehearse` reproduces that machine on the CPU as closely as a CPU can:
- the working tree is a copy of exactly what would travel (git's file list plus `.gpu` and `.whl`, laid out by
  `prepare` when the checkout has none), so nothing beside it (`../shared`, `.venv`) can be read by accident;
- `python3` is a fresh virtual environment that sees only the packages of this environment that the GPU machine also
  has (`MACHINE_PACKAGES`): diffusers and importlib_metadata are not among them, nor is scorelab;
- it runs in a network namespace of its own with only the loopback interface (`unshare -n`, where allowed; else
  `PIP_NO_INDEX=1`, no pip configuration and a dead proxy), so pip and anything else reach nothing;
- then `REHEARSAL=1 bash bench/gpu_run.sh` runs every step of the GPU run with tiny sizes and half the time budget, and
  the rehearsal checks the limits of what comes back ($OUT: at most 8 files, each <= 16 MiB, no checkpoint).
It cannot reproduce CUDA: bf16 autocast, channels_last, NCCL, CUDA generators and torch 2.11 itself are not run here
(this environment's torch is the CPU build the Makefile installs). See bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: the Python packages of the GPU machine's image ('cuda', as read on 2026-11-17), with the versions a session's
#: `pip list` showed there where one was shown (None: there, version not recorded). Copied from KINDS.md.
MACHINE_PACKAGES = {
    **dict.fromkeys(
        "absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi "
        "charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core "
        "cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock "
        "flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx "
        "huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin "
        "jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax "
        "llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack "
        "multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro "
        "nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft "
        "nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py "
        "nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript "
        "opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec "
        "patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 "
        "py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock "
        "pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu "
        "safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers "
        "setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard "
        "tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio "
        "torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer "
        "typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp".split()
    ),
    "accelerate": "1.15.0",
    "huggingface-hub": "1.33.0",
    "numpy": "2.5.2",
    "safetensors": "0.8.0",
    "torch": "2.11.0",
    "torchvision": "0.26.0",
    "transformers": "5.17.0",
    "triton": "3.6.0",
}
MACHINE_PYTHON = "3.12"

#: what `prepare` downloads into .whl/: diffusers for bench/images.py, and each package its metadata requires (extras
#: aside) that MACHINE_PACKAGES lacks; `check` proves the list complete. One version of each (two stop the install).
WHEELS = {"diffusers": "0.42.1", "importlib-metadata": "10.2.0", "lazy-importer": "0.1.0"}
# diffusers declares importlib_metadata, which declares lazy-importer; on Python >= 3.8 diffusers imports the standard
# library's importlib.metadata instead, so these two are brought for the declared closure, not for a known import
MNIST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
DATA_DIR = ".gpu/data/mnist"  # the in-tree copy gpu_run.sh reads (its DATA default)
CARRY = (".gpu", ".whl")  # the ignored paths the GPU call names in `carry`
TRAVEL_LIMIT = 64 * 2**20  # the working tree that travels, carried paths included
#: what comes back from $OUT (device README, "Limits")
OUT_FILES, OUT_FILE_BYTES, OUT_TOTAL_BYTES, OUT_DEPTH = 8, 16 * 2**20, 64 * 2**20, 3


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _packaging():
    try:
        from packaging.requirements import Requirement
        from packaging.version import Version
    except ImportError:  # pip vendors it
        from pip._vendor.packaging.requirements import Requirement
        from pip._vendor.packaging.version import Version
    return Requirement, Version


# --- the files that travel --------------------------------------------------------------------------------------


def travelling_files(root: Path) -> list[Path]:
    """The paths (relative to `root`) that a device call sends: tracked and untracked-not-ignored files, `shared/`
    when the checkout has one, and the carried paths; files that git lists but the tree no longer has are left out."""
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True).stdout.decode().split("\0")  # fmt: skip
    files = {Path(p) for p in listed if p and (root / p).is_file()}
    for extra in ("shared", *CARRY):
        if (root / extra).is_dir():
            files |= {p.relative_to(root) for p in (root / extra).rglob("*") if p.is_file()}
    return sorted(files)


def copy_tree(root: Path, dest: Path) -> int:
    """Copy what travels from `root` to `dest`; returns the bytes copied."""
    total = 0
    for rel in travelling_files(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)
        total += target.stat().st_size
    return total


# --- prepare: data and wheels -----------------------------------------------------------------------------------


def copy_data(root: Path, source: Path) -> Path:
    missing = [f for f in MNIST_FILES if not (source / f).is_file()]
    if missing:
        raise SystemExit(f"prepare: {source} lacks {', '.join(missing)} (pass --mnist FOLDER with the MNIST test split)")
    dest = root / DATA_DIR
    dest.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        shutil.copyfile(source / name, dest / name)  # not the source's mode: shared/ is read-only
    return dest


def _repack_installed(name: str, version: str, dest: Path) -> Path | None:
    """A wheel of the installed distribution `name`, when its installed version is `version` and its files are all
    listed in its RECORD: the offline stand-in for a download (a pure-Python package's files are the wheel's files)."""
    import importlib.metadata as md

    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        return None
    if dist.version != version or not dist.files:
        return None
    wheel_meta = dist.read_text("WHEEL") or ""
    if "Root-Is-Purelib: true" not in wheel_meta:
        return None
    base = Path(dist.locate_file(""))
    path = dest / f"{normalize(name).replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for f in dist.files:
            if str(f).startswith("..") or "__pycache__" in f.parts or f.name in ("INSTALLER", "REQUESTED", "direct_url.json"):
                continue
            z.write(base / f, str(f))
    return path


def download_wheels(root: Path) -> list[Path]:
    """pip download (no dependencies, binary only, for the machine's Python 3.12 on x86-64) of `WHEELS` into .whl/;
    offline, a wheel repacked from this environment's install of the same version."""
    dest = root / ".whl"
    dest.mkdir(exist_ok=True)
    platforms = [f"--platform={p}_x86_64" for p in ("manylinux_2_28", "manylinux_2_27", "manylinux_2_17", "manylinux2014", "manylinux1")]
    made = []
    for name, version in WHEELS.items():
        have = [w for w in dest.glob("*.whl") if normalize(w.name.split("-")[0]) == normalize(name)]
        if [w for w in have if w.name.split("-")[1] == version]:
            made += [w for w in have if w.name.split("-")[1] == version]
            continue
        for stale in have:  # one version of each
            stale.unlink()
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                   f"--python-version={MACHINE_PYTHON}", "--implementation=cp", *platforms, "-d", str(dest),
                   f"{name}=={version}"]  # fmt: skip
        if subprocess.run(command, capture_output=True, text=True, timeout=300).returncode == 0:
            made += [w for w in dest.glob("*.whl") if normalize(w.name.split("-")[0]) == normalize(name)]
            continue
        wheel = _repack_installed(name, version, dest)
        if wheel is None:
            raise SystemExit(f"prepare: could not download {name}=={version}, and this environment has no installed copy of it")
        print(f"prepare: {name}=={version} repacked from this environment (no index reached)")
        made.append(wheel)
    return made


def check_wheels(folder: Path) -> list[str]:
    """Problems with the wheels in `folder` for the GPU machine (empty: none): two versions of one package, or a
    requirement (extras aside, markers evaluated for Python 3.12 on Linux) that neither the folder nor the machine
    meets, with the machine's version checked where it was recorded."""
    Requirement, Version = _packaging()
    wheels = sorted(folder.glob("*.whl"))
    problems, have = [], {}
    for w in wheels:
        name, version = normalize(w.name.split("-")[0]), w.name.split("-")[1]
        if name in have:
            problems.append(f"two versions of {name}: {have[name]} and {version}")
        have[name] = version
    if "diffusers" not in have:
        problems.append(f"no diffusers wheel in {folder}")
    env = {"python_version": MACHINE_PYTHON, "python_full_version": MACHINE_PYTHON + ".3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "extra": ""}  # fmt: skip
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            lines = z.read(meta).decode().splitlines()
        for line in lines:
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is not None and not req.marker.evaluate(env):
                continue  # an extra, or another Python
            name = normalize(req.name)
            version = have.get(name) or MACHINE_PACKAGES.get(name)
            if name not in have and name not in MACHINE_PACKAGES:
                problems.append(f"{w.name} needs {req}: not on the GPU machine and not in {folder.name}/")
            elif version is not None and req.specifier and not req.specifier.contains(Version(version), prereleases=True):
                problems.append(f"{w.name} needs {req}: {name} {version} is what the GPU machine / {folder.name}/ has")
    return problems


def prepare(root: Path, mnist: Path) -> dict:
    data = copy_data(root, mnist)
    wheels = download_wheels(root)
    problems = check_wheels(root / ".whl")
    if problems:
        raise SystemExit("prepare: the wheels do not cover diffusers on the GPU machine:\n  " + "\n  ".join(problems))
    size = sum((root / p).stat().st_size for p in travelling_files(root))
    if size > TRAVEL_LIMIT:
        raise SystemExit(f"prepare: the working tree that would travel is {size / 2**20:.1f} MiB, over the 64 MiB limit")
    return {"data": str(data.relative_to(root)), "wheels": [w.name for w in wheels], "travelling_MiB": round(size / 2**20, 1)}


# --- the rehearsal ----------------------------------------------------------------------------------------------


def machine_python(dest: Path) -> Path:
    """A virtual environment at `dest` whose site-packages holds links to this environment's installs of the
    packages in MACHINE_PACKAGES and nothing else: the GPU machine's package set, at this environment's versions."""
    import importlib.metadata as md
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True)
    site = Path(subprocess.run([dest / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())  # fmt: skip
    host = Path(sysconfig.get_paths()["purelib"])
    installed = {normalize(d.metadata["Name"]): d for d in md.distributions(path=[str(host)])}
    # the machine's packages and what this environment's versions of them require: there, its own versions of them
    # are installed consistently (huggingface-hub 2.x here needs httpx2, which the machine's 1.33 does not name)
    Requirement, _ = _packaging()
    allowed, todo = set(), [n for n in MACHINE_PACKAGES if n in installed]
    while todo:
        name = todo.pop()
        if name in allowed:
            continue
        allowed.add(name)
        for text in installed[name].requires or []:
            req = Requirement(text)
            if (req.marker is None or req.marker.evaluate({"extra": ""})) and normalize(req.name) in installed:
                todo.append(normalize(req.name))
    for name in sorted(allowed):
        dist = installed[name]
        if not dist.files:
            continue
        for top in {f.parts[0] for f in dist.files if f.parts and f.parts[0] != ".."}:
            if (host / top).exists() and not (site / top).exists():
                (site / top).symlink_to(host / top)
    return dest / "bin" / "python3"


def check_out(out: Path) -> list[str]:
    """What would not come back from `out` as the device tool returns it, or breaks this script's promise."""
    problems, files = [], [p for p in out.rglob("*") if p.is_file() or p.is_symlink()]
    if len(files) > OUT_FILES:
        problems.append(f"{len(files)} files under $OUT, at most {OUT_FILES} come back: {sorted(str(f.relative_to(out)) for f in files)}")
    for f in files:
        rel = f.relative_to(out)
        if f.is_symlink() or not f.is_file():
            problems.append(f"{rel}: not a plain file")
        elif f.stat().st_size > OUT_FILE_BYTES:
            problems.append(f"{rel}: {f.stat().st_size / 2**20:.1f} MiB, over 16 MiB")
        if len(rel.parts) > OUT_DEPTH:
            problems.append(f"{rel}: more than 2 folders down")
        if not all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in rel.parts):
            problems.append(f"{rel}: a name with characters other than letters, digits, '.', '_', '-'")
        if f.suffix in (".pt", ".pth", ".ckpt", ".npz"):
            problems.append(f"{rel}: a checkpoint or sample archive, not a small result")
    if sum(f.stat().st_size for f in files if f.is_file()) > OUT_TOTAL_BYTES:
        problems.append("more than 64 MiB under $OUT")
    return problems


def _network_wrapper() -> tuple[list[str], str]:
    """`unshare -n` with the loopback up, where this machine allows it (root): no network at all, as on the GPU machine."""
    probe = ["unshare", "-n", "sh", "-c", "ip link set lo up"]
    wrapper = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    try:
        if subprocess.run(probe, capture_output=True, timeout=20).returncode == 0:
            return wrapper, "no network (own network namespace, loopback only)"
    except (FileNotFoundError, subprocess.TimeoutExpired):
        pass
    return [], "network not isolated here (no unshare -n): pip is kept off the index by PIP_NO_INDEX=1 and a dead proxy"


def rehearse(out: Path, mnist: Path) -> dict:
    """Lay out the machine (see the module docstring), run `REHEARSAL=1 bash bench/gpu_run.sh` there, check $OUT."""
    out = out.resolve()
    for sub in ("tree", "machine", "work", "out"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    tree, results = out / "tree", out / "out"
    copy_tree(ROOT, tree)
    laid_out = [c for c in CARRY if not (tree / c).is_dir()]
    if laid_out:  # a fresh clone (CI): lay out what `prepare` would have, inside the copy only
        if ".gpu" in laid_out:
            copy_data(tree, mnist)
        if ".whl" in laid_out:
            download_wheels(tree)
    problems = check_wheels(tree / ".whl")
    python = machine_python(out / "machine")
    wrapper, network = _network_wrapper()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV", "PYTHON", "CONDA"))}
    env.update(PATH=f"{python.parent}:{env.get('PATH', '/usr/bin:/bin')}", PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1", http_proxy="http://127.0.0.1:9",
               https_proxy="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9",
               NO_PROXY="localhost,127.0.0.1", no_proxy="localhost,127.0.0.1", HOME=str(out / "work" / "home"),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", REHEARSAL="1", OUT=str(results), WORK=str(out / "work"))  # fmt: skip
    (out / "work" / "home").mkdir(parents=True)
    # the failure the issue names: a build-isolated editable install needs setuptools from an index there is none of
    naive = subprocess.run([*wrapper, "python3", "-m", "pip", "install", "--no-deps", "-e", "."], cwd=tree, env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    start, cpu_start, load_start = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN), os.getloadavg()[0]
    run = subprocess.run([*wrapper, "bash", "bench/gpu_run.sh"], cwd=tree, env=env, capture_output=True, text=True, timeout=900)
    seconds, cpu = time.monotonic() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = {
        "returncode": run.returncode,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu.ru_utime + cpu.ru_stime - cpu_start.ru_utime - cpu_start.ru_stime, 1),  # every process of it
        "load_average": [round(load_start, 1), round(os.getloadavg()[0], 1), os.cpu_count()],  # at its start and end, cores
        "network": network,
        "laid_out_here": laid_out,
        "wheel_problems": problems,
        "out_problems": check_out(results),
        "out_files": sorted(str(p.relative_to(results)) for p in results.rglob("*") if p.is_file()),
        "isolated_install_failed": naive.returncode != 0,
        "isolated_install_error": "\n".join(line.strip() for line in (naive.stdout + naive.stderr).splitlines() if "ERROR" in line),
        "python3": str(python),
        "log_tail": (run.stdout + run.stderr)[-4000:],
    }
    (out / "rehearsal.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("prepare", help="copy the MNIST test digits to .gpu/data/mnist and download .whl/ (needs PyPI)")
    a.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    sub.add_parser("check", help="check .whl/ against the GPU machine's packages")
    r = sub.add_parser("rehearse", help="run bench/gpu_run.sh on a CPU copy of the GPU machine")
    r.add_argument("--out", type=Path, required=True, help="scratch folder: tree/, machine/, work/, out/, rehearsal.json")
    r.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    args = p.parse_args(argv)
    if args.command == "prepare":
        done = prepare(ROOT, args.mnist)
        print(json.dumps(done, indent=2))
        print(f'then, with a GPU: run(command="OUT=$OUT bash bench/gpu_run.sh", carry={list(CARRY)}, timeout_s=540)')
        return 0
    if args.command == "check":
        problems = check_wheels(ROOT / ".whl")
        print("\n".join(problems) or f"ok: {', '.join(w.name for w in sorted((ROOT / '.whl').glob('*.whl')))}")
        return 1 if problems else 0
    summary = rehearse(args.out, args.mnist)
    print(json.dumps({k: v for k, v in summary.items() if k != "log_tail"}, indent=2))
    ok = summary["returncode"] == 0 and not summary["out_problems"] and not summary["wheel_problems"] and summary["isolated_install_failed"]
    if not ok:
        print(summary["log_tail"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
