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

from ._checks import check_bounds, check_callable, check_choice, check_int, check_output, check_positive, check_tensor
from .distributions import GaussianMixture, _quadrature_nodes


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


def _mixture_grid(dist, bounds, cells: int, what: str):
    """A 1- or 2-D `GaussianMixture` in float64 on the CPU and the quadrature nodes and weights over `bounds`
    (`cells` per axis), after checking the arguments; `what` names the integral in the dimension error."""
    if not isinstance(dist, GaussianMixture):
        raise TypeError(f"dist must be a GaussianMixture, got {type(dist).__name__}")
    lo, hi = check_bounds(bounds)
    check_int("cells", cells, minimum=1)
    if dist.dim not in (1, 2):
        raise ValueError(f"dist must be 1- or 2-dimensional ({what} is a grid), got dim {dist.dim}")
    d = dist.to(dtype=torch.float64, device="cpu")
    return (d, *_quadrature_nodes(lo, hi, cells, d.dim))


def fisher_quadrature(score, dist: GaussianMixture, bounds=(-12.0, 12.0), cells: int = 60) -> float:
    r"""F(p || q) = \int p(x) ||s(x) - \nabla log p(x)||^2 dx for p = `dist` (1-D or 2-D), by quadrature.

    The noise-free counterpart of `fisher_divergence` (Coeurdoux Sec. 3 writes F without the 1/2): tensor-product
    Gauss-Legendre quadrature on `cells`^D cells of `bounds`^D, 8 nodes per cell and axis, in float64. Use it where
    the integrand lives where samples of p never land (e.g. near the saddle between far-apart modes, lesson 01), so
    a Monte-Carlo estimate returns ~0 with a meaningless standard error. `score` maps `(n, D)` to `(n, D)`; mass
    outside the box is ignored, and a feature narrower than a cell needs more cells. Returns a float.
    Introduced in lesson 01.
    """
    check_callable("score", score)
    d, points, weights = _mixture_grid(dist, bounds, cells, "the integral")
    total = 0.0
    with torch.no_grad():
        for x, w in zip(points.split(65_536), weights.split(65_536)):
            s = check_output("score", score(x), x.shape).double()
            total += (w * d.log_prob(x).exp() * ((s - d.score(x)) ** 2).sum(1)).sum().item()
    return total


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
    """Fractions of samples in each of the bins^D cells of [lo, hi]^D (D = 1 or 2), plus one 'outside' cell."""
    x = samples.detach().double().cpu()
    idx = ((x - lo) / (hi - lo) * bins).floor().long()
    inside = ((idx >= 0) & (idx < bins)).all(1)
    cell = sum(idx[inside, j] * bins ** (x.shape[1] - 1 - j) for j in range(x.shape[1]))
    counts = torch.bincount(cell, minlength=bins ** x.shape[1]).double()
    counts = torch.cat([counts, (~inside).sum().double()[None]])
    return (counts / len(x)).numpy()


def _cell_masses(log_prob, dim: int, lo: float, hi: float, bins: int, nodes: int = 8) -> np.ndarray:
    """Probability of each of the bins^D cells (D = 1 or 2) under a normalised density, by tensor-product Gauss-Legendre
    quadrature (`nodes`^D points per cell; error < 1e-9 for cells up to a few standard deviations wide), plus 'outside'."""
    points, weights = _quadrature_nodes(lo, hi, bins, dim, nodes)
    with torch.no_grad():
        log_p = check_output("target", log_prob(points), points.shape[:1]).double()
    mass = (log_p.exp() * weights).numpy()
    cell = mass.reshape((bins, nodes) * dim).sum(tuple(range(1, 2 * dim, 2))).ravel()
    if cell.sum() > 1 + 1e-6 or not np.isfinite(cell).all():
        raise ValueError(f"target puts mass {cell.sum():.6g} on the grid: it must be a normalised log-density")
    return np.append(cell, max(0.0, 1.0 - cell.sum()))


def tv_grid(samples: torch.Tensor, target, bounds=(-8.0, 8.0), bins: int = 40) -> TVEstimate:
    r"""Total variation between 1-D or 2-D `samples` `(n, D)` and `target` on a grid of bins^D cells over bounds^D.

    TV = 1/2 \sum_cells |\hat p_c - p_c|, with one extra cell for everything outside the
    interval or square. If `target` is a `GaussianMixture` of the same D, p_c are its exact cell masses (by
    quadrature), and likewise for a callable normalised log-density `(m, D) -> (m,)` (e.g.
    `GaussianMixture.tilted_log_prob`, lesson 07); if it is a tensor of samples, both sides are histograms.

    The floor is the expected TV of the estimator when the samples *are* drawn from the
    target: with counts ~ Binomial(n, p_c), E|\hat p_c - p_c| ~ sqrt(2 p_c (1 - p_c) / (pi n)),
    so floor = 1/2 \sum_c sqrt(2 v_c / pi) with v_c the variance of the difference in cell c, and
    spread = 1/2 sqrt(\sum_c v_c (1 - 2/pi)) (cells treated as independent; checked against simulation
    in the tests). A sampler is indistinguishable from the target at this resolution when
    tv < floor + 4 * spread.
    """
    check_tensor("samples", samples, min_dim=2)
    if samples.ndim != 2 or samples.shape[1] not in (1, 2):
        raise ValueError(f"samples must have shape (n, 1) or (n, 2), got {tuple(samples.shape)}")
    lo, hi = check_bounds(bounds)
    check_int("bins", bins, minimum=1)
    n = len(samples)
    p_hat = _histogram_masses(samples, lo, hi, bins)
    if isinstance(target, GaussianMixture):
        if target.dim != samples.shape[1]:
            raise ValueError(f"target must be a mixture in D={samples.shape[1]} like the samples, got D={target.dim}")
        target = target.to(dtype=torch.float64).log_prob
    if isinstance(target, torch.Tensor):
        check_tensor("target", target, min_dim=2)
        if target.shape[1:] != samples.shape[1:]:
            raise ValueError(f"target samples must have the shape (m, {samples.shape[1]}) of samples, got {tuple(target.shape)}")
        p = _histogram_masses(target, lo, hi, bins)
        var = p * (1 - p) / n + p * (1 - p) / len(target)
    elif callable(target):
        p = _cell_masses(target, samples.shape[1], lo, hi, bins)
        var = p * (1 - p) / n
    else:
        raise TypeError(f"target must be a GaussianMixture, a log-density or a tensor of samples, got {type(target).__name__}")
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
            raise ValueError("bandwidth: the median pairwise distance is 0 (repeated points): pass a positive bandwidth")
    else:
        bandwidth = check_positive("bandwidth", bandwidth, allow_tensor=False)

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
    labels = _check_labels("labels", labels, n_classes)
    freq = torch.bincount(labels, minlength=n_classes).double().numpy() / len(labels)
    return freq, np.sqrt(freq * (1 - freq) / len(labels))


def _check_labels(name: str, labels, n_classes: int) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.ndim != 1 or len(labels) == 0:
        raise TypeError(f"{name} must be a non-empty 1-D integer tensor, got {getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"{name} must lie in 0..{n_classes - 1}, got {labels.min().item()}..{labels.max().item()}")
    return labels.cpu()


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, n_classes: int) -> np.ndarray:
    """Counts `(n_classes, n_classes)`: entry [i, j] is the number of items of true class i labelled j (lesson 09).

    Row i divided by its sum is the classifier's P(label j | class i); the diagonal's share of the total is its
    accuracy. `labels` and `predicted` are 1-D integer tensors of one length, values in 0..n_classes-1.
    """
    check_int("n_classes", n_classes, minimum=1)
    labels, predicted = _check_labels("labels", labels, n_classes), _check_labels("predicted", predicted, n_classes)
    if labels.shape != predicted.shape:
        raise ValueError(f"labels and predicted must have one entry per item, got {tuple(labels.shape)} and {tuple(predicted.shape)}")
    return torch.bincount(labels * n_classes + predicted, minlength=n_classes**2).reshape(n_classes, n_classes).numpy()


def nearest_neighbours(x: torch.Tensor, reference: torch.Tensor, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of `x` `(n, *dims)`, the Euclidean distance to its nearest row of `reference` `(m, *dims)`
    (flattened) and that row's index: `(distances (n,), indices (n,))` (lesson 09 labels a generated image by the
    real image nearest to it, a second counter beside the classifier). Computed `batch_size` rows of `x` at a time.
    """
    check_tensor("x", x, min_dim=2)
    check_tensor("reference", reference, min_dim=2)
    check_int("batch_size", batch_size, minimum=1)
    if x.shape[1:] != reference.shape[1:] or len(x) == 0 or len(reference) == 0:
        raise ValueError(f"x and reference must be non-empty with one item shape, got {tuple(x.shape)} and {tuple(reference.shape)}")
    flat, ref = x.reshape(len(x), -1), reference.reshape(len(reference), -1).to(x.dtype)
    # the search through matrix products (fast, loses digits on tiny distances), the distance then exactly
    index = torch.cat([torch.cdist(chunk, ref).argmin(1) for chunk in flat.split(batch_size)])
    return (flat - ref[index]).norm(dim=1), index


class ModeSummary(NamedTuple):
    """Per mode of a reference mixture: the mass in its region, and the mean and variance (averaged over the axes)
    of the law restricted to that region. Arrays `(K,)`, `(K, D)`, `(K,)`."""

    mass: np.ndarray
    mean: np.ndarray
    variance: np.ndarray


def mode_summary(target, mixture: GaussianMixture, bounds=(-8.0, 8.0), cells: int = 20) -> ModeSummary:
    r"""How a law splits over the modes of `mixture`: mass, mean and variance in each mode's region (lesson 08).

    Region k holds the points whose most responsible component of `mixture` is k (argmax_k of w_k N(x; m_k, C_k)),
    so the regions tile the plane and, for separated modes, the masses are the mixing weights a law gives the
    modes. `target` is a tensor of samples `(n, D)` (fractions, sample moments) or a normalised log-density
    `(m, D) -> (m,)` (masses and moments by Gauss-Legendre quadrature on `cells`^D cells of bounds^D, 8^D nodes
    each; mass outside the box is ignored: choose bounds that hold it; a density computed in float32 may put up to
    1 + 1e4 eps = 1.0012 on the box, its rounding when -E - log Z is formed from terms up to 1e4 in size, a float64
    one up to 1 + 1e-6; a region boundary that cuts a cell is placed
    node by node, which misplaces at most the density on the boundary times 0.18 cell widths: nothing between
    separated modes). D = 1 or 2. The variance is
    \frac{1}{D} \mathrm{tr} \mathrm{Cov}(x \mid x \in \text{region } k); a region with no mass gets NaN moments.
    """
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
    if mixture.dim not in (1, 2):
        raise ValueError(f"mixture must be 1-D or 2-D, got D={mixture.dim}")
    reference = mixture.to(dtype=torch.float64)
    if isinstance(target, torch.Tensor):
        check_tensor("target", target, min_dim=2)
        if target.ndim != 2 or target.shape[1] != mixture.dim or len(target) == 0:
            raise ValueError(f"target samples must have shape (n, {mixture.dim}) with n > 0, got {tuple(target.shape)}")
        points = target.detach().double().cpu()
        weights = torch.full((len(points),), 1.0 / len(points), dtype=torch.float64)
    else:
        check_callable("target", target)
        lo, hi = check_bounds(bounds)
        check_int("cells", cells, minimum=1)
        points, quad = _quadrature_nodes(lo, hi, cells, mixture.dim)
        with torch.no_grad():
            log_p = check_output("target", target(points.to(mixture.dtype)), points.shape[:1])
        # rounding: a log-density -E - log Z computed in float32 from terms up to 1e4 in size (a runaway energy)
        # is off by up to 1e4 eps, and its mass by that factor; a float64 one is held to 1e-6
        tolerance = max(1e-6, 1e4 * torch.finfo(log_p.dtype).eps) if log_p.is_floating_point() else 1e-6
        log_p = log_p.double().cpu()
        weights = log_p.exp() * quad
        if not bool(torch.isfinite(weights).all()) or weights.sum() > 1 + tolerance:
            raise ValueError(f"target puts mass {weights.sum().item():.6g} on the grid: it must be a normalised log-density")
    region = reference.responsibilities(points).argmax(1)
    K = mixture.n_components
    mass = torch.zeros(K, dtype=torch.float64).index_add_(0, region, weights)
    first = torch.zeros(K, mixture.dim, dtype=torch.float64).index_add_(0, region, weights[:, None] * points)
    second = torch.zeros(K, mixture.dim, dtype=torch.float64).index_add_(0, region, weights[:, None] * points**2)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (first / mass[:, None]).numpy()
        variance = (second / mass[:, None]).numpy() - mean**2
    return ModeSummary(mass.numpy(), mean, variance.mean(1))


# --- distances between two known densities (lesson 06) ------------------------------------------------------


def _two_log_probs(p_log_prob, q_log_prob, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p and log q at `points`, in float64, each callable checked and its output checked to be `(n,)`."""
    check_callable("p_log_prob", p_log_prob)
    check_callable("q_log_prob", q_log_prob)
    with torch.no_grad():
        log_p = check_output("p_log_prob", p_log_prob(points), points.shape[:1]).double()
        log_q = check_output("q_log_prob", q_log_prob(points), points.shape[:1]).double()
    return log_p, log_q


def _log_ratio(p_log_prob, q_log_prob, samples_from_p: torch.Tensor) -> torch.Tensor:
    """log q(x) - log p(x) at the samples of p."""
    check_tensor("samples_from_p", samples_from_p, min_dim=2)
    if len(samples_from_p) < 2:
        raise ValueError(f"samples_from_p needs at least 2 samples, got {len(samples_from_p)}")
    log_p, log_q = _two_log_probs(p_log_prob, q_log_prob, samples_from_p)
    if not torch.isfinite(log_p).all():
        raise ValueError("p_log_prob is not finite at some samples_from_p: are they samples of p?")
    return log_q - log_p


def _mean_and_se(values: torch.Tensor) -> Estimate:
    return Estimate(values.mean().item(), (values.std() / math.sqrt(len(values))).item())


def tv_monte_carlo(p_log_prob, q_log_prob, samples_from_p: torch.Tensor) -> Estimate:
    r"""TV(p, q) = E_p[(1 - q(x)/p(x))_+] from samples of p, when both log-densities are known (normalised).

    Unbiased in any dimension, with its standard error; each term lies in [0, 1], so the error is at most
    1/(2 sqrt(n)) and is small where p and q are close. Both callables map `(n, *dims)` to `(n,)` (e.g.
    `GaussianMixture.log_prob`). Introduced in lesson 06.
    """
    log_ratio = _log_ratio(p_log_prob, q_log_prob, samples_from_p)
    return _mean_and_se((-torch.expm1(log_ratio)).clamp_min(0))


def kl_monte_carlo(p_log_prob, q_log_prob, samples_from_p: torch.Tensor) -> Estimate:
    r"""KL(p || q) = E_p[log p(x) - log q(x)] from samples of p, with its standard error (lesson 06)."""
    return _mean_and_se(-_log_ratio(p_log_prob, q_log_prob, samples_from_p))


def _gaussian_pair(mean_p, var_p, mean_q, var_q):
    """The four parameters as float64 arrays of one shape `(d,)` (scalars broadcast), checked."""
    arrays = [np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (mean_p, var_p, mean_q, var_q)]
    if any(a.ndim != 1 for a in arrays):
        raise ValueError(f"means and variances must be scalars or (d,) arrays, got shapes {[a.shape for a in arrays]}")
    try:
        a, u, b, v = np.broadcast_arrays(*arrays)
    except ValueError:
        raise ValueError(f"p and q must have the same dimension, got shapes {[a.shape for a in arrays]}") from None
    if not all(np.isfinite(x).all() for x in (a, u, b, v)) or not ((u > 0).all() and (v > 0).all()):
        raise ValueError("means must be finite and var positive and finite")
    return a, u, b, v


def gaussian_kl(mean_p, var_p, mean_q, var_q) -> float:
    r"""KL(N(mean_p, diag var_p) || N(mean_q, diag var_q)) in closed form:
    1/2 \sum_i [u_i / v_i + (a_i - b_i)^2 / v_i - 1 + log(v_i / u_i)]. Scalars broadcast (lesson 06)."""
    a, u, b, v = _gaussian_pair(mean_p, var_p, mean_q, var_q)
    return float(0.5 * np.sum(u / v + (a - b) ** 2 / v - 1 + np.log(v / u)))


def _prob_log_ratio_positive(a, u, b, v, m, w) -> float:
    """P(log p(X) - log q(X) > 0) for X ~ N(m, diag w), p = N(a, diag u), q = N(b, diag v).

    With X_i = m_i + sqrt(w_i) z_i the log-ratio is Q = sum_i (c_i z_i^2 + d_i z_i) + e. When all c_i are 0
    (equal variances) Q is normal; when all c_i equal c != 0 (isotropic variances, any means), completing the
    squares makes Q = c X + e' with X noncentral chi-square with d degrees of freedom: both exact. Otherwise
    Gil-Pelaez inversion of the characteristic function
    phi(s) = exp(i s e) prod_i (1 - 2 i s c_i)^{-1/2} exp(-s^2 d_i^2 / (2 (1 - 2 i s c_i))):
    P(Q > 0) = 1/2 + (1/pi) int_0^inf Im phi(s) / s ds (Gil-Pelaez 1951; Imhof 1961 for quadratic forms).
    """
    from scipy import integrate, stats

    alpha, beta, r = m - a, m - b, np.sqrt(w)
    c = w * (1 / (2 * v) - 1 / (2 * u))
    d = r * (beta / v - alpha / u)
    e = float(np.sum(-(alpha**2) / (2 * u) + beta**2 / (2 * v) + 0.5 * np.log(v / u)))
    if np.abs(c).max() <= 1e-10:  # linear: Q ~ N(e, |d|^2), to an error O(max |c|)
        spread = float(np.sqrt(np.sum(d**2)))
        return float(e > 0) if spread == 0 else float(stats.norm.cdf(e / spread))
    if np.allclose(c, c[0], rtol=1e-10, atol=0):  # Q = c sum_i (z_i + delta_i)^2 + e'
        c0 = float(c.mean())
        delta = d / (2 * c0)
        threshold = -(e - c0 * float(np.sum(delta**2))) / c0  # Q > 0 <=> X > threshold (c0 > 0) or X < threshold
        law = stats.ncx2(len(c), float(np.sum(delta**2)))
        return float(law.sf(threshold) if c0 > 0 else law.cdf(threshold))

    def integrand(s: float) -> float:
        denominator = 1 - 2j * s * c
        log_phi = 1j * s * e + np.sum(-0.5 * np.log(denominator) - s**2 * d**2 / (2 * denominator))
        return np.exp(log_phi).imag / s

    value, _ = integrate.quad(integrand, 0, np.inf, limit=2000, epsabs=1e-11, epsrel=1e-9)
    return 0.5 + value / math.pi


def gaussian_tv(mean_p, var_p, mean_q, var_q) -> float:
    r"""TV(N(mean_p, diag var_p), N(mean_q, diag var_q)) exactly, in any dimension d.

    TV = P_p(A) - P_q(A) with A = {log p > log q}; under either law the log-ratio is a sum of independent
    quadratics in Gaussians. Variances in the same ratio var_p / var_q in every coordinate (any means) give a normal or a
    noncentral chi-square law: closed form. Other diagonal pairs use Gil-Pelaez inversion of its characteristic
    function (one 1-D integral; accurate to ~1e-8, slow when few coordinates differ in variance). Scalars broadcast.
    Laws with a shared eigenbasis (e.g. the exponential integrator's output on a Gaussian target) reduce to this
    by rotating both. Lesson 06 uses it for the dimension study, where sampling noise would hide a sqrt(d).
    """
    a, u, b, v = _gaussian_pair(mean_p, var_p, mean_q, var_q)
    if np.array_equal(a, b) and np.array_equal(u, v):
        return 0.0
    tv = _prob_log_ratio_positive(a, u, b, v, a, u) - _prob_log_ratio_positive(a, u, b, v, b, v)
    return float(min(max(tv, 0.0), 1.0))


def _quadrature(p_log_prob, q_log_prob, dim: int, bounds, cells: int):
    """log p and log q at the Gauss-Legendre nodes of `distributions._quadrature_nodes` over bounds^dim, and the weights."""
    check_choice("dim", dim, (1, 2))
    lo, hi = check_bounds(bounds)
    check_int("cells", cells, minimum=1)
    points, weights = _quadrature_nodes(lo, hi, cells, dim)
    return (*_two_log_probs(p_log_prob, q_log_prob, points), weights)


def tv_quadrature(p_log_prob, q_log_prob, dim: int, bounds, cells: int = 2000) -> float:
    r"""TV(p, q) = 1/2 \int |p - q| over bounds^dim for two known 1-D or 2-D densities, by Gauss-Legendre quadrature.

    `cells`^dim cells with 8^dim nodes each; mass outside the box is ignored (choose bounds that hold both laws). The
    kinks of |p - q| where the densities cross limit the accuracy to about (cell width)^2 times the density there:
    ~1e-6 with the default in 1-D on laws of unit scale. Noise-free where `tv_grid` has a floor (lesson 06).
    """
    log_p, log_q, weights = _quadrature(p_log_prob, q_log_prob, dim, bounds, cells)
    return float(0.5 * (weights * (log_p.exp() - log_q.exp()).abs()).sum())


def kl_quadrature(p_log_prob, q_log_prob, dim: int, bounds, cells: int = 200) -> float:
    r"""KL(p || q) = \int p log(p / q) over bounds^dim for two known 1-D or 2-D densities, by Gauss-Legendre quadrature
    (`cells`^dim cells, 8^dim nodes each; smooth integrand, so far more accurate than `tv_quadrature`). Lesson 06."""
    log_p, log_q, weights = _quadrature(p_log_prob, q_log_prob, dim, bounds, cells)
    return float((weights * log_p.exp() * (log_p - log_q)).sum())


# --- image quality: Frechet distance in a small classifier's features (issue: images on a GPU) -------------------


class ClassifierFID(NamedTuple):
    """`classifier_fid`'s answer: the Frechet distance, the class histogram of the fake images with its binomial
    standard errors (mode coverage), that of the real images, the classifier's mean top-class probability on the
    fakes (its confidence that they are anything at all), and the share of fakes it labels with probability >= 0.9
    ("recognisable")."""

    fid: float
    class_histogram: np.ndarray
    class_histogram_se: np.ndarray
    real_class_histogram: np.ndarray
    mean_confidence: float
    confident_fraction: float


def _symmetric_sqrt(m: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(0.5 * (m + m.T))
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def gaussian_frechet(mean_a, cov_a, mean_b, cov_b) -> float:
    r"""The Frechet (2-Wasserstein squared) distance of N(m_a, S_a) and N(m_b, S_b), exactly:
    ||m_a - m_b||^2 + tr(S_a + S_b - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2}) (Dowson & Landau 1982), in float64 with
    symmetric eigendecompositions, so it is >= 0 and exact for commuting covariances."""
    mean_a, mean_b = (torch.as_tensor(np.asarray(m), dtype=torch.float64).reshape(-1) for m in (mean_a, mean_b))
    cov_a, cov_b = (torch.as_tensor(np.asarray(c), dtype=torch.float64) for c in (cov_a, cov_b))
    d = len(mean_a)
    for name, c in (("cov_a", cov_a), ("cov_b", cov_b)):
        if c.shape != (d, d) or not torch.isfinite(c).all():
            raise ValueError(f"{name} must be a finite ({d}, {d}) covariance for means of length {d}, got shape {tuple(c.shape)}")
    if mean_b.shape != (d,):
        raise ValueError(f"mean_b must have the length {d} of mean_a, got {tuple(mean_b.shape)}")
    root_a = _symmetric_sqrt(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    value = (mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return max(0.0, value.item())


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """The Frechet distance of Gaussians fitted to two feature samples `(n, d)` and `(m, d)` (what FID computes).

    The plug-in estimate is biased upwards by about (tr S_a)/n + (tr S_b)/m plus cross terms: two samples of one law
    give a small positive number, not 0. Compare runs at equal sample sizes."""
    stats = []
    for name, f in (("features_a", features_a), ("features_b", features_b)):
        check_tensor(name, f, min_dim=2)
        if f.ndim != 2 or len(f) < 2:
            raise ValueError(f"{name} must be (n, d) features with n >= 2, got shape {tuple(f.shape)}")
        f = f.detach().double().cpu()
        stats += [f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])]
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"features_b must have the {features_a.shape[1]} features of features_a, got {features_b.shape[1]}")
    return gaussian_frechet(*stats)


def classifier_fid(real: torch.Tensor, fake: torch.Tensor, classifier, batch_size: int = 500) -> ClassifierFID:
    """Frechet distance between `real` and `fake` images in the penultimate features of a small classifier that scorelab
    trains on the same dataset (`nets.ImageClassifier`, `scorelab classifier`), plus the classes it gives the fakes.

    A cheap, offline stand-in for FID: it needs no download, and it measures what a classifier of *this* dataset
    notices. It is not comparable to Inception FID (other features, other dimension, other dataset) and should be
    quoted with the classifier's test accuracy. Images in the model range [-1, 1], `(n, C, H, W)`.
    """
    if not (callable(getattr(classifier, "features", None)) and callable(getattr(classifier, "head", None))):
        raise TypeError(
            f"classifier must be a network with features(x) and head(features) (nets.ImageClassifier), got {type(classifier).__name__}"
        )
    check_int("batch_size", batch_size, minimum=1)
    parameter = next(classifier.parameters())

    def run(images: torch.Tensor, name: str):
        check_tensor(name, images, min_dim=4)
        features, probs = [], []
        with torch.no_grad():
            for chunk in images.split(batch_size):
                h = classifier.features(chunk.to(parameter.device))
                features.append(h.double().cpu())
                probs.append(torch.softmax(classifier.head(h), 1).double().cpu())
        return torch.cat(features), torch.cat(probs)

    real_features, real_probs = run(real, "real")
    fake_features, fake_probs = run(fake, "fake")
    n_classes = fake_probs.shape[1]
    histogram, se = class_frequencies(fake_probs.argmax(1), n_classes)
    real_histogram, _ = class_frequencies(real_probs.argmax(1), n_classes)
    fid = frechet_distance(real_features, fake_features)
    confidence = fake_probs.max(1).values
    return ClassifierFID(fid, histogram, se, real_histogram, confidence.mean().item(), (confidence >= 0.9).double().mean().item())


# --- lesson 03: the score-matching floor of a noisy curve, and which basin Langevin particles sit in -------------


def ssm_floor(dist: GaussianMixture, n: int = 40_000, generator=0) -> Estimate:
    """The lowest value of the (sliced/implicit) score-matching objective on data from `dist`, with its SE.

    J(s) = E_p[tr grad s + 1/2 |s|^2] = 1/2 E_p|s - grad log p|^2 - 1/2 E_p|grad log p|^2 (Hyvärinen 2005, Thm 1),
    so J_min = -1/2 E_p|grad log p|^2, estimated by Monte Carlo on `n` samples of `dist`. For a curve with
    noise sigma (`datasets.noisy_curve`) it is close to -1/(2 sigma^2). Returns `Estimate(value, se)`.
    Introduced in lesson 03.
    """
    if not isinstance(dist, GaussianMixture):
        raise TypeError(f"dist must be a GaussianMixture, got {type(dist).__name__}")
    check_int("n", n, minimum=2)
    half_squared = 0.5 * (dist.score(dist.sample(n, generator=generator)) ** 2).sum(1)
    return Estimate(-half_squared.mean().item(), half_squared.std().item() / math.sqrt(n))


def sides_over_time(score, start: torch.Tensor, step_size: float, checkpoints, side, generator=1):
    """ULA from `start` (n, d) with `step_size`, recording `side(x)` (n,) after each step listed in `checkpoints`.

    Runs `sampling.langevin` (x <- x + eps s(x) + sqrt(2 eps) z) for max(checkpoints) steps with the given
    `generator`, so two calls with the same generator share their noise (a paired ablation). `side` maps
    the particles to a 0/1 label (lesson 03: which side of x_1 + x_2 = 0, i.e. which mode's basin).
    Returns `(x, sides)`: the final particles (n, d) and the labels (len(checkpoints), n), 0 meaning after 0 steps.
    Introduced in lesson 03.
    """
    from .sampling import langevin  # here: sampling is a heavier module

    check_callable("score", score)
    check_callable("side", side)
    start = check_tensor("start", start, min_dim=2)
    checkpoints = [int(c) for c in checkpoints]
    if not checkpoints or any(c < 0 for c in checkpoints) or checkpoints != sorted(checkpoints):
        raise ValueError(f"checkpoints must be a non-empty increasing list of step counts >= 0, got {checkpoints}")
    recorded = {}
    if 0 in checkpoints:
        recorded[0] = side(start)

    def record(state):
        if state["i"] + 1 in checkpoints:
            recorded[state["i"] + 1] = side(state["x"])

    x = start
    if checkpoints[-1] > 0:
        x = langevin(score, start, step_size, checkpoints[-1], generator=generator, callback=record)
    return x, torch.stack([recorded[c] for c in checkpoints])


# --- lessons 01 and 03: the Bayes (minimum) denoising error of a mixture, and Eyring-Kramers rates --------------


def denoising_mmse(dist: GaussianMixture, sigma: float, bounds=(-12.0, 12.0), cells: int = 60) -> float:
    r"""The Bayes (minimum mean-squared) error of denoising y = x + sigma z, x ~ `dist`, z ~ N(0, I):

        MMSE = E_y tr Var(x | y) = \int p_sigma(y) [ \sum_k r_k(y) (tr C_k + |m_k(y)|^2) - |m(y)|^2 ] dy,

    with, per component, C_k = Sigma_k - Sigma_k (Sigma_k + sigma^2 I)^{-1} Sigma_k and
    m_k(y) = mu_k + Sigma_k (Sigma_k + sigma^2 I)^{-1} (y - mu_k), r_k(y) the noisy mixture's responsibilities
    and m(y) = \sum_k r_k m_k = E[x | y] (Tweedie's formula gives the same mean; Efron 2011, eq. 2.8). The posterior
    is a mixture again, so only the outer integral over y is not closed-form: it is done by tensor-product
    Gauss-Legendre quadrature on `cells`^D cells of `bounds`^D (8 nodes per cell and axis; D = 1 or 2), so choose
    bounds that hold p_sigma. The MSE of any denoiser (e.g. the Monte-Carlo error of Tweedie's estimate) is at
    least this, and Tweedie's estimate attains it. For one Gaussian it is tr(sigma^2 Sigma (Sigma + sigma^2 I)^{-1}).
    Returns a float (squared distance, summed over the D coordinates). Introduced in lesson 01.
    """
    sigma = check_positive("sigma", sigma, allow_tensor=False)
    d, points, weights = _mixture_grid(dist, bounds, cells, "the y-integral")
    eye = torch.eye(d.dim, dtype=torch.float64)
    gain = torch.linalg.solve(d.covs + sigma**2 * eye, d.covs).transpose(1, 2)  # Sigma (Sigma + s^2 I)^-1, (K, D, D)
    post_trace = torch.diagonal(d.covs - gain @ d.covs, dim1=1, dim2=2).sum(1)  # tr C_k, (K,)
    noisy = d.convolve(sigma)
    total = 0.0
    for y, w in zip(points.split(65_536), weights.split(65_536)):
        resp = noisy.responsibilities(y)  # (n, K)
        comp_means = d.means + torch.einsum("kde,nke->nkd", gain, y[:, None, :] - d.means)  # (n, K, D)
        mean = (resp[..., None] * comp_means).sum(1)
        second = (resp * (post_trace + (comp_means**2).sum(2))).sum(1)
        total += (w * noisy.log_prob(y).exp() * (second - (mean**2).sum(1))).sum().item()
    return total


class KramersRate(NamedTuple):
    """What `eyring_kramers_rate` computed: the rate, the barrier U(saddle) - U(minimum), the refined minimum and
    saddle, the saddle's negative Hessian eigenvalue, and the prefactor (the rate times e^{barrier})."""

    rate: float
    barrier: float
    minimum: torch.Tensor
    saddle: torch.Tensor
    unstable_eigenvalue: float
    prefactor: float


def _refine_critical_point(energy, x0: torch.Tensor, n_iter: int, name: str) -> torch.Tensor:
    """Newton's method on grad U = 0 from `x0` (converges to the nearby minimum or saddle alike)."""
    x = x0.detach().to(torch.float64).clone()
    grad = lambda v: torch.autograd.functional.jacobian(lambda u: energy(u[None]).sum(), v)
    for _ in range(n_iter):
        g = grad(x)
        h = torch.autograd.functional.hessian(lambda u: energy(u[None]).sum(), x)
        step = torch.linalg.solve(h, g)
        x = x - step
        if step.abs().max() < 1e-13 * (1 + x.abs().max()):
            break
    residual = grad(x).abs().max().item()
    if not math.isfinite(residual) or residual > 1e-8:
        raise ValueError(
            f"{name}: Newton's method found no critical point of the energy near {x0.tolist()} "
            f"(|grad U| = {residual:.2e}); start closer to it"
        )
    return x


def eyring_kramers_rate(energy, minimum, saddle, n_iter: int = 50) -> KramersRate:
    r"""The Eyring-Kramers rate of leaving the basin of `minimum` over `saddle`, for dX = -grad U(X) dt + sqrt(2) dW:

        k = |lambda_-(s)| / (2 pi) * sqrt( det Hess U(m) / |det Hess U(s)| ) * exp( -(U(s) - U(m)) ),

    (Eyring 1935, Kramers 1940; in this multidimensional form e.g. Berglund 2013, *Kramers' law: validity,
    derivations and generalisations*, §1), lambda_- the one negative eigenvalue of Hess U at the saddle.
    The law is asymptotic in a large barrier (relative corrections of order 1/barrier). The points are refined by
    Newton's method on grad U = 0, so approximate ones suffice (e.g. a mixture's component mean; the lowest point
    of log p on the segment between two modes); the Hessian at `minimum` must be positive definite and the one at
    `saddle` must have exactly one negative eigenvalue. The Langevin step x + eps grad log p + sqrt(2 eps) z
    (`sampling.langevin`) with U = -log p runs this SDE with time eps per step, so k * eps is the rate per step,
    up to the step's own bias. `energy` maps `(n, D)` to `(n,)` (for a mixture: `lambda x: -dist.log_prob(x)`);
    `minimum`, `saddle`: points `(D,)`. Returns a `KramersRate`. Introduced in lesson 03.
    """
    check_callable("energy", energy)
    check_int("n_iter", n_iter, minimum=1)
    m0 = check_tensor("minimum", torch.as_tensor(minimum, dtype=torch.float64))
    s0 = check_tensor("saddle", torch.as_tensor(saddle, dtype=torch.float64))
    if m0.ndim != 1 or s0.shape != m0.shape:
        raise ValueError(f"minimum and saddle must be points of the same shape (D,), got {tuple(m0.shape)} and {tuple(s0.shape)}")
    m = _refine_critical_point(energy, m0, n_iter, "minimum")
    s = _refine_critical_point(energy, s0, n_iter, "saddle")
    hess = lambda v: torch.autograd.functional.hessian(lambda u: energy(u[None]).sum(), v)
    eig_m, eig_s = torch.linalg.eigvalsh(hess(m)), torch.linalg.eigvalsh(hess(s))
    if eig_m.min() <= 0:
        raise ValueError(f"minimum: the Hessian there is not positive definite (eigenvalues {eig_m.tolist()})")
    if not (eig_s[0] < 0 < eig_s[1:].min() if len(eig_s) > 1 else eig_s[0] < 0):
        raise ValueError(f"saddle: the Hessian there must have exactly one negative eigenvalue, got {eig_s.tolist()}")
    with torch.no_grad():
        barrier = (energy(s[None]) - energy(m[None])).item()
    prefactor = (-eig_s[0].item() / (2 * math.pi)) * math.sqrt(eig_m.prod().item() / abs(eig_s.prod().item()))
    return KramersRate(prefactor * math.exp(-barrier), barrier, m, s, eig_s[0].item(), prefactor)


def kramers_rate_1d(energy, minimum: float, saddle: float, far: float, beyond: float, n: int = 20_001) -> float:
    r"""The rate of leaving a well of a 1-D potential, by Kramers' integrals, without the harmonic approximations:

        k = 1 / ( \int_{far}^{saddle} e^{-U(z)} dz  *  \int_{minimum}^{beyond} e^{U(y)} dy ),

    for dX = -U'(X) dt + sqrt(2) dW (Kramers 1940; the mean first-passage time of a 1-D diffusion, e.g. Gardiner,
    *Handbook of Stochastic Methods*, on escape over a potential barrier): the inverse mean time to go from the well's
    bottom `minimum` to `beyond` (the bottom of the next well), the exact double integral with its inner integral
    taken up to the saddle (an error that shrinks like e^{-barrier}). `far` is a point on the other side of the well where e^{-U} is
    negligible (a reflecting wall there changes nothing measurable). Replacing U by its quadratic at the minimum in
    the first integral and at the saddle in the second gives `eyring_kramers_rate`'s 1-D formula
    sqrt(U''(m) |U''(s)|) / (2 pi) e^{-(U(s) - U(m))}; where U is not quadratic over the saddle's thermal width
    1/sqrt|U''(s)| (a mixture's log-sum-exp saddle is nearly a cusp) the two differ by a factor of order one.
    Both integrals by the trapezoid rule on `n` points each, in log space (no overflow for barriers of hundreds of
    nats). `energy` maps `(m, 1)` to `(m,)`; the points are floats with `minimum` and `beyond` on opposite sides of
    `saddle`, and `far` on the side of `minimum`. Returns the rate (per unit time) as a float. Introduced in lesson 03.
    """
    check_callable("energy", energy)
    check_int("n", n, minimum=3)
    points = {}
    for name, v in (("minimum", minimum), ("saddle", saddle), ("far", far), ("beyond", beyond)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
        points[name] = float(v)
    side = 1.0 if points["minimum"] < points["saddle"] else -1.0
    if not (side * points["far"] < side * points["minimum"] < side * points["saddle"] < side * points["beyond"]):
        raise ValueError(f"the points must lie in the order far, minimum, saddle, beyond along the line, got {points}")

    def log_integral(a: float, b: float, sign: float) -> float:
        t = torch.linspace(min(a, b), max(a, b), n, dtype=torch.float64)
        with torch.no_grad():
            u = check_output("energy", energy(t[:, None]), (n,)).double()
        w = torch.full((n,), (t[1] - t[0]).item(), dtype=torch.float64)
        w[0] = w[-1] = w[0] / 2
        return torch.logsumexp(w.log() + sign * (-u), 0).item() if sign > 0 else torch.logsumexp(w.log() + u, 0).item()

    log_well = log_integral(points["far"], points["saddle"], 1.0)  # \int e^{-U}
    log_barrier = log_integral(points["minimum"], points["beyond"], -1.0)  # \int e^{U}
    rate = math.exp(-(log_well + log_barrier))
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"the rate is not a positive finite number ({rate}): is the energy finite on the interval?")
    return rate
