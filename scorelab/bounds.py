r"""The TV bound of Chen et al. 2023 made measurable: its constants, a score with a chosen error, exact output laws.

For the OU forward process dX = -X dt + sqrt(2) dB (`sde.OUSDE`) started at data q, the exponential integrator
(`sampling.exponential_integrator`) with step h and horizon T = N h, started from N(0, I_d), satisfies

    TV(p_T, q) <~ sqrt(KL(q || N(0, I))) e^{-T} + (L sqrt(d h) + L m_2 h) sqrt(T) + eps sqrt(T)

when h <~ 1/L with L >= 1, under (A1) grad log q_t is L-Lipschitz for every t, (A2) E_q ||X||^{2+eta} < inf for some
eta > 0, with m_2^2 = E_q ||X||^2, (A3) E_{q_{kh}} ||s_{kh} - grad log q_{kh}||^2 <= eps^2 for every k (Chen et al.
2023, their DDPM theorem, as Zhang's lecture 19 states it). The proof's Girsanov step sums the errors over the steps,
so only their mean over k enters: `score_error` measures that root mean square. This module computes L, m_2^2 and
the KL for Gaussian mixtures, builds scores whose error is exactly eps, and gives output laws without sampling
noise: in closed form when q is Gaussian (the scheme is then linear), on a grid in 1-D for any score, and for the
exact reverse process started at N(0, I) (the start's share alone). Introduced in lesson 06.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ._checks import (
    append_dims,
    as_generator,
    check_bounds,
    check_callable,
    check_choice,
    check_int,
    check_nonnegative,
    check_positive,
)
from .distributions import GaussianMixture
from .metrics import Estimate, kl_quadrature, tv_quadrature
from .sampling import _steps_of, exponential_integrator
from .sde import OUSDE


def _check_mixture(dist) -> GaussianMixture:
    if not isinstance(dist, GaussianMixture):
        raise TypeError(f"dist must be a GaussianMixture, got {type(dist).__name__}")
    return dist.to(dtype=torch.float64)


def loglog_slope(x, y) -> float:
    r"""The exponent a of y ~ C x^a: the least-squares slope of log y against log x (all x, y > 0). Introduced in lesson 06.

    `x` and `y` are 1-d sequences of one length >= 2. Lesson 06 fits the bound's exponents this way, each on a stated
    window, and compares them with their analytic values.
    """
    x, y = _fit_arrays("x", x, y, log_x=True)
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def decay_rate(t, y) -> float:
    r"""The rate k of y ~ C e^{-k t}: minus the least-squares slope of log y against t (all y > 0). Introduced in lesson 06.

    `t` and `y` are 1-d sequences of one length >= 2 (`t` need not be positive). Lesson 06 fits how fast the start and
    an old score error are forgotten this way, on stated windows of t.
    """
    t, y = _fit_arrays("t", t, y, log_x=False)
    return float(-np.polyfit(t, np.log(y), 1)[0])


def _fit_arrays(name: str, x, y, log_x: bool) -> tuple[np.ndarray, np.ndarray]:
    x, y = (np.asarray(v, dtype=np.float64) for v in (x, y))
    if x.ndim != 1 or x.shape != y.shape or len(x) < 2:
        raise ValueError(f"{name} and y must be 1-d of one length >= 2, got shapes {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and (not log_x or (x > 0).all()) and np.ptp(x) > 0):
        raise ValueError(f"{name} must be finite{', positive' if log_x else ''} and not all equal, got {x}")
    if not (np.isfinite(y).all() and (y > 0).all()):
        raise ValueError(f"y must be finite and positive to take its logarithm, got {y}")
    return x, y


def second_moment(dist: GaussianMixture) -> float:
    r"""m_2^2 = E_q ||X||^2 = \sum_k w_k (||\mu_k||^2 + tr \Sigma_k), exactly (assumption A2)."""
    dist = _check_mixture(dist)
    traces = dist.covs.diagonal(dim1=-2, dim2=-1).sum(-1)
    return float((dist.weights * ((dist.means**2).sum(-1) + traces)).sum())


def _mass_bounds(dist: GaussianMixture, n_std: float) -> tuple[float, float]:
    """An interval holding every component's mass to `n_std` standard deviations in every coordinate."""
    std = dist.covs.diagonal(dim1=-2, dim2=-1).sqrt()
    return float((dist.means - n_std * std).min()), float((dist.means + n_std * std).max())


def kl_to_standard_normal(dist: GaussianMixture, bounds=None, cells: int = 200) -> float:
    r"""KL(q || N(0, I)) = \int q log(q / \gamma) for a 1-D or 2-D mixture q, by Gauss-Legendre quadrature.

    `cells`^D cells over bounds^D (default: every component's mean +- 12 standard deviations), 8^D nodes each:
    the integrand is smooth and negligible outside, so the error is far below 1e-8 for the mixtures of lesson 06
    (the tests compare with `metrics.kl_monte_carlo`). The e^{-T} term of the bound is sqrt(KL) e^{-T}.
    """
    dist = _check_mixture(dist)
    if dist.dim not in (1, 2):
        raise ValueError(f"kl_to_standard_normal integrates in 1-D or 2-D, got a mixture in D={dist.dim}: use metrics.kl_monte_carlo")
    lo, hi = check_bounds(bounds) if bounds is not None else _mass_bounds(dist, 12.0)
    check_int("cells", cells, minimum=1)
    return kl_quadrature(dist.log_prob, OUSDE().prior_log_prob, dist.dim, (lo, hi), cells)  # log N(x; 0, I)


def _mixture_hessian(dist: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    r"""\nabla^2 log q(x), `(n, D, D)`: -\sum_k r_k P_k + \sum_k r_k (s_k - s)(s_k - s)^T, with P_k the precisions,
    r_k = p(k | x), s_k = -P_k (x - \mu_k) the component scores and s = \sum_k r_k s_k the score."""
    log_comp, prec_diff = dist._component_terms(x)
    resp = torch.softmax(log_comp, dim=1)  # (n, K)
    centred = -prec_diff + torch.einsum("nk,nkd->nd", resp, prec_diff)[:, None, :]  # s_k - s
    return -torch.einsum("nk,kde->nde", resp, dist._precisions) + torch.einsum("nk,nkd,nke->nde", resp, centred, centred)


def score_curvature_range(dist: GaussianMixture, sde, bounds=None, n_grid: int = 201, n_times: int = 60) -> tuple[float, float]:
    r"""(lowest, highest) eigenvalue of \nabla^2 log q_t(x) over x and t, for the marginals q_t of the linear `sde` at `dist`.

    The Hessian is -\sum_k r_k P_k + \sum_k r_k (s_k - s)(s_k - s)^T (`_mixture_hessian`): the first term is at
    least -max_k lambda_max(P_k), so `lowest` >= -(largest precision); positive curvature (log q_t convex) comes
    only from the second, which is non-zero only where several components have weight r_k, between the modes.
    Method: the closed-form Hessian's eigenvalues on a grid of `n_grid`^D points in bounds^D (default: every
    component's mean +- 6 standard deviations) at t = 0 and `n_times` geometrically spaced times in [1e-3, T]
    (D <= 2). Exact for one Gaussian; for a mixture a grid extremum, converging as the grid is refined.
    Returns two floats. Introduced in lesson 06.
    """
    dist = _check_mixture(dist)
    if dist.dim not in (1, 2):
        raise ValueError(f"score_curvature_range searches a grid in 1-D or 2-D, got a mixture in D={dist.dim}")
    lo, hi = check_bounds(bounds) if bounds is not None else _mass_bounds(dist, 6.0)
    check_int("n_grid", n_grid, minimum=2)
    check_int("n_times", n_times, minimum=1)
    axis = torch.linspace(lo, hi, n_grid, dtype=torch.float64)
    x = torch.cartesian_prod(*[axis] * dist.dim).reshape(-1, dist.dim)
    times = [0.0, *np.geomspace(1e-3, sde.T, n_times).tolist()]
    eigenvalues = torch.stack([torch.linalg.eigvalsh(_mixture_hessian(dist.marginal(sde, t), x)) for t in times])
    return eigenvalues.min().item(), eigenvalues.max().item()


def score_lipschitz(dist: GaussianMixture, sde, bounds=None, n_grid: int = 201, n_times: int = 60) -> float:
    r"""L = sup_t sup_x ||\nabla^2 log q_t(x)||_op for the marginals q_t of the linear `sde` started at `dist` (A1).

    The larger magnitude of `score_curvature_range` (same grid and arguments): for one Gaussian the Hessian does not
    depend on x and the result is exact, max over t of 1 / lambda_min(Sigma_t); for a mixture it is a grid maximum,
    so a lower estimate of the supremum that converges as the grid is refined (D <= 2 only). The theorem of lesson 06
    asks h <~ 1/L.
    """
    lowest, highest = score_curvature_range(dist, sde, bounds, n_grid, n_times)
    return max(-lowest, highest)


class _SineField:
    r"""v_j(x) = sin(\omega_j . x + \phi_j), j = 1..D, with E_{q_t} ||v||^2 in closed form for the mixture's marginals.

    For X ~ N(m, S): E sin^2(\omega . X + \phi) = (1 - cos(2 \omega . m + 2 \phi) e^{-2 \omega^T S \omega}) / 2.
    """

    def __init__(self, dist: GaussianMixture, frequency: float, seed: int):
        g = torch.Generator().manual_seed(seed)
        D = dist.dim
        self.omega = frequency * torch.randn(D, D, generator=g, dtype=torch.float64)  # row j: omega_j
        self.phase = 2 * math.pi * torch.rand(D, generator=g, dtype=torch.float64)
        self.weights = dist.weights
        self.omega_mu = dist.means @ self.omega.T  # (K, D): omega_j . mu_k
        self.omega_cov_omega = torch.einsum("jd,kde,je->kj", self.omega, dist.covs, self.omega)  # (K, D)
        self.omega_sq = (self.omega**2).sum(1)  # (D,)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x @ self.omega.T + self.phase)

    def mean_square(self, mean_scale: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """E ||v(X_t)||^2 with X_t = mean_scale X_0 + std Z, X_0 ~ q, for `(n,)` coefficients; `(n,)`."""
        a, s = mean_scale[:, None, None], std[:, None, None]
        variance = a**2 * self.omega_cov_omega + s**2 * self.omega_sq  # (n, K, D): omega_j^T S_k(t) omega_j
        cosine = torch.cos(2 * a * self.omega_mu + 2 * self.phase) * torch.exp(-2 * variance)
        return (self.weights[:, None] * 0.5 * (1 - cosine)).sum((1, 2))


def perturbed_score(dist: GaussianMixture, sde, epsilon: float, *, frequency: float = 1.0, seed: int = 0) -> Callable:
    r"""s(x, t) = \nabla log q_t(x) + epsilon u(x, t): the exact marginal score with an error of L^2(q_t) norm exactly epsilon.

    u(x, t) = v(x) / sqrt(E_{q_t} ||v||^2) with the smooth field v_j(x) = sin(\omega_j . x + \phi_j) (frequencies
    \omega_j ~ N(0, frequency^2 I) and phases fixed by `seed`); the normaliser is computed in closed form for every t,
    so E_{q_t} ||s(X, t) - \nabla log q_t(X)||^2 = epsilon^2 at every t and assumption A3 holds with exactly epsilon.
    `sde` is a linear SDE (`OUSDE` for lesson 06); the result is a `score(x, t)` like `dist.marginal_score(sde)`, with
    the field's `omega` `(D, D)` (row j: omega_j) and `phase` `(D,)` as attributes, so a lesson can say which field it
    shows.
    """
    dist64 = _check_mixture(dist)
    epsilon = check_nonnegative("epsilon", epsilon)
    frequency = check_positive("frequency", frequency, allow_tensor=False)
    check_int("seed", seed, minimum=0)
    exact, field = dist.marginal_score(sde), _SineField(dist64, frequency, seed)

    def score(x: torch.Tensor, t) -> torch.Tensor:
        s = exact(x, t)
        if epsilon == 0:
            return s
        flat = x.reshape(len(x), -1).to(torch.float64)
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(len(x))
        if bool((t == t[0]).all()):  # one time for the batch (every sampler step): one normaliser
            times, index = t[:1], torch.zeros(len(x), dtype=torch.long)
        else:
            times, index = t.unique(return_inverse=True)
        mean_scale, std = (c.to(torch.float64) for c in sde.marginal_coeffs(times))  # once per distinct time
        u = field(flat) / field.mean_square(mean_scale, std).sqrt()[index, None]
        return s + (epsilon * u).reshape(x.shape).to(s.dtype)

    score.omega, score.phase = field.omega, field.phase
    return score


def score_error(score: Callable, dist: GaussianMixture, sde, times, n: int = 10_000, generator=None) -> Estimate:
    r"""eps = sqrt((1/N) \sum_k E_{q_{t_k}} ||s(X, t_k) - \nabla log q_{t_k}(X)||^2) over `times`, with its standard error.

    The score error of assumption A3, measured by Monte Carlo with `n` samples of each marginal q_t (exact, from
    `dist.marginal(sde, t)`); the standard error follows from that of eps^2 by the delta method. For a learned
    network: pass the times at which the integrator will call it, T, T - h, ..., h.
    """
    check_callable("score", score)
    dist = _check_mixture(dist)
    check_int("n", n, minimum=2)
    times = [float(t) for t in torch.as_tensor(times, dtype=torch.float64).reshape(-1)]
    if not times:
        raise ValueError("times must hold at least one time")
    generator = as_generator(generator)
    exact = dist.marginal_score(sde)
    squares = []
    for t in times:
        x = dist.marginal(sde, t).sample(n, generator=generator)
        t_batch = torch.full((n,), t, dtype=torch.float64)
        with torch.no_grad():
            diff = score(x.to(torch.get_default_dtype()), t_batch.to(torch.get_default_dtype())).double() - exact(x, t_batch)
        squares.append((diff**2).reshape(n, -1).sum(1))
    per_sample = torch.stack(squares).mean(0)  # the average over times, per sample index
    mean_square = per_sample.mean().item()
    value = math.sqrt(mean_square)
    se = (per_sample.std() / math.sqrt(n)).item() / (2 * value) if value > 0 else 0.0
    return Estimate(value, se)


def _exponential_step(h: float) -> tuple[float, float, float]:
    return math.exp(h), 2 * math.expm1(h), math.expm1(2 * h)


def _euler_maruyama_step(h: float) -> tuple[float, float, float]:
    return 1 + h, 2 * h, 2 * h


#: one step Y <- a Y + b s(Y, t) + sqrt(c) z of the reverse OU SDE dY = [Y + 2 s] ds + sqrt(2) dB, as (a, b, c) for a
#: step h: the exponential integrator (Chen et al. 2023; `sampling.exponential_integrator`) integrates the linear part
#: exactly, Euler-Maruyama (`sampling.pc_sample(predictor="euler_maruyama")` on `OUSDE`) freezes it too
SCHEMES = {"exponential": _exponential_step, "euler_maruyama": _euler_maruyama_step}


def gaussian_integrator_law(mean, var, T: float, h: float, scheme: str = "exponential") -> tuple[np.ndarray, np.ndarray]:
    r"""The exact output law N(M, diag V) of the reverse OU scheme with the exact score of q = N(mean, diag var).

    q_t = N(m_t, v_t) per coordinate with m_t = e^{-t} mean, v_t = e^{-2t} var + 1 - e^{-2t}. A step of `scheme`
    (`SCHEMES`) is Y <- a Y + b s(Y, t) + sqrt(c) z, with (a, b, c) = (e^h, 2 (e^h - 1), e^{2h} - 1) for the
    exponential integrator and (1 + h, 2 h, 2 h) for Euler-Maruyama; with s = -(Y - m_t) / v_t it is linear-Gaussian:
    M <- (a - b / v_t) M + b m_t / v_t and V <- (a - b / v_t)^2 V + c, from M = 0, V = 1 (the N(0, I) start), calling
    the score at t = T, T - h, ..., h. No sampling noise: `metrics.gaussian_tv` and `metrics.gaussian_kl` then give
    the scheme's TV and KL to q exactly. Returns `(M, V)` as float64 arrays of mean's shape. Introduced in lesson 06.
    """
    n_steps = _steps_of(T, h)
    check_choice("scheme", scheme, SCHEMES)
    mean, var = np.broadcast_arrays(np.atleast_1d(np.asarray(mean, dtype=np.float64)), np.asarray(var, dtype=np.float64))
    if not (np.isfinite(mean).all() and np.isfinite(var).all() and (var > 0).all()):
        raise ValueError(f"mean must be finite and var positive and finite, got {mean} and {var}")
    M, V = np.zeros_like(mean), np.ones_like(var)
    growth, drift_scale, noise = SCHEMES[scheme](h)
    for i in range(n_steps):
        t = T - i * h
        m_t, v_t = math.exp(-t) * mean, math.exp(-2 * t) * var - math.expm1(-2 * t)
        a = growth - drift_scale / v_t
        M, V = a * M + drift_scale * m_t / v_t, a**2 * V + noise
    return M, V


def reverse_output_log_prob(dist: GaussianMixture, T: float, nodes: int = 64) -> Callable:
    r"""log p_T(x): the output law of the *exact* reverse OU process run for a time T from N(0, I) instead of q_T.

    Only the start differs from the truth, so TV(p_T, q) is the start's share of the sampler's error alone. The
    reverse kernel from time T back to 0 is K(y, x) = q(x) P_T(x, y) / q_T(y), with P_T(x, .) = N(e^{-T} x, (1 - e^{-2T}) I)
    the forward one, so started from gamma = N(0, I)

        p_T(x) = \int gamma(y) K(y, x) dy = q(x) E[(gamma / q_T)(X_T) | X_0 = x],

    the data law reweighted by the likelihood ratio of the start, pulled back through the forward kernel. The
    expectation is a Gauss-Hermite rule in X_T | X_0 = x with `nodes`^D points (D <= 2): the integrand is smooth, so
    log p_T is accurate to ~1e-12 for the mixtures of lesson 06 (the tests compare a Gaussian q with its closed form).
    Returns `log_prob(x)`, `(n, D) -> (n,)` in float64, e.g. for `metrics.tv_quadrature(log_prob, q.log_prob, ...)`.
    Introduced in lesson 06.
    """
    dist = _check_mixture(dist)
    if dist.dim not in (1, 2):
        raise ValueError(f"reverse_output_log_prob integrates in 1-D or 2-D, got a mixture in D={dist.dim}")
    T = check_positive("T", T, allow_tensor=False)
    check_int("nodes", nodes, minimum=2)
    ou = OUSDE(T)
    q_T = dist.marginal(ou, T)
    z, w = np.polynomial.hermite_e.hermegauss(nodes)  # weight e^{-z^2/2}: nodes of N(0, 1) after dividing by sqrt(2 pi)
    z_1d, log_w_1d = torch.as_tensor(z), torch.as_tensor(np.log(w / math.sqrt(2 * math.pi)))
    z = torch.cartesian_prod(*[z_1d] * dist.dim).reshape(-1, dist.dim)  # (M, D)
    log_w = torch.cartesian_prod(*[log_w_1d] * dist.dim).reshape(-1, dist.dim).sum(1)  # (M,)
    scale, std = math.exp(-T), math.sqrt(-math.expm1(-2 * T))

    def log_prob(x: torch.Tensor) -> torch.Tensor:
        x = dist._flatten(torch.as_tensor(x, dtype=torch.float64))
        parts = []
        for chunk in x.split(max(1, 2**20 // len(z))):
            y = (scale * chunk[:, None, :] + std * z).reshape(-1, dist.dim)  # X_T given X_0 = x, at the nodes
            log_ratio = (ou.prior_log_prob(y) - q_T.log_prob(y)).reshape(len(chunk), len(z))
            parts.append(dist.log_prob(chunk) + torch.logsumexp(log_ratio + log_w, 1))
        return torch.cat(parts)

    return log_prob


def start_tv(dist: GaussianMixture, T: float, nodes: int = 32, bounds=(-12.0, 12.0), cells: int = 400) -> tuple[float, float]:
    r"""What the start costs: (TV(q_T, gamma), TV(p_T, q)) for a 1-D mixture q, both by quadrature, with no sampling noise.

    q_T = `dist.marginal(OUSDE(T), T)` is the noised law the reverse process should start from, gamma = N(0, 1) the one
    it starts from, and p_T (`reverse_output_log_prob`) the output of the *exact* reverse process started at gamma:
    TV(p_T, q) is the start's share of a sampler's error alone, and TV(q_T, gamma) the quantity the bound's start term
    sqrt(KL(q || gamma)) e^{-T} / sqrt(2) bounds (Pinsker and the OU log-Sobolev inequality). With k the first Hermite
    mode of q (c_k = E_q He_k(X) / k! != 0) they fall like e^{-k T} and e^{-2 k T}: the output meets the mode twice.
    Gauss-Legendre quadrature (`metrics.tv_quadrature`) on `cells` cells of `bounds`; `nodes` Gauss-Hermite points
    for p_T. Accurate to ~1e-4 of each TV (|p - q| has a kink where the laws cross) while the TV is above ~1e-15,
    where float64 rounding of the log-densities takes over. Returns two floats.
    Introduced in lesson 06.
    """
    dist = _check_mixture(dist)
    if dist.dim != 1:
        raise ValueError(f"start_tv integrates in 1-D, got a mixture in D={dist.dim}")
    T = check_positive("T", T, allow_tensor=False)
    lo, hi = check_bounds(bounds)
    check_int("cells", cells, minimum=1)
    q_T = dist.marginal(OUSDE(T), T)
    noised = tv_quadrature(q_T.log_prob, OUSDE().prior_log_prob, 1, (lo, hi), cells)  # TV(q_T, gamma)
    output = tv_quadrature(reverse_output_log_prob(dist, T, nodes), dist.log_prob, 1, (lo, hi), cells)
    return noised, output


def _grid_chain(score: Callable, T: float, h: float, bounds, n_grid: int, scheme: str = "exponential"):
    """The 1-D scheme's law on a grid: yields (t, x, density) before each step (forward time t of the score call) and
    finally (0, x, output density). Each step maps a point y to N(a y + b s(y, t), c) with (a, b, c) from `SCHEMES`,
    so the next density is a sum over the grid of Gaussians weighted by density * cell width (midpoint rule)."""
    check_callable("score", score)
    n_steps = _steps_of(T, h)
    check_choice("scheme", scheme, SCHEMES)
    lo, hi = check_bounds(bounds)
    check_int("n_grid", n_grid, minimum=2)
    width = (hi - lo) / n_grid
    x = lo + width * (torch.arange(n_grid, dtype=torch.float64) + 0.5)
    density = torch.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)  # Y_0 ~ N(0, 1)
    growth, drift_scale, noise_var = SCHEMES[scheme](h)
    normaliser = 1 / math.sqrt(2 * math.pi * noise_var)
    half_width = min(n_grid, math.ceil(9 * math.sqrt(noise_var) / width))
    reach = torch.arange(-half_width, half_width + 1)
    reach_x, pad = width * reach.double(), 2 * half_width + 1
    dtype = torch.get_default_dtype()
    for i in range(n_steps):
        t = T - i * h
        yield t, x, density
        with torch.no_grad():
            s = score(x[:, None].to(dtype), torch.full((n_grid,), t, dtype=dtype)).reshape(n_grid).double()
        if not torch.isfinite(s).all():
            raise ValueError(f"score is not finite on the grid at t={t:.4g}")
        mean = growth * x + drift_scale * s  # where each grid point's mass goes, (n_grid,)
        # each point's Gaussian on the cells within 9 standard deviations of its mean (beyond: < 1e-17 of its mass);
        # mass beyond the grid lands in pads on either side and is dropped
        nearest = ((mean - lo) / width - 0.5).round()
        offset = lo + width * (nearest + 0.5) - mean  # nearest cell centre - mean
        kernel = torch.exp((offset[:, None] + reach_x[None, :]) ** 2 * (-0.5 / noise_var)) * (normaliser * width * density)[:, None]
        cells = nearest.long().clamp(-pad, n_grid + pad - 1)[:, None] + reach[None, :] + 2 * pad
        density = torch.zeros(n_grid + 4 * pad, dtype=torch.float64).index_add_(0, cells.ravel(), kernel.ravel())
        density = density[2 * pad : 2 * pad + n_grid]
    yield 0.0, x, density


def grid_integrator_law(
    score: Callable, T: float, h: float, bounds=(-8.0, 8.0), n_grid: int = 601, scheme: str = "exponential"
) -> tuple[np.ndarray, np.ndarray]:
    r"""The exact output law of the 1-D reverse OU scheme (`sampling.exponential_integrator` by default), for any score.

    Started from N(0, 1), each step Y <- a Y + b s(Y, t) + sqrt(c) z is Gaussian given Y ((a, b, c) from `SCHEMES`:
    (e^h, 2 (e^h - 1), e^{2h} - 1) for the exponential integrator, (1 + h, 2 h, 2 h) for `scheme="euler_maruyama"`),
    so the density after a step is p'(x) = \int p(y) N(x; a y + b s(y, t), c) dy: a product with an
    `n_grid` x `n_grid` matrix per step, the integral by the midpoint rule on `n_grid` cells of `bounds` (mass that
    leaves the interval is dropped: check `density.sum() * width`). With cells several times narrower than sqrt(c)
    the error is far below 1e-6 in TV (the tests compare a Gaussian target with the closed form of
    `gaussian_integrator_law`, and a mixture with particles). The score is called at t = T, T - h, ..., h, without
    sampling noise; `score(x, t)` takes `(n, 1)` points and `(n,)` times. Returns `(x, density)`: the cell centres and
    the output density there, float64 arrays of length `n_grid`, so TV(p, q) = 1/2 sum |density - q(x)| * width.
    Introduced in lesson 06.
    """
    *_, (_, x, density) = _grid_chain(score, T, h, bounds, n_grid, scheme)  # the last state: the output
    return x.numpy(), density.numpy()


def grid_tv(law, other) -> float:
    r"""TV = 1/2 \int |p - r| dx for `law` = (x, density) from `grid_integrator_law` and `other`: another such law on the
    same cells, a 1-D `GaussianMixture`, or a normalised log-density `(n, 1) -> (n,)`. The midpoint rule on the law's
    cells: its error is of the order of (cell width)^2 where the two densities cross. Returns a float. Lesson 06.
    """
    x, density = (np.asarray(v, dtype=np.float64) for v in law)
    if x.ndim != 1 or x.shape != density.shape or len(x) < 2:
        raise ValueError(f"law must be (x, density), two 1-d arrays of one length >= 2, got shapes {x.shape}, {density.shape}")
    if isinstance(other, GaussianMixture):
        other = _check_mixture(other).log_prob
    if callable(other):
        with torch.no_grad():
            r = other(torch.as_tensor(x)[:, None]).double().exp().numpy()
    else:
        r_x, r = (np.asarray(v, dtype=np.float64) for v in other)
        if not np.array_equal(r_x, x):
            raise ValueError("other must be a law on the same cells as law (the same x), a GaussianMixture or a log-density")
    return float(0.5 * np.abs(density - r).sum() * (x[1] - x[0]))


def output_tv(score: Callable, T: float, h: float, reference, bounds=(-8.0, 8.0), n_grid: int = 601, scheme: str = "exponential") -> float:
    r"""TV between the 1-D scheme's exact output law with `score` (`grid_integrator_law`) and `reference`.

    `reference` is what `grid_tv` accepts: another output law `(x, density)` on the same cells (e.g. the same scheme run
    with the exact score: the TV the bound's score term bounds), a 1-D `GaussianMixture` (the data law q) or a
    normalised log-density. No sampling noise and no estimator bias. Returns a float. Introduced in lesson 06.
    """
    return grid_tv(grid_integrator_law(score, T, h, bounds, n_grid, scheme), reference)


def integrator_output(score: Callable, T: float, h: float, n: int, dim: int = 1, generator=None) -> torch.Tensor:
    r"""`n` particles of the exponential integrator's output: Y_0 ~ N(0, I_dim), then `sampling.exponential_integrator`.

    The start and the steps' noise both come from `generator` (a seed or a `torch.Generator`), so one seed gives one
    run. Returns `(n, dim)`. The particles' law is what `grid_integrator_law` computes without noise (1-D), which
    lesson 06 checks them against. Introduced in lesson 06.
    """
    check_int("n", n, minimum=1)
    check_int("dim", dim, minimum=1)
    generator = as_generator(generator)
    x_0 = torch.randn(n, dim, generator=generator)
    return exponential_integrator(score, x_0, T, h, generator=generator)


def path_score_error(score: Callable, reference: Callable, T: float, h: float, bounds=(-8.0, 8.0), n_grid: int = 601) -> float:
    r"""eps_path = sqrt((1/N) \sum_k E ||s(Y_k, t_k) - s_ref(Y_k, t_k)||^2) under the law of the 1-D scheme run with `reference`.

    Y_k is the state of `sampling.exponential_integrator` with the score `reference`, started from N(0, 1), when it
    calls the score at forward time t_k = T - k h (k = 0..N-1), its law on a grid as in `grid_integrator_law`. The two
    schemes' interpolated paths differ only in the drift 2 (s - s_ref)(Y_k) on each step, so Girsanov's theorem gives
    KL(path_ref || path_s) = T eps_path^2 exactly, and with Pinsker and data processing
    TV(output_s, output_ref) <= eps_path sqrt(T / 2): a true bound. A3 averages the same error under q_{t_k} instead
    (`score_error`); the two agree when the reference chain's laws are close to q_t. Returns a float. Lesson 06.
    """
    check_callable("reference", reference)
    dtype, total, n_steps = torch.get_default_dtype(), 0.0, 0
    for t, x, density in _grid_chain(reference, T, h, bounds, n_grid):
        if t == 0.0:
            break
        points, times = x[:, None].to(dtype), torch.full((len(x),), t, dtype=dtype)
        with torch.no_grad():
            diff = (score(points, times) - reference(points, times)).reshape(len(x)).double()
        total += float((density * diff**2).sum() * (x[1] - x[0]))
        n_steps += 1
    return math.sqrt(total / n_steps)


def discretisation_path_kl(dist: GaussianMixture, T: float, h: float, n: int = 2000, nodes: int = 3, generator=None) -> Estimate:
    r"""KL(Q^<- || P^{q_T}) between the exact reverse path and the exponential integrator's with the exact score, both from q_T.

    Girsanov's theorem, the first step of the proof in Zhang's lecture 19 (Chen et al. 2023), here as an identity (the
    notes state the inequality <=, all the proof needs; equality holds where Novikov's condition does):
    the two drifts differ by 2 (\nabla log q_{T-kh}(X_{kh}) - \nabla log q_{T-t}(X_t)) on each step [kh, (k+1)h], so

        KL = \sum_k \int_{kh}^{(k+1)h} E ||\nabla log q_{T-kh}(X_{kh}) - \nabla log q_{T-t}(X_t)||^2 dt,

    the expectation over the exact reverse process, i.e. over forward OU paths read backwards: X at forward time
    u = T - t, then at T - kh = u + (t - kh). The proof bounds this by (L^2 d h + L^2 m_2^2 h^2) T; here it is measured,
    with `n` forward paths per step and time node and `nodes`-point Gauss-Legendre in t. The KL between the paths
    bounds that between the outputs (data processing). Returns an `Estimate` (value, standard error over the n
    independent sums). Introduced in lesson 06.
    """
    dist = _check_mixture(dist)
    n_steps = _steps_of(T, h)
    check_int("n", n, minimum=2)
    check_int("nodes", nodes, minimum=1)
    generator = as_generator(generator)
    score = dist.marginal_score(OUSDE(T))
    u_nodes, w_nodes = np.polynomial.legendre.leggauss(nodes)
    lag = torch.as_tensor(h * (u_nodes + 1) / 2)  # t - kh at the nodes
    frozen = torch.as_tensor(T - h * np.arange(n_steps), dtype=torch.float64)  # T - kh: where the score is frozen
    per_path = torch.zeros(n, dtype=torch.float64)
    for delta, weight in zip(lag.tolist(), (h * w_nodes / 2).tolist()):
        u = (frozen - delta).repeat_interleave(n)  # forward time of X_t, (N n,)
        x_0 = dist.sample(n_steps * n, generator=generator)
        x_u = torch.exp(-u)[:, None] * x_0 + torch.sqrt(-torch.expm1(-2 * u))[:, None] * _normal(x_0, generator)
        x_k = math.exp(-delta) * x_u + math.sqrt(-math.expm1(-2 * delta)) * _normal(x_0, generator)  # at T - kh
        diff = score(x_k, frozen.repeat_interleave(n)) - score(x_u, u)
        per_path += weight * (diff**2).sum(1).reshape(n_steps, n).sum(0)
    return Estimate(per_path.mean().item(), (per_path.std() / math.sqrt(n)).item())


def _normal(like: torch.Tensor, generator) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, dtype=like.dtype)


def windowed_score(score: Callable, reference: Callable, window) -> Callable:
    r"""s(x, t) = `score`(x, t) for forward times t in [lo, hi] = `window`, `reference`(x, t) outside it.

    For ablations of *when* a score errs (lesson 06): the learned score only near t = 0, or a perturbed score only
    where the reverse process starts. `t` may be a float or a `(n,)` tensor; a batch that shares one time (every
    sampler step) calls only the score it needs.
    """
    check_callable("score", score)
    check_callable("reference", reference)
    lo, hi = check_bounds(window, "window")

    def mixed(x: torch.Tensor, t) -> torch.Tensor:
        t_batch = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        inside = (t_batch >= lo) & (t_batch <= hi)
        if bool(inside.all()):
            return score(x, t)
        if not bool(inside.any()):
            return reference(x, t)
        return torch.where(append_dims(inside.expand(len(x)), x.ndim), score(x, t), reference(x, t))

    return mixed


def variance_ratio_tv(ratio: float, d: int) -> float:
    r"""TV(N(mu, r s^2 I_d), N(mu, s^2 I_d)) to first order in r - 1: (|r - 1| / 4) E|chi^2_d - d|.

    Under the second law, log(p/q) = -(d/2) log r + (1 - 1/r) chi^2_d / 2 = (r - 1)(chi^2_d - d) / 2 + O((r - 1)^2),
    and TV = E_q|p/q - 1| / 2, so TV = |r - 1| E|chi^2_d - d| / 4 while |r - 1| sqrt(d) is small. The mean absolute
    deviation of chi^2_d (a Gamma(a = d/2, 2) law) is E|chi^2_d - d| = 4 a^a e^{-a} / Gamma(a) -> 2 sqrt(d / pi):
    the TV grows like sqrt(d) only for large d, more steeply at small d (local slope 0.60 from d = 1 to 2).
    Lesson 06 compares the scheme's exact output law in d dimensions with it. Returns a float.
    """
    ratio = check_positive("ratio", ratio, allow_tensor=False)
    d = check_int("d", int(d) if isinstance(d, np.integer) else d, minimum=1)
    a = d / 2
    mean_abs_deviation = math.exp(math.log(4) + a * math.log(a) - a - math.lgamma(a))
    return abs(ratio - 1) * mean_abs_deviation / 4


def bound_terms(kl: float, L: float, m2: float, d: int, T, h, epsilon) -> dict[str, np.ndarray]:
    r"""The three terms of the bound with every hidden constant set to 1, for arrays of T, h, epsilon:
    `init` = sqrt(KL) e^{-T}, `discretisation` = (L sqrt(d h) + L m_2 h) sqrt(T), `score` = epsilon sqrt(T).

    Only their shapes in T, h, epsilon and d are the theorem's claim; `init / sqrt(2)` is moreover a true bound on
    TV(q_T, N(0, I)) (Pinsker and the OU log-Sobolev inequality), hence, by data processing, on what starting from
    N(0, I) instead of q_T costs the output. For the output it is loose by a factor of order e^{-T}: that cost decays
    like e^{-2 k T}, k the first non-zero Hermite mode of q, where TV(q_T, N(0, I)) decays like e^{-k T}
    (`reverse_output_log_prob`, lesson 06).
    """
    T, h, epsilon = (np.asarray(v, dtype=np.float64) for v in (T, h, epsilon))
    return {
        "init": math.sqrt(kl) * np.exp(-T),
        "discretisation": (L * np.sqrt(d * h) + L * m2 * h) * np.sqrt(T),
        "score": epsilon * np.sqrt(T),
    }
