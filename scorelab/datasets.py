"""Data: 2-D toys with exact scores, and images (procedural shapes, MNIST, Fashion-MNIST, CIFAR-10).

Every 2-D sampler has the signature `name(n, *, generator=None, dtype=None, **shape_args)`
and returns a `(n, 2)` tensor; `generator` is a `torch.Generator` or an int seed.
The mixtures are also available as `GaussianMixture` objects (`*_mixture`), so the
exact score of the data is at hand. Introduced in lesson 01.

Image datasets return `(pixels, labels)`: uint8 `(n, C, H, W)` in 0..255 and int64 `(n,)`;
`to_model_range` scales pixels to a model's range (with uniform dequantisation if asked), `to_pixels`
goes back. Introduced in lesson 09.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

from ._checks import (
    as_generator,
    check_bounds,
    check_choice,
    check_float_dtype,
    check_int,
    check_memory,
    check_nonnegative,
    check_positive,
    check_tensor,
)
from .distributions import GaussianMixture


def ring_mixture(n_modes: int = 8, radius: float = 4.0, std: float = 0.5, weights=None) -> GaussianMixture:
    """`n_modes` isotropic Gaussians evenly spaced on a circle (equal weights unless given)."""
    check_int("n_modes", n_modes, minimum=1)
    check_positive("radius", radius, allow_tensor=False)
    check_positive("std", std, allow_tensor=False)
    angles = 2 * math.pi * torch.arange(n_modes, dtype=torch.float64) / n_modes
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    if weights is None:
        weights = torch.full((n_modes,), 1.0 / n_modes, dtype=torch.float64)
    return GaussianMixture(weights, means, torch.full((n_modes,), std**2, dtype=torch.float64), dtype=torch.get_default_dtype())


def far_apart_mixture() -> GaussianMixture:
    """Song & Ermon 2019, Sec. 3.2: weights 1/5 and 4/5 at (-5, -5) and (5, 5), unit variance."""
    return GaussianMixture([0.2, 0.8], [[-5.0, -5.0], [5.0, 5.0]], [1.0, 1.0])


def _uniform(n, generator, dtype, *size):
    return torch.rand(n, *size, generator=generator, dtype=dtype)


def _normal(n, generator, dtype, *size):
    return torch.randn(n, *size, generator=generator, dtype=dtype)


def _check_noise(noise) -> float:
    return check_nonnegative("noise", noise, " (the jitter's standard deviation)")


def _prepare(n, generator, dtype):
    check_int("n", n, minimum=1)
    check_memory("n", n, 8 * 8)  # a few (n, 2) float64 intermediates
    check_float_dtype("dtype", dtype)
    return as_generator(generator), dtype or torch.get_default_dtype()


def ring(n: int, *, generator=None, dtype=None, n_modes: int = 8, radius: float = 4.0, std: float = 0.5) -> torch.Tensor:
    """Samples from `ring_mixture(n_modes, radius, std)`."""
    check_int("n", n, minimum=1)
    check_float_dtype("dtype", dtype)
    return ring_mixture(n_modes, radius, std).sample(n, generator=generator).to(dtype or torch.get_default_dtype())


def far_apart(n: int, *, generator=None, dtype=None) -> torch.Tensor:
    """Samples from `far_apart_mixture()`: the 1/5-4/5 pair Langevin gets wrong (lesson 03)."""
    check_int("n", n, minimum=1)
    check_float_dtype("dtype", dtype)
    return far_apart_mixture().sample(n, generator=generator).to(dtype or torch.get_default_dtype())


def two_moons(n: int, *, generator=None, dtype=None, noise: float = 0.1) -> torch.Tensor:
    """Two interleaved half circles (radius 1), with Gaussian jitter `noise`."""
    generator, dtype = _prepare(n, generator, dtype)
    _check_noise(noise)
    upper = _uniform(n, generator, dtype) < 0.5
    angle = math.pi * _uniform(n, generator, dtype)
    x = torch.stack([angle.cos(), angle.sin()], dim=1)
    x = torch.where(upper[:, None], x, torch.stack([1 - x[:, 0], 0.5 - x[:, 1]], dim=1))
    return x + noise * _normal(n, generator, dtype, 2)


def concentric_rings(n: int, *, generator=None, dtype=None, radii=(1.0, 2.5), noise: float = 0.08) -> torch.Tensor:
    """Points on concentric circles (each picked with probability proportional to its length)."""
    generator, dtype = _prepare(n, generator, dtype)
    _check_noise(noise)
    radii = torch.as_tensor(radii, dtype=dtype)
    if radii.ndim != 1 or len(radii) == 0 or not (torch.isfinite(radii).all() and (radii > 0).all()):
        raise ValueError(f"radii must be a non-empty sequence of positive numbers, got {radii.tolist()}")
    k = torch.multinomial(radii / radii.sum(), n, replacement=True, generator=generator)
    angle = 2 * math.pi * _uniform(n, generator, dtype)
    x = radii[k, None] * torch.stack([angle.cos(), angle.sin()], dim=1)
    return x + noise * _normal(n, generator, dtype, 2)


def swiss_roll(n: int, *, generator=None, dtype=None, noise: float = 0.1) -> torch.Tensor:
    """The 2-D swiss roll: radius growing with the angle, scaled to about [-3, 3]^2."""
    generator, dtype = _prepare(n, generator, dtype)
    _check_noise(noise)
    angle = 1.5 * math.pi * (1 + 2 * _uniform(n, generator, dtype))
    x = torch.stack([angle * angle.cos(), angle * angle.sin()], dim=1) / 5
    return x + noise * _normal(n, generator, dtype, 2)


def checkerboard(n: int, *, generator=None, dtype=None, n_squares: int = 4, size: float = 4.0) -> torch.Tensor:
    """Uniform on the dark squares of an `n_squares` x `n_squares` board of side `size` centred at 0."""
    generator, dtype = _prepare(n, generator, dtype)
    check_int("n_squares", n_squares, minimum=2)
    check_positive("size", size, allow_tensor=False)
    cell = size / n_squares
    # pick a dark square (i + j even), then a uniform point inside it
    dark = torch.tensor([(i, j) for i in range(n_squares) for j in range(n_squares) if (i + j) % 2 == 0], dtype=dtype)
    k = torch.randint(len(dark), (n,), generator=generator)
    return (dark[k] + _uniform(n, generator, dtype, 2)) * cell - size / 2


def curve(n: int, *, generator=None, dtype=None, amplitude: float = 1.0) -> torch.Tensor:
    """Points exactly on the 1-D curve x_2 = amplitude * sin(2 x_1), x_1 ~ U(-2, 2): no density in 2-D (lesson 03)."""
    generator, dtype = _prepare(n, generator, dtype)
    if isinstance(amplitude, bool) or not isinstance(amplitude, (int, float)) or not math.isfinite(amplitude):
        raise ValueError(f"amplitude must be a finite number, got {amplitude!r}")
    t = 4 * _uniform(n, generator, dtype) - 2
    return torch.stack([t, amplitude * torch.sin(2 * t)], dim=1)


#: every 2-D sampler by name, for widgets and parametrised tests
SAMPLERS = {
    "ring": ring,
    "far_apart": far_apart,
    "two_moons": two_moons,
    "concentric_rings": concentric_rings,
    "swiss_roll": swiss_roll,
    "checkerboard": checkerboard,
    "curve": curve,
}


# --- images: `(pixels, labels)` with pixels a uint8 tensor `(n, C, H, W)` and labels int64 `(n,)` ----------------

#: the procedural shapes of `shapes`, in label order
SHAPES = ("square", "circle", "triangle", "concentric_circles")


def _shape_distance(kind: str, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Signed distance in pixels (negative inside) to a shape of size r centred at 0; dy points down the image."""
    if kind == "square":
        return torch.maximum(dx.abs(), dy.abs()) - 0.8 * r
    if kind == "circle":
        return torch.hypot(dx, dy) - r
    if kind == "triangle":
        # equilateral, apex up, circumradius r: the largest of the three edges' outward distances minus the inradius
        edges = [dy, -0.5 * dy + 0.866 * dx, -0.5 * dy - 0.866 * dx]
        return torch.stack(edges).amax(0) - r / 2
    # concentric circles: two rings of width 1.5 px at radii r and r / 2
    rho = torch.hypot(dx, dy)
    return torch.minimum((rho - r).abs(), (rho - r / 2).abs()) - 0.75


def shapes(
    n: int, size: int = 16, *, classes=SHAPES, weights=None, radius=(0.22, 0.34), spread: float = 1.0, generator=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Procedural images of white shapes on black, with labels and a chosen class balance (lesson 09).

    Each image holds one shape of `classes` (names from `SHAPES`), drawn with probability `weights` (uniform
    unless given), anti-aliased over one pixel, of radius r uniform in `radius` (fractions of `size`) and centred
    uniformly within `spread` times the largest offset from the middle that keeps it inside the image (0: every
    shape centred; 1: anywhere it fits). The classes differ in how hard they are: squares and disks are blobs,
    triangles have corners, concentric circles are thin rings. Returns `(pixels, labels)`: uint8
    `(n, 1, size, size)` in 0..255, and int64 `(n,)` indices into `classes`. Scale with `to_model_range` for a model.
    The same `generator` gives the same labels, radii and positions (up to scale) whatever `radius` and `spread`.
    """
    check_int("n", n, minimum=1)
    check_int("size", size, minimum=8)
    classes = tuple(classes)
    if not classes or any(c not in SHAPES for c in classes) or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct names from {SHAPES}, got {classes!r}")
    if weights is None:
        weights = [1.0] * len(classes)
    weights = torch.as_tensor(weights, dtype=torch.float64)
    if weights.shape != (len(classes),) or not (torch.isfinite(weights).all() and (weights >= 0).all() and weights.sum() > 0):
        raise ValueError(f"weights must be {len(classes)} non-negative numbers, one per class, got {weights.tolist()}")
    r_min, r_max = check_bounds(radius, "radius")
    if r_min <= 0 or r_max > 0.5:
        raise ValueError(f"radius must be a range of fractions of the image within (0, 0.5], got {tuple(radius)}")
    spread = check_nonnegative("spread", spread, " (the fraction of the free offset a centre may use)")
    if spread > 1:
        raise ValueError(f"spread must lie in [0, 1], got {spread}")
    check_memory("n", n, 6 * 4 * size * size)  # float32 distances and intensities per image
    generator = as_generator(generator)
    labels = torch.multinomial(weights / weights.sum(), n, replacement=True, generator=generator)
    r = size * (r_min + (r_max - r_min) * torch.rand(n, generator=generator))
    free = (size / 2 - r[:, None] - 1.5).clamp_min(0)  # a ring reaches r + 1.25
    centre = size / 2 + spread * free * (2 * torch.rand(n, 2, generator=generator) - 1)
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    dx = (grid[None, None, :] - centre[:, 0, None, None]).expand(n, size, size)
    dy = (grid[None, :, None] - centre[:, 1, None, None]).expand(n, size, size)
    r = r[:, None, None]
    image = torch.zeros(n, size, size)
    for label, kind in enumerate(classes):
        chosen = labels == label
        if chosen.any():
            image[chosen] = (0.5 - _shape_distance(kind, dx[chosen], dy[chosen], r[chosen])).clamp(0, 1)
    return (image * 255).round().to(torch.uint8)[:, None], labels


def to_model_range(images: torch.Tensor, n_bins: int = 256, data_range=(-1.0, 1.0), *, dequantize: bool = False, generator=None):
    """Integer pixels k in {0, ..., n_bins - 1} as floats in `data_range`: lo + (hi - lo) k / (n_bins - 1).

    With `dequantize`, uniform noise u ~ U[0, 1) spreads each level over its bin instead: lo + (hi - lo) (k + u) / n_bins,
    a continuous density whose likelihood bounds the discrete one (`likelihood.bits_per_dim`). Returns float32
    (the default dtype) of the images' shape.
    """
    if not isinstance(images, torch.Tensor) or (images.is_floating_point() and not torch.equal(images, images.round())):
        raise TypeError("images must be a tensor of integer pixel values in [0, n_bins - 1] (uint8 as loaded)")
    check_int("n_bins", n_bins, minimum=2)
    if images.numel() == 0:
        raise ValueError(f"images is empty (shape {tuple(images.shape)})")
    if images.min() < 0 or images.max() > n_bins - 1:
        raise ValueError(f"images must hold values in [0, {n_bins - 1}], got {images.min().item()}..{images.max().item()}")
    lo, hi = check_bounds(data_range, "data_range")
    dtype = torch.get_default_dtype()
    k = images.to(dtype)
    if not dequantize:
        return lo + (hi - lo) * k / (n_bins - 1)
    u = torch.rand(images.shape, generator=as_generator(generator, images.device), dtype=dtype, device=images.device)
    return lo + (hi - lo) * (k + u) / n_bins


def to_pixels(x: torch.Tensor, n_bins: int = 256, data_range=(-1.0, 1.0)) -> torch.Tensor:
    """The inverse of `to_model_range`: round to the nearest level, clip to [0, n_bins - 1], uint8 (n_bins <= 256)."""
    check_tensor("x", x, min_dim=1)
    check_int("n_bins", n_bins, minimum=2)
    if n_bins > 256:
        raise ValueError(f"n_bins must be <= 256 for uint8 pixels, got {n_bins}")
    lo, hi = check_bounds(data_range, "data_range")
    return ((x - lo) / (hi - lo) * (n_bins - 1)).round().clamp(0, n_bins - 1).to(torch.uint8)


# --- standard image datasets from a local folder ------------------------------------------------------------

#: the IDX files of MNIST and Fashion-MNIST (each may also be gzipped, NAME.gz), by split
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: the python batches of CIFAR-10 (inside the folder `cifar-10-batches-py` or the folder given), by split
CIFAR10_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_SOURCES = {
    "mnist": "http://yann.lecun.com/exdb/mnist/ (or torchvision.datasets.MNIST)",
    "fashion_mnist": "https://github.com/zalandoresearch/fashion-mnist (or torchvision.datasets.FashionMNIST)",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar.html, 'CIFAR-10 python version' (or torchvision.datasets.CIFAR10)",
}


def read_idx(path) -> torch.Tensor:
    """One IDX file (LeCun et al.'s format: magic 0x0000 08 NDIM, big-endian sizes, unsigned bytes), gzipped or not."""
    path = Path(path)
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (magic {raw[:4].hex() if raw else 'empty'})")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = raw[4 + 4 * ndim :]
    if len(data) != math.prod(shape):
        raise ValueError(f"{path} is truncated: its header says {shape} ({math.prod(shape)} bytes), it holds {len(data)}")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(shape)


#: sub-folders where the files may also lie: torchvision's layouts
_FOLDERS = {"mnist": ("raw", "MNIST/raw"), "fashion_mnist": ("raw", "FashionMNIST/raw"), "cifar10": ("cifar-10-batches-py",)}


def _find(dataset: str, root: Path, name: str) -> Path | None:
    folders = [root] + [root / sub for sub in _FOLDERS[dataset]]
    return next((f / n for f in folders for n in (name, f"{name}.gz") if (f / n).is_file()), None)


def _locate(dataset: str, root, names, download: bool) -> list[Path]:
    """The paths of `names` under `root`; fetched by torchvision first when missing and `download` is set."""
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a folder path, got {type(root).__name__}")
    root = Path(root)
    if download and any(_find(dataset, root, n) is None for n in names):
        try:
            import torchvision.datasets as tv
        except ImportError:
            raise ImportError("download=True needs torchvision: pip install 'scorelab[images]'") from None
        cls = {"mnist": tv.MNIST, "fashion_mnist": tv.FashionMNIST, "cifar10": tv.CIFAR10}[dataset]
        for train in (True, False):
            cls(str(root), train=train, download=True)
    paths = [_find(dataset, root, n) for n in names]
    missing = [n for n, p in zip(names, paths) if p is None]
    if missing:
        where = ", ".join(str(root / sub) for sub in ("",) + _FOLDERS[dataset])
        raise FileNotFoundError(
            f"{dataset}: {', '.join(missing)} not found in {where}. Put the standard files there (from {_SOURCES[dataset]}), "
            "or pass download=True with torchvision installed (pip install 'scorelab[images]')"
        )
    return paths


def load_idx_images(dataset: str, root, split: str = "train", *, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST or Fashion-MNIST (`dataset` "mnist" or "fashion_mnist") from a folder of the standard IDX files.

    Looks in `root` and torchvision's sub-folders (`raw`, `MNIST/raw`, `FashionMNIST/raw`) for `IDX_FILES[split]`,
    gzipped or not. With `download`, missing files are fetched by torchvision first (only then: never at test time).
    Returns `(pixels, labels)`: uint8 `(n, 1, 28, 28)` and int64 `(n,)`. Introduced in lesson 09.
    """
    check_choice("dataset", dataset, ("mnist", "fashion_mnist"))
    check_choice("split", split, IDX_FILES)
    image_path, label_path = _locate(dataset, root, IDX_FILES[split], download)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{image_path} and {label_path} do not match: images {tuple(images.shape)}, labels {tuple(labels.shape)}")
    return images[:, None], labels.long()


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR-10 batches (dicts of numpy arrays, lists, bytes) and nothing else: no arbitrary code."""

    ALLOWED = {(module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("_reconstruct", "scalar")} | {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a CIFAR-10 batch holds only arrays; refusing {module}.{name}")


def load_cifar10(root, split: str = "train", *, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from a folder of the standard python batches (`CIFAR10_FILES[split]`, in `root` or
    `root/cifar-10-batches-py`), read with an unpickler that only accepts arrays. `download` as in `load_idx_images`.
    Returns `(pixels, labels)`: uint8 `(n, 3, 32, 32)` and int64 `(n,)`.
    """
    check_choice("split", split, CIFAR10_FILES)
    images, labels = [], []
    for path in _locate("cifar10", root, CIFAR10_FILES[split], download):
        with open(path, "rb") as f:
            try:
                batch = _ArrayUnpickler(f, encoding="bytes").load()
            except (pickle.UnpicklingError, EOFError, ValueError) as err:
                raise ValueError(f"{path} is not a CIFAR-10 python batch ({err})") from None
        if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
            raise ValueError(f"{path} is not a CIFAR-10 python batch (no b'data' and b'labels' entries)")
        data = torch.as_tensor(np.asarray(batch[b"data"], dtype=np.uint8))
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(batch[b"labels"]):
            raise ValueError(f"{path}: expected data (n, 3072) and n labels, got {tuple(data.shape)} and {len(batch[b'labels'])}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(torch.as_tensor(batch[b"labels"], dtype=torch.int64))
    return torch.cat(images), torch.cat(labels)


#: the image datasets by name: `name -> (root, split, download) -> (pixels, labels)` (shapes need no folder)
IMAGE_DATASETS = {
    "mnist": lambda root, split="train", download=False: load_idx_images("mnist", root, split, download=download),
    "fashion_mnist": lambda root, split="train", download=False: load_idx_images("fashion_mnist", root, split, download=download),
    "cifar10": load_cifar10,
}


# --- lesson 03: the curve with noise, as a sampler and as an exact law --------------------------------------------


def curve_with_noise(scale: float):
    """A sampler `(n, generator) -> (n, 2)` of curve(n) + scale * z, z ~ N(0, I) (lesson 03, section 4).

    `scale = 0` gives the points exactly on x_2 = sin 2 x_1 (`curve`); `scale > 0` gives them a density,
    p_scale = p_curve * N(0, scale^2 I) (Song & Ermon 2019, §3.1: noise fixes the manifold problem).
    Introduced in lesson 03.
    """
    scale = check_nonnegative("scale", scale)

    def sample(n: int, generator=None) -> torch.Tensor:
        generator = as_generator(generator)
        points = curve(n, generator=generator)
        return points + scale * torch.randn(points.shape, generator=generator, dtype=points.dtype)

    return sample


def noisy_curve(sigma: float, nodes_per_sigma: int = 4) -> GaussianMixture:
    """The law of curve + sigma z as a `GaussianMixture`: equal Gaussians N(m_j, sigma^2 I) at m_j = (u_j, sin 2 u_j).

    A quadrature of x_1 ~ U(-2, 2) with nodes u_j `sigma / nodes_per_sigma` apart
    (int(4 nodes_per_sigma / sigma) nodes): p_sigma(x) = E_u N(x; (u, sin 2u), sigma^2 I) ~ mean_j N(x; m_j, sigma^2 I).
    Lesson 03 checks that doubling `nodes_per_sigma` moves the score-matching floor by less than its
    Monte-Carlo error. Introduced in lesson 03.
    """
    check_positive("sigma", sigma, allow_tensor=False)
    check_int("nodes_per_sigma", nodes_per_sigma, minimum=1)
    u = torch.linspace(-2, 2, max(2, int(4 * nodes_per_sigma / sigma)), dtype=torch.get_default_dtype())
    means = torch.stack([u, torch.sin(2 * u)], 1)
    return GaussianMixture(torch.full((len(u),), 1 / len(u)), means, torch.full((len(u),), float(sigma) ** 2))
