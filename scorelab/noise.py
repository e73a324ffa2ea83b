r"""Noise schedules for annealed Langevin dynamics, and the "improved techniques".

Song & Ermon (2020), *Improved techniques for training score-based generative models*:

    Technique 1  sigma_max = the largest pairwise distance in the data          `sigma_max_from_data`
    Technique 2  a geometric ratio gamma that keeps successive levels overlapping `ratio_for_dimension`
    Technique 4  the Langevin step size epsilon from the s_T^2 / sigma_i^2 rule    `langevin_step_size`
    Technique 5  an exponential moving average of the weights                   `scorelab.nets.EMA`

Introduced in lesson 04.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ._checks import check_int, check_positive, check_tensor


def geometric_sigmas(sigma_max: float, sigma_min: float, n: int) -> torch.Tensor:
    """`n` noise levels from `sigma_max` down to `sigma_min` with a constant ratio (Song & Ermon 2019, Sec. 4.2)."""
    sigma_max = check_positive("sigma_max", sigma_max, allow_tensor=False)
    sigma_min = check_positive("sigma_min", sigma_min, allow_tensor=False)
    check_int("n", n, minimum=2)
    if sigma_min >= sigma_max:
        raise ValueError(f"sigma_max must exceed sigma_min, got sigma_max={sigma_max}, sigma_min={sigma_min}")
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), n, dtype=torch.float64).to(torch.get_default_dtype())


def check_sigmas(sigmas) -> torch.Tensor:
    """`sigmas` as a 1-D float64 tensor, non-empty, positive, finite and strictly decreasing."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    if sigmas.ndim != 1 or sigmas.numel() == 0:
        raise ValueError(f"sigmas must be a non-empty 1-D sequence, got shape {tuple(sigmas.shape)}")
    if not (torch.isfinite(sigmas).all() and (sigmas > 0).all()):
        raise ValueError(f"sigmas must be positive and finite, got {sigmas.tolist()}")
    if (sigmas[1:] >= sigmas[:-1]).any():
        raise ValueError(f"sigmas must be strictly decreasing (largest first), got {sigmas.tolist()}")
    return sigmas


def sigma_max_from_data(x: torch.Tensor, block: int = 2048) -> float:
    """Technique 1: the largest Euclidean distance between two data points.

    Computed exactly in row blocks, so memory stays O(n * block), never an n x n matrix.
    """
    check_tensor("x", x, min_dim=2)
    check_int("block", block, minimum=1)
    flat = x.reshape(len(x), -1).double()
    best = 0.0
    for start in range(0, len(flat), block):
        best = max(best, torch.cdist(flat[start : start + block], flat).max().item())
    return best


def _overlap(gamma: float, dim: int) -> float:
    """Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma) (Song & Ermon 2020, Technique 2)."""
    centre = math.sqrt(2 * dim) * (gamma - 1)
    return 0.5 * (math.erf((centre + 3 * gamma) / math.sqrt(2)) - math.erf((centre - 3 * gamma) / math.sqrt(2)))


def ratio_for_dimension(dim: int, target: float = 0.5) -> float:
    r"""Technique 2: the smallest ratio gamma = sigma_{i-1} / sigma_i > 1 at which the overlap criterion equals `target`.

    Solves Phi(\sqrt{2D}(\gamma-1) + 3\gamma) - Phi(\sqrt{2D}(\gamma-1) - 3\gamma) = target (0.997 at gamma = 1).
    For large gamma the left side tends to 0 only when sqrt(2D) > 3; for D <= 4 it tends to 1
    and the criterion has no solution (any ratio keeps neighbouring levels overlapping), which
    raises `ValueError`. Larger D needs gamma closer to 1 (D = 784: about 1.08).
    """
    check_int("dim", dim, minimum=1)
    if not 0 < target < _overlap(1.0, dim):
        raise ValueError(f"target must be in (0, {_overlap(1.0, dim):.4f}), got {target}")
    # bracket the first crossing by doubling gamma - 1, then bisect
    lo, step = 1.0, 1e-4
    while _overlap(1.0 + step, dim) > target:
        lo, step = 1.0 + step, 2 * step
        if step > 1e6:
            raise ValueError(f"the overlap criterion never falls to target={target} for dim={dim} (needs sqrt(2 dim) > 3, dim >= 5)")
    hi = 1.0 + step
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _overlap(mid, dim) > target else (lo, mid)
    return 0.5 * (lo + hi)


class StepSize(NamedTuple):
    """Technique 4's step size epsilon, and the s_T^2 / sigma_i^2 it gives (worst level)."""

    step_size: float
    ratio: float


def variance_ratio(step_size: float, sigmas, n_steps_each: int) -> torch.Tensor:
    r"""s_T^2 / sigma_i^2 per level i >= 1 for the update x <- x + a_i s + sqrt(2 a_i) z, a_i = eps sigma_i^2 / sigma_L^2.

    Closed form for data that is a single point, started at the previous level's variance
    (Song & Ermon 2020, Prop. 1, rewritten for this update): with a = eps / sigma_L^2 and
    gamma_i = sigma_{i-1} / sigma_i,
        s_T^2 / sigma_i^2 = (1 - a)^{2T} (gamma_i^2 - 2 / (2 - a)) + 2 / (2 - a).
    """
    sigmas = check_sigmas(sigmas)
    if len(sigmas) < 2:
        raise ValueError("sigmas needs at least two levels")
    check_int("n_steps_each", n_steps_each, minimum=1)
    a = check_positive("step_size", step_size, allow_tensor=False) / sigmas[-1].item() ** 2
    gamma = sigmas[:-1] / sigmas[1:]
    stationary = 2 / (2 - a)
    return (1 - a) ** (2 * n_steps_each) * (gamma**2 - stationary) + stationary


def langevin_step_size(sigmas, n_steps_each: int) -> StepSize:
    r"""Technique 4: the eps that brings s_T^2 / sigma_i^2 closest to 1 (worst level) for `annealed_langevin`.

    The discretised chain's stationary variance is 2 / (2 - a) > 1 times sigma_i^2, so the
    ratio exceeds 1 for every eps > 0: exactly 1 is not attainable. Small eps leaves the
    chain near the previous level (ratio ~ gamma^2), large eps inflates the stationary
    variance; the minimiser over a = eps / sigma_L^2 in (0, 1) balances both. Returns the
    step size and the worst ratio reached (lesson 04 checks it by simulation).
    """
    sigmas = check_sigmas(sigmas)
    check_int("n_steps_each", n_steps_each, minimum=1)
    sigma_l2 = sigmas[-1].item() ** 2

    def worst(a: float) -> float:
        return (variance_ratio(a * sigma_l2, sigmas, n_steps_each) - 1).abs().max().item()

    # golden-section search on log a in (1e-8, 1): the objective is unimodal in a
    lo, hi = math.log(1e-8), math.log(1.0 - 1e-9)
    phi = (math.sqrt(5) - 1) / 2
    for _ in range(200):
        m1, m2 = hi - phi * (hi - lo), lo + phi * (hi - lo)
        if worst(math.exp(m1)) < worst(math.exp(m2)):
            hi = m2
        else:
            lo = m1
    step_size = math.exp(0.5 * (lo + hi)) * sigma_l2
    ratios = variance_ratio(step_size, sigmas, n_steps_each)
    return StepSize(step_size, ratios[(ratios - 1).abs().argmax()].item())
