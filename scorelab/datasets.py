"""2-D toy data: mixtures with exact scores, and samplers for shapes without one.

Every sampler has the signature `name(n, *, generator=None, dtype=None, **shape_args)`
and returns a `(n, 2)` tensor; `generator` is a `torch.Generator` or an int seed.
The mixtures are also available as `GaussianMixture` objects (`*_mixture`), so the
exact score of the data is at hand. Introduced in lesson 01.
"""

from __future__ import annotations

import math

import torch

from ._checks import as_generator, check_int, check_positive
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


def _prepare(n, generator, dtype):
    check_int("n", n, minimum=1)
    return as_generator(generator), dtype or torch.get_default_dtype()


def ring(n: int, *, generator=None, dtype=None, n_modes: int = 8, radius: float = 4.0, std: float = 0.5) -> torch.Tensor:
    """Samples from `ring_mixture(n_modes, radius, std)`."""
    check_int("n", n, minimum=1)
    return ring_mixture(n_modes, radius, std).sample(n, generator=generator).to(dtype or torch.get_default_dtype())


def far_apart(n: int, *, generator=None, dtype=None) -> torch.Tensor:
    """Samples from `far_apart_mixture()`: the 1/5-4/5 pair Langevin gets wrong (lesson 03)."""
    check_int("n", n, minimum=1)
    return far_apart_mixture().sample(n, generator=generator).to(dtype or torch.get_default_dtype())


def two_moons(n: int, *, generator=None, dtype=None, noise: float = 0.1) -> torch.Tensor:
    """Two interleaved half circles (radius 1), with Gaussian jitter `noise`."""
    generator, dtype = _prepare(n, generator, dtype)
    upper = _uniform(n, generator, dtype) < 0.5
    angle = math.pi * _uniform(n, generator, dtype)
    x = torch.stack([angle.cos(), angle.sin()], dim=1)
    x = torch.where(upper[:, None], x, torch.stack([1 - x[:, 0], 0.5 - x[:, 1]], dim=1))
    return x + noise * _normal(n, generator, dtype, 2)


def concentric_rings(n: int, *, generator=None, dtype=None, radii=(1.0, 2.5), noise: float = 0.08) -> torch.Tensor:
    """Points on concentric circles (each picked with probability proportional to its length)."""
    generator, dtype = _prepare(n, generator, dtype)
    radii = torch.as_tensor(radii, dtype=dtype)
    k = torch.multinomial(radii / radii.sum(), n, replacement=True, generator=generator)
    angle = 2 * math.pi * _uniform(n, generator, dtype)
    x = radii[k, None] * torch.stack([angle.cos(), angle.sin()], dim=1)
    return x + noise * _normal(n, generator, dtype, 2)


def swiss_roll(n: int, *, generator=None, dtype=None, noise: float = 0.1) -> torch.Tensor:
    """The 2-D swiss roll: radius growing with the angle, scaled to about [-3, 3]^2."""
    generator, dtype = _prepare(n, generator, dtype)
    angle = 1.5 * math.pi * (1 + 2 * _uniform(n, generator, dtype))
    x = torch.stack([angle * angle.cos(), angle * angle.sin()], dim=1) / 5
    return x + noise * _normal(n, generator, dtype, 2)


def checkerboard(n: int, *, generator=None, dtype=None, n_squares: int = 4, size: float = 4.0) -> torch.Tensor:
    """Uniform on the dark squares of an `n_squares` x `n_squares` board of side `size` centred at 0."""
    generator, dtype = _prepare(n, generator, dtype)
    check_int("n_squares", n_squares, minimum=2)
    cell = size / n_squares
    # pick a dark square (i + j even), then a uniform point inside it
    dark = torch.tensor([(i, j) for i in range(n_squares) for j in range(n_squares) if (i + j) % 2 == 0], dtype=dtype)
    k = torch.randint(len(dark), (n,), generator=generator)
    return (dark[k] + _uniform(n, generator, dtype, 2)) * cell - size / 2


def curve(n: int, *, generator=None, dtype=None, amplitude: float = 1.0) -> torch.Tensor:
    """Points exactly on the 1-D curve x_2 = amplitude * sin(2 x_1), x_1 ~ U(-2, 2): no density in 2-D (lesson 03)."""
    generator, dtype = _prepare(n, generator, dtype)
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
