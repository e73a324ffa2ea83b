"""Distances between a sampler or a score model and the truth.

Each Monte-Carlo estimate comes with what it needs to be asserted honestly: a standard
error (Fisher divergence) or the noise floor of the estimator (TV on a grid).
Introduced in lessons 01-02.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from ._checks import check_bounds, check_callable, check_int, check_tensor
from .distributions import GaussianMixture


class Estimate(NamedTuple):
    """A Monte-Carlo estimate and its standard error."""

    value: float
    se: float


class TVEstimate(NamedTuple):
    """Total variation on a grid; its noise floor (the expected TV of an exact sampler of the same size); and the
    standard deviation of that TV around the floor, so `tv < floor + 4 * spread` is a 4-SD test of exactness."""

    tv: float
    floor: float
    spread: float


def fisher_divergence(score, dist: GaussianMixture, n: int = 10_000, generator=None) -> Estimate:
    r"""E_{x~p} ||s(x) - \nabla log p(x)||^2 for p = `dist`, with its standard error (lesson 01).

    `score` may be another distribution's exact score (Fisher divergence between two
    mixtures) or a model. Note `esm` is half of this.
    """
    check_callable("score", score)
    if not isinstance(dist, GaussianMixture):
        raise TypeError(f"dist must be a GaussianMixture, got {type(dist).__name__}")
    check_int("n", n, minimum=2)
    x = dist.sample(n, generator=generator)
    with torch.no_grad():
        sq = ((score(x) - dist.score(x)) ** 2).reshape(n, -1).sum(1).double()
    return Estimate(sq.mean().item(), (sq.std() / math.sqrt(n)).item())


def gradient_variance(model: torch.nn.Module, loss, *inputs: torch.Tensor) -> float:
    r"""Total variance of the per-sample gradient, E_i ||g_i - mean_j g_j||^2 with g_i = grad_theta loss(sample i) (lesson 02).

    This is the noise SGD feels (what a loss's own variance is not: a term without theta adds variance
    to the loss and none to its gradient). `loss(f, *batches)` gets the model as a function `f` of its
    input and batches of one sample (rows of `inputs`, all of length n) and returns a scalar, e.g.
    `lambda f, x, z: losses.dsm(f, x, sigma, noise=z)`. Per-sample gradients by `torch.func.vmap(grad)`,
    not n backward passes.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_callable("loss", loss)
    for i, v in enumerate(inputs):  # checked here: inside the transform the loss cannot look at values
        check_tensor(f"inputs[{i}]", v)
    n = len(inputs[0]) if inputs else 0
    if n < 2 or any(len(v) != n for v in inputs):
        raise ValueError(f"inputs must be tensors with the same number (>= 2) of rows, got {[tuple(v.shape) for v in inputs]}")
    params = {name: p.detach() for name, p in model.named_parameters()}

    def one(p, *rows):
        return loss(lambda v: torch.func.functional_call(model, p, (v,)), *(r[None] for r in rows))

    grads = torch.func.vmap(torch.func.grad(one), in_dims=(None, *[0] * len(inputs)))(params, *inputs)
    flat = torch.cat([g.reshape(n, -1) for g in grads.values()], 1)
    return ((flat - flat.mean(0)) ** 2).sum(1).mean().item()


def _histogram_masses(samples: torch.Tensor, lo: float, hi: float, bins: int) -> np.ndarray:
    """Fractions of samples in each of bins x bins square cells over [lo, hi]^2, plus one 'outside' cell."""
    x = samples.detach().double().cpu()
    idx = ((x - lo) / (hi - lo) * bins).floor().long()
    inside = ((idx >= 0) & (idx < bins)).all(1)
    counts = torch.bincount(idx[inside, 0] * bins + idx[inside, 1], minlength=bins * bins).double()
    counts = torch.cat([counts, (~inside).sum().double()[None]])
    return (counts / len(x)).numpy()


def _mixture_masses(dist: GaussianMixture, lo: float, hi: float, bins: int, nodes: int = 8) -> np.ndarray:
    """Probability of each cell under the mixture by tensor-product Gauss-Legendre quadrature
    (`nodes`^2 points per cell; error < 1e-9 for cells up to a few standard deviations wide), plus 'outside'."""
    u, w = np.polynomial.legendre.leggauss(nodes)
    width = (hi - lo) / bins
    centres = lo + width * (np.arange(bins) + 0.5)
    pts_1d = (centres[:, None] + 0.5 * width * u).ravel()  # (bins * nodes,)
    w_1d = np.tile(0.5 * width * w, bins)
    gx, gy = np.meshgrid(pts_1d, pts_1d, indexing="ij")
    pts = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], 1))
    dens = dist.to(dtype=torch.float64).log_prob(pts).exp().numpy().reshape(len(pts_1d), len(pts_1d))
    cell = (dens * w_1d[:, None] * w_1d[None, :]).reshape(bins, nodes, bins, nodes).sum((1, 3)).ravel()
    return np.append(cell, max(0.0, 1.0 - cell.sum()))


def tv_grid(samples: torch.Tensor, target, bounds=(-8.0, 8.0), bins: int = 40) -> TVEstimate:
    r"""Total variation between `samples` and `target` on a bins x bins grid over bounds^2.

    TV = 1/2 \sum_cells |\hat p_c - p_c|, with one extra cell for everything outside the
    square. If `target` is a 2-D `GaussianMixture`, p_c are its exact cell masses (by
    quadrature); if it is a tensor of samples, both sides are histograms.

    The floor is the expected TV of the estimator when the samples *are* drawn from the
    target: with counts ~ Binomial(n, p_c), E|\hat p_c - p_c| ~ sqrt(2 p_c (1 - p_c) / (pi n)),
    so floor = 1/2 \sum_c sqrt(2 v_c / pi) with v_c the variance of the difference in cell c, and
    spread = 1/2 sqrt(\sum_c v_c (1 - 2/pi)) (cells treated as independent; checked against simulation
    in the tests). A sampler is indistinguishable from the target at this resolution when
    tv < floor + 4 * spread.
    """
    check_tensor("samples", samples, min_dim=2)
    if samples.shape[1:] != (2,):
        raise ValueError(f"samples must have shape (n, 2), got {tuple(samples.shape)}")
    lo, hi = check_bounds(bounds)
    check_int("bins", bins, minimum=1)
    n = len(samples)
    p_hat = _histogram_masses(samples, lo, hi, bins)
    if isinstance(target, GaussianMixture):
        if target.dim != 2:
            raise ValueError(f"target must be a 2-D mixture, got D={target.dim}")
        p = _mixture_masses(target, lo, hi, bins)
        var = p * (1 - p) / n
    elif isinstance(target, torch.Tensor):
        check_tensor("target", target, min_dim=2)
        p = _histogram_masses(target, lo, hi, bins)
        var = p * (1 - p) / n + p * (1 - p) / len(target)
    else:
        raise TypeError(f"target must be a GaussianMixture or a tensor of samples, got {type(target).__name__}")
    tv = 0.5 * np.abs(p_hat - p).sum()
    floor = 0.5 * np.sqrt(2 * var / math.pi).sum()
    spread = 0.5 * math.sqrt(var.sum() * (1 - 2 / math.pi))
    return TVEstimate(float(tv), float(floor), spread)


def _pairwise_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double())


def _check_pair(x, y):
    check_tensor("x", x, min_dim=2)
    check_tensor("y", y, min_dim=2)
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(f"x and y must have the same sample shape, got {tuple(x.shape[1:])} and {tuple(y.shape[1:])}")
    if len(x) < 2 or len(y) < 2:
        raise ValueError("x and y need at least 2 samples each")


def _offdiag_mean(k: torch.Tensor) -> torch.Tensor:
    n = len(k)
    return (k.sum() - k.diagonal().sum()) / (n * (n - 1))


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None) -> float:
    """Unbiased MMD^2 with a Gaussian kernel exp(-||a - b||^2 / (2 h^2)) (Gretton et al. 2012).

    `bandwidth` h defaults to the median pairwise distance of the pooled samples. Near 0
    (it can be slightly negative) when x and y come from the same law.
    """
    _check_pair(x, y)
    d_xx, d_yy, d_xy = _pairwise_distances(x, x), _pairwise_distances(y, y), _pairwise_distances(x, y)
    if bandwidth is None:
        bandwidth = torch.cat([d_xx.ravel(), d_yy.ravel(), d_xy.ravel()]).median().item()
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth}")

    def kernel(d):
        return torch.exp(-(d**2) / (2 * bandwidth**2))

    return (_offdiag_mean(kernel(d_xx)) + _offdiag_mean(kernel(d_yy)) - 2 * kernel(d_xy).mean()).item()


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Energy distance 2 E||X - Y|| - E||X - X'|| - E||Y - Y'|| (Szekely & Rizzo), U-statistics."""
    _check_pair(x, y)
    return (
        2 * _pairwise_distances(x, y).mean() - _offdiag_mean(_pairwise_distances(x, x)) - _offdiag_mean(_pairwise_distances(y, y))
    ).item()


def class_frequencies(labels: torch.Tensor, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The fraction of each class 0..n_classes-1 among integer `labels`, and its binomial standard error
    sqrt(f (1 - f) / n): `(frequencies, standard_errors)`, each `(n_classes,)`. Lesson 09 compares the classes a
    model generates with the classes it was trained on."""
    check_int("n_classes", n_classes, minimum=1)
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.ndim != 1 or len(labels) == 0:
        raise TypeError(f"labels must be a non-empty 1-D integer tensor, got {getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must lie in 0..{n_classes - 1}, got {labels.min().item()}..{labels.max().item()}")
    freq = torch.bincount(labels.cpu(), minlength=n_classes).double().numpy() / len(labels)
    return freq, np.sqrt(freq * (1 - freq) / len(labels))
