"""Lesson 06's tools against closed forms: the exponential integrator, exact Gaussian TV and KL, Monte-Carlo TV and KL,
the bound's constants (L, m_2, KL to N(0, I)), scores with a chosen error, and the 1-D grid TV."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from scorelab import OUSDE, GaussianMixture, bounds, metrics, sampling
from scorelab.metrics import _cell_masses, gaussian_kl, gaussian_tv, kl_monte_carlo, tv_grid, tv_monte_carlo

MIX_1D = GaussianMixture([0.3, 0.7], [[-2.0], [1.5]], [0.25, 0.5], dtype=torch.float64)
MIX_2D = GaussianMixture([0.4, 0.6], [[-1.5, 0.5], [1.0, -1.0]], [[[0.5, 0.2], [0.2, 0.4]], [[0.3, 0.0], [0.0, 0.6]]])


class _Normal:
    """N(mean, diag var) in float64: `log_prob(x)` `(n,)` and `sample(n, seed)`."""

    def __init__(self, mean, var):
        self.mean = torch.as_tensor(np.atleast_1d(mean), dtype=torch.float64)
        self.std = torch.as_tensor(var, dtype=torch.float64).sqrt().expand_as(self.mean)

    def log_prob(self, x):
        return torch.distributions.Normal(self.mean, self.std).log_prob(x).sum(1)

    def sample(self, n, seed):
        return self.mean + self.std * torch.randn(n, len(self.mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _tv_1d_by_crossings(a, u, b, v):
    """TV of N(a, u) and N(b, v) from the (at most two) points where the densities cross: an independent oracle."""
    quadratic = [1 / (2 * v) - 1 / (2 * u), a / u - b / v, -(a**2) / (2 * u) + b**2 / (2 * v) + 0.5 * math.log(v / u)]
    roots = np.roots(quadratic) if quadratic[0] != 0 else np.array([-quadratic[2] / quadratic[1]])
    edges = np.concatenate([[-np.inf], np.sort(roots.real), [np.inf]])
    p, q = stats.norm(a, math.sqrt(u)), stats.norm(b, math.sqrt(v))
    return sum(max(0.0, (p.cdf(hi) - p.cdf(lo)) - (q.cdf(hi) - q.cdf(lo))) for lo, hi in zip(edges[:-1], edges[1:]))


# --- the exponential integrator ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mean, var", [(0.7, 0.3), ([0.5, -1.0, 2.0], [0.2, 1.5, 0.8])])
def test_integrator_on_a_gaussian_target_has_the_closed_form_output_law(mean, var):
    T, h, n = 2.0, 0.25, 200_000
    target = GaussianMixture([1.0], torch.tensor(mean, dtype=torch.float64).reshape(1, -1), torch.tensor(var).reshape(1, -1))
    M, V = bounds.gaussian_integrator_law(mean, var, T, h)
    x0 = torch.randn(n, target.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = sampling.exponential_integrator(target.marginal_score(OUSDE(T)), x0, T, h, generator=1)
    # 4 standard errors of the sample mean and of the sample variance (sqrt(2 / n) V for a normal law)
    np.testing.assert_array_less(np.abs(y.mean(0).numpy() - M), 4 * np.sqrt(V / n))
    np.testing.assert_array_less(np.abs(y.var(0).numpy() - V), 4 * V * math.sqrt(2 / n))
    assert np.abs(M - np.asarray(mean)).max() > 0.01 or np.abs(V - np.asarray(var)).max() > 0.01  # h = 0.25 is visibly biased


def test_integrator_law_tends_to_the_target_as_h_shrinks():
    errors = []
    for h in (0.1, 0.01, 0.001):
        M, V = bounds.gaussian_integrator_law(0.8, 0.4, 12.0, h)
        errors.append(abs(M[0] - 0.8) + abs(V[0] - 0.4))
    assert errors[0] > 5 * errors[1] > 25 * errors[2]  # first order in h


def test_integrator_with_small_h_reproduces_a_2d_mixture_and_a_large_h_does_not():
    T, n, grid = 6.0, 10_000, {"bounds": (-5, 5), "bins": 20}
    score = MIX_2D.marginal_score(OUSDE(T))
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    fine = tv_grid(sampling.exponential_integrator(score, x0, T, 0.02, generator=1), MIX_2D, **grid)
    coarse = tv_grid(sampling.exponential_integrator(score, x0, T, 0.3, generator=1), MIX_2D, **grid)
    assert fine.tv < fine.floor + 4 * fine.spread
    assert coarse.tv > coarse.floor + 10 * coarse.spread


def test_integrator_callback_and_shape_agnostic():
    seen = []
    images = torch.randn(5, 1, 2, 2)
    target = GaussianMixture([1.0], torch.zeros(1, 4), torch.ones(1))
    out = sampling.exponential_integrator(target.marginal_score(OUSDE(1.0)), images, 1.0, 0.25, generator=0, callback=seen.append)
    assert out.shape == images.shape
    assert [d["i"] for d in seen] == [0, 1, 2, 3] and [d["t"] for d in seen] == pytest.approx([0.75, 0.5, 0.25, 0.0])


@pytest.mark.parametrize(
    "T, h, message",
    [
        (1.0, 0.0, "h must be positive"),
        (1.0, -0.1, "h must be positive"),
        (1.0, 2.0, "h must be at most T"),
        (1.0, 0.3, "whole number"),
        (0.0, 0.1, "T must be positive"),
    ],
)
def test_integrator_rejects_bad_T_and_h(T, h, message):
    with pytest.raises(ValueError, match=message):
        sampling.exponential_integrator(lambda x, t: -x, torch.zeros(3, 1), T, h)


def test_integrator_raises_on_divergence():
    with pytest.raises(sampling.DivergenceError, match="steps 0-1"):  # checked after the last step, no sync before
        sampling.exponential_integrator(lambda x, t: x * float("nan"), torch.zeros(3, 1), 1.0, 0.5)
    with pytest.raises(sampling.DivergenceError, match=r"at step 0\b"):  # a callback sees every step: checked there
        sampling.exponential_integrator(lambda x, t: x * float("nan"), torch.zeros(3, 1), 1.0, 0.5, callback=print)


# --- exact and Monte-Carlo TV and KL ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, u, b, v", [(0.0, 1.0, 0.5, 1.0), (0.0, 1.0, 0.0, 2.0), (0.3, 0.5, -1.0, 2.0), (0.0, 1.0, 3.0, 0.1), (0.0, 1.0, 0.0, 1.01)]
)
def test_gaussian_tv_in_1d_equals_the_crossing_point_formula(a, u, b, v):
    assert gaussian_tv(a, u, b, v) == pytest.approx(_tv_1d_by_crossings(a, u, b, v), abs=1e-10)


@pytest.mark.parametrize("d", [2, 16, 256])
def test_gaussian_tv_of_isotropic_laws_in_d_dimensions(d):
    """p = N(0.1 * 1, I), q = N(0, 1.05 I): {p > q} is a ball, so TV is a difference of noncentral chi-square laws,
    worked out here independently of the library's completing of squares."""
    a, u, b, v = 0.1, 1.0, 0.0, 1.05
    k = 1 / (2 * v) - 1 / (2 * u)  # log p/q = k ||x - c||^2 + const
    c = -(a / u - b / v) / (2 * k)
    const = d * (-(a**2) / (2 * u) + b**2 / (2 * v) + 0.5 * math.log(v / u)) - k * d * c**2
    radius_sq = -const / k  # k < 0 (q is wider): {p > q} = {||x - c||^2 < radius_sq}, a ball
    mass = lambda m, w: stats.ncx2.cdf(radius_sq / w, d, d * (m - c) ** 2 / w)  # noqa: E731
    assert gaussian_tv(np.full(d, a), u, np.zeros(d), v) == pytest.approx(mass(a, u) - mass(b, v), abs=1e-10)


def test_gaussian_tv_and_kl_with_unequal_variance_ratios_match_monte_carlo():
    rng = np.random.default_rng(0)
    a, b = 0.3 * rng.normal(size=6), 0.3 * rng.normal(size=6)
    u, v = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    p, q = _Normal(a, u), _Normal(b, v)
    x = p.sample(200_000, seed=0)
    tv, kl = tv_monte_carlo(p.log_prob, q.log_prob, x), kl_monte_carlo(p.log_prob, q.log_prob, x)
    assert abs(gaussian_tv(a, u, b, v) - tv.value) < 4 * tv.se
    assert abs(gaussian_kl(a, u, b, v) - kl.value) < 4 * kl.se


@pytest.mark.parametrize("seed", range(3))
def test_tv_monte_carlo_equals_the_closed_form_within_its_standard_error(seed):
    p, q = _Normal(0.0, 1.0), _Normal(0.8, 1.6)
    estimate = tv_monte_carlo(p.log_prob, q.log_prob, p.sample(50_000, seed))
    assert abs(estimate.value - _tv_1d_by_crossings(0.0, 1.0, 0.8, 1.6)) < 4 * estimate.se
    assert 0 < estimate.se < 0.5 / math.sqrt(50_000)


def test_monte_carlo_distances_check_what_they_are_given():
    p = _Normal(0.0, 1.0)
    x = p.sample(10, seed=0)
    with pytest.raises(ValueError, match="q_log_prob must return a tensor of shape"):
        tv_monte_carlo(p.log_prob, lambda x: torch.zeros(3), x)
    with pytest.raises(TypeError, match="p_log_prob must be callable"):
        kl_monte_carlo("p", p.log_prob, x)
    with pytest.raises(ValueError, match="same dimension"):
        gaussian_tv([0.0, 1.0], 1.0, [0.0, 0.0, 0.0], 1.0)
    with pytest.raises(ValueError, match="var positive"):
        gaussian_kl(0.0, -1.0, 0.0, 1.0)


# --- the constants of the bound ---------------------------------------------------------------------------------


def test_second_moment_and_kl_to_the_standard_normal():
    assert bounds.second_moment(MIX_1D) == pytest.approx(0.3 * (4 + 0.25) + 0.7 * (2.25 + 0.5), rel=1e-12)
    x = MIX_1D.sample(200_000, generator=0)
    gamma = _Normal(0.0, 1.0)
    mc = kl_monte_carlo(MIX_1D.log_prob, gamma.log_prob, x)
    assert abs(bounds.kl_to_standard_normal(MIX_1D) - mc.value) < 4 * mc.se
    # one Gaussian: closed form, in 1-D and 2-D
    g2 = GaussianMixture([1.0], [[0.5, -1.0]], [[0.4, 2.0]], dtype=torch.float64)
    assert bounds.kl_to_standard_normal(g2) == pytest.approx(gaussian_kl([0.5, -1.0], [0.4, 2.0], 0.0, 1.0), abs=1e-9)
    with pytest.raises(ValueError, match="1-D or 2-D"):
        bounds.kl_to_standard_normal(GaussianMixture([1.0], torch.zeros(1, 3), torch.ones(1)))


def test_lipschitz_constant_is_exact_for_a_gaussian_and_the_hessian_is_right_for_a_mixture():
    g = GaussianMixture([1.0], [[0.5, 0.0]], [[0.2, 3.0]], dtype=torch.float64)
    assert bounds.score_lipschitz(g, OUSDE(5.0)) == pytest.approx(5.0, rel=1e-9)  # 1 / lambda_min at t = 0
    wide = GaussianMixture([1.0], [[0.0]], [4.0], dtype=torch.float64)
    assert bounds.score_lipschitz(wide, OUSDE(5.0)) == pytest.approx(1 / (math.exp(-10) * 4 + 1 - math.exp(-10)), rel=1e-9)
    mix = MIX_2D.to(dtype=torch.float64)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    autograd = torch.stack([torch.autograd.functional.jacobian(lambda v: mix.score(v[None])[0], row) for row in x])
    torch.testing.assert_close(bounds._mixture_hessian(mix, x), autograd)
    assert bounds.score_lipschitz(MIX_1D, OUSDE(5.0)) > 1 / 0.25  # between the modes the log-density is convex


@pytest.mark.parametrize("t", [0.0, 0.3, 2.0])
def test_perturbed_score_has_exactly_the_chosen_error(t):
    sde, epsilon, n = OUSDE(4.0), 0.3, 100_000
    for dist in (MIX_1D, MIX_2D.to(dtype=torch.float64)):
        x = dist.marginal(sde, t).sample(n, generator=1)
        t_batch = torch.full((n,), t, dtype=torch.float64)
        sq = ((bounds.perturbed_score(dist, sde, epsilon)(x, t_batch) - dist.marginal_score(sde)(x, t_batch)) ** 2).sum(1)
        assert abs(sq.mean().item() - epsilon**2) < 4 * sq.std().item() / math.sqrt(n)
    field = bounds.perturbed_score(MIX_1D, sde, epsilon, frequency=2.0, seed=3)
    assert field.omega.shape == (1, 1) and field.phase.shape == (1,)
    x1 = torch.linspace(-3, 3, 7, dtype=torch.float64)[:, None]
    t1 = torch.full((7,), 0.5, dtype=torch.float64)
    direction = (field(x1, t1) - MIX_1D.marginal_score(sde)(x1, t1))[:, 0] / torch.sin(field.omega[0, 0] * x1[:, 0] + field.phase[0])
    torch.testing.assert_close(direction, direction[:1].expand(7))  # the error is sin(omega x + phase) times one constant
    zero = bounds.perturbed_score(MIX_1D, sde, 0.0)
    torch.testing.assert_close(zero(x[:, :1], t_batch), MIX_1D.marginal_score(sde)(x[:, :1], t_batch))


def test_score_error_measures_epsilon():
    sde = OUSDE(2.0)
    estimate = bounds.score_error(bounds.perturbed_score(MIX_1D, sde, 0.2), MIX_1D, sde, [2.0, 1.0, 0.5], n=50_000, generator=0)
    assert abs(estimate.value - 0.2) < 4 * estimate.se
    exact = bounds.score_error(MIX_1D.marginal_score(sde), MIX_1D, sde, [1.0], n=100, generator=0)
    assert exact.value < 1e-6


@pytest.mark.parametrize("epsilon", [-0.1, float("nan"), "0.1"])
def test_perturbed_score_rejects_bad_epsilon(epsilon):
    with pytest.raises(ValueError, match="epsilon"):
        bounds.perturbed_score(MIX_1D, OUSDE(1.0), epsilon)


def test_bound_terms_follow_the_formula():
    terms = bounds.bound_terms(kl=2.0, L=3.0, m2=1.5, d=4, T=np.array([1.0, 4.0]), h=0.01, epsilon=0.2)
    np.testing.assert_allclose(terms["init"], math.sqrt(2) * np.exp([-1.0, -4.0]))
    np.testing.assert_allclose(terms["discretisation"], (3 * math.sqrt(0.04) + 3 * 1.5 * 0.01) * np.sqrt([1.0, 4.0]))
    np.testing.assert_allclose(terms["score"], 0.2 * np.sqrt([1.0, 4.0]))


# --- the grid TV in 1-D -----------------------------------------------------------------------------------------


def test_1d_cell_masses_match_the_normal_cdf_and_an_exact_sampler_sits_at_the_floor():
    edges = np.linspace(-5, 5, 41)
    exact = sum(w * np.diff(stats.norm.cdf(edges, m, math.sqrt(v))) for w, m, v in ((0.3, -2.0, 0.25), (0.7, 1.5, 0.5)))
    np.testing.assert_allclose(_cell_masses(MIX_1D.to(dtype=torch.float64).log_prob, 1, -5, 5, 40)[:-1], exact, atol=1e-10)
    results = [tv_grid(MIX_1D.sample(5000, generator=seed), MIX_1D, bounds=(-5, 5), bins=40) for seed in range(30)]
    tvs = np.array([r.tv for r in results])
    assert abs(tvs.mean() - results[0].floor) < 0.05 * results[0].floor
    shifted = tv_grid(MIX_1D.sample(5000, generator=0) + 0.2, MIX_1D, bounds=(-5, 5), bins=40)
    assert shifted.tv > shifted.floor + 10 * shifted.spread


def test_quadrature_tv_and_kl_of_two_gaussians_equal_the_closed_forms():
    p, q = _Normal(0.3, 0.5), _Normal(-1.0, 2.0)
    assert metrics.tv_quadrature(p.log_prob, q.log_prob, 1, (-15, 15)) == pytest.approx(_tv_1d_by_crossings(0.3, 0.5, -1.0, 2.0), abs=1e-6)
    assert metrics.kl_quadrature(p.log_prob, q.log_prob, 1, (-15, 15)) == pytest.approx(gaussian_kl(0.3, 0.5, -1.0, 2.0), abs=1e-10)
    p2, q2 = _Normal([0.3, 0.0], [0.5, 1.0]), _Normal([0.0, 0.4], 1.0)
    assert metrics.kl_quadrature(p2.log_prob, q2.log_prob, 2, (-12, 12), cells=60) == pytest.approx(
        gaussian_kl([0.3, 0.0], [0.5, 1.0], [0.0, 0.4], 1.0), abs=1e-10
    )
    with pytest.raises(ValueError, match="dim"):
        metrics.tv_quadrature(p.log_prob, q.log_prob, 3, (-1, 1))


def test_perturbed_score_with_a_different_time_per_sample():
    sde = OUSDE(4.0)
    score = bounds.perturbed_score(MIX_1D, sde, 0.5)
    x = torch.linspace(-3, 3, 6, dtype=torch.float64)[:, None]
    t = torch.tensor([0.0, 0.5, 0.5, 2.0, 0.0, 4.0], dtype=torch.float64)
    one_by_one = torch.cat([score(x[i : i + 1], t[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(score(x, t), one_by_one)


# --- the start's share, exact output laws on a grid, the path score error ----------------------------------------


def _reverse_from_prior_gaussian(mu, s2, T):
    """Mean and variance of X_0 | X_T = y, averaged over y ~ N(0, 1): the exact reverse process started at the prior,
    for q = N(mu, s2), from the Gaussian conditioning formula (an oracle independent of the library's quadrature)."""
    v_T = s2 * math.exp(-2 * T) + 1 - math.exp(-2 * T)
    gain = s2 * math.exp(-T) / v_T  # E[X_0 | X_T = y] = mu + gain (y - mu e^{-T})
    return mu - gain * mu * math.exp(-T), s2 - gain * s2 * math.exp(-T) + gain**2


@pytest.mark.parametrize("mu, s2", [(0.7, 0.3), (0.0, 2.0), (-1.0, 0.25)])
@pytest.mark.parametrize("T", [0.25, 1.0, 4.0])
def test_reverse_output_of_a_gaussian_is_the_conditioning_formula(mu, s2, T):
    g = GaussianMixture([1.0], [[mu]], [s2], dtype=torch.float64)
    mean, var = _reverse_from_prior_gaussian(mu, s2, T)
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)[:, None]
    expected = torch.as_tensor(stats.norm.logpdf(x[:, 0].numpy(), mean, math.sqrt(var)))
    torch.testing.assert_close(bounds.reverse_output_log_prob(g, T)(x), expected, atol=1e-10, rtol=0)
    # the exponential integrator with a tiny step tends to the same law (first order in h)
    M, V = bounds.gaussian_integrator_law(mu, s2, T, T / 4000)
    assert abs(M[0] - mean) + abs(V[0] - var) < 5e-3


def test_reverse_output_rates_and_leading_constants_of_the_hermite_expansion():
    """TV(q_T, gamma) ~ |mu| sqrt(2/pi) e^{-T} / 2 and TV(p_T, q) ~ |mu| E_q|X - mu| e^{-2T} / 2 for a non-centred q:
    the first Hermite mode, picked up once by q_T and twice by the output (lesson 06's derivation)."""
    q = MIX_1D
    mu = float((q.weights * q.means[:, 0]).sum())
    x = torch.linspace(-12, 12, 200_001, dtype=torch.float64)
    abs_dev = float(((x - mu).abs() * q.log_prob(x[:, None]).exp()).sum() * (x[1] - x[0]))  # E_q |X - mu|
    T = 7.0
    q_T = q.marginal(OUSDE(T), T)
    start = metrics.tv_quadrature(q_T.log_prob, OUSDE().prior_log_prob, 1, (-12, 12))
    output = metrics.tv_quadrature(bounds.reverse_output_log_prob(q, T), q.log_prob, 1, (-12, 12))
    assert start * math.exp(T) == pytest.approx(0.5 * abs(mu) * math.sqrt(2 / math.pi), rel=0.01)  # next mode: e^{-T}
    assert output * math.exp(2 * T) == pytest.approx(0.5 * abs(mu) * abs_dev, rel=0.01)
    # normalised, and never further from q than q_T is from gamma (data processing)
    mass = float(bounds.reverse_output_log_prob(q, 0.5)(x[::10, None]).exp().sum() * (x[10] - x[0]))
    assert mass == pytest.approx(1.0, abs=1e-8)
    q_half = q.marginal(OUSDE(0.5), 0.5)
    assert metrics.tv_quadrature(bounds.reverse_output_log_prob(q, 0.5), q.log_prob, 1, (-12, 12)) < metrics.tv_quadrature(
        q_half.log_prob, OUSDE().prior_log_prob, 1, (-12, 12)
    )


def test_reverse_output_in_2d_integrates_to_one():
    axis = torch.linspace(-8, 8, 121, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    log_prob = bounds.reverse_output_log_prob(MIX_2D, 0.7, nodes=12)(grid)
    assert float(log_prob.exp().sum() * (axis[1] - axis[0]) ** 2) == pytest.approx(1.0, abs=1e-6)


def test_reverse_output_rejects_bad_input():
    with pytest.raises(ValueError, match="1-D or 2-D"):
        bounds.reverse_output_log_prob(GaussianMixture([1.0], torch.zeros(1, 3), torch.ones(1)), 1.0)
    with pytest.raises(ValueError, match="T must be positive"):
        bounds.reverse_output_log_prob(MIX_1D, 0.0)
    with pytest.raises(TypeError, match="dist must be a GaussianMixture"):
        bounds.reverse_output_log_prob("q", 1.0)


@pytest.mark.parametrize("mean, var, T, h", [(0.7, 0.3, 3.0, 0.1), (0.7, 0.3, 2.0, 0.01), (-1.0, 2.0, 2.0, 0.25)])
def test_grid_law_of_a_gaussian_target_is_the_closed_form(mean, var, T, h):
    g = GaussianMixture([1.0], [[mean]], [var], dtype=torch.float64)
    x, density = bounds.grid_integrator_law(g.marginal_score(OUSDE(T)), T, h)
    M, V = bounds.gaussian_integrator_law(mean, var, T, h)
    width = x[1] - x[0]
    assert 0.5 * np.abs(density - stats.norm.pdf(x, M[0], math.sqrt(V[0]))).sum() * width < 1e-6
    assert density.sum() * width == pytest.approx(1.0, abs=1e-5)


def test_grid_law_of_a_mixture_matches_the_sampler():
    T, h, n = 2.0, 0.1, 200_000
    score = MIX_1D.marginal_score(OUSDE(T))
    x, density = bounds.grid_integrator_law(score, T, h)
    width = x[1] - x[0]
    x0 = torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = sampling.exponential_integrator(score, x0, T, h, generator=1)
    mean, second = (density * x).sum() * width, (density * x**2).sum() * width
    assert abs(y.mean().item() - mean) < 4 * math.sqrt((second - mean**2) / n)
    # the grid law's bin masses (its distribution function, interpolated at the bin edges) against the histogram
    edges = np.linspace(-5, 5, 41)
    cdf = np.interp(edges, np.append(x - width / 2, x[-1] + width / 2), np.append(0.0, np.cumsum(density) * width))
    masses = np.diff(cdf)
    counts = np.histogram(y.numpy()[:, 0], edges)[0] / n
    floor = 0.5 * np.sqrt(2 * masses * (1 - masses) / (math.pi * n)).sum()
    spread = 0.5 * math.sqrt((masses * (1 - masses) / n).sum() * (1 - 2 / math.pi))
    assert 0.5 * np.abs(counts - masses).sum() < floor + 4 * spread


def test_grid_law_rejects_bad_input():
    with pytest.raises(ValueError, match="whole number"):
        bounds.grid_integrator_law(lambda x, t: -x, 1.0, 0.3)
    with pytest.raises(TypeError, match="score must be callable"):
        bounds.grid_integrator_law("s", 1.0, 0.1)
    with pytest.raises(ValueError, match="bounds"):
        bounds.grid_integrator_law(lambda x, t: -x, 1.0, 0.1, bounds=(1, -1))
    with pytest.raises(ValueError, match="not finite"):
        bounds.grid_integrator_law(lambda x, t: x * float("nan"), 1.0, 0.1)


def test_path_score_error_is_exact_for_a_constant_shift_and_bounds_the_tv():
    T, h = 2.0, 0.1
    exact = MIX_1D.marginal_score(OUSDE(T))
    shifted = lambda x, t: exact(x, t) + 0.3  # noqa: E731  an error of exactly 0.3 wherever the chain is
    assert bounds.path_score_error(shifted, exact, T, h) == pytest.approx(0.3, rel=1e-6)
    perturbed = bounds.perturbed_score(MIX_1D, OUSDE(T), 0.2)
    eps_path = bounds.path_score_error(perturbed, exact, T, h)
    assert eps_path == pytest.approx(0.2, rel=0.1)  # the chain's laws are close to q_t, where the error is exactly 0.2
    (x, p), (_, r) = bounds.grid_integrator_law(perturbed, T, h), bounds.grid_integrator_law(exact, T, h)
    tv = 0.5 * np.abs(p - r).sum() * (x[1] - x[0])
    assert 0.1 * eps_path < tv < eps_path * math.sqrt(T / 2)  # Girsanov + Pinsker: a theorem for the scheme


def test_windowed_score_switches_at_the_window_and_calls_one_score_for_a_shared_time():
    calls = []
    a = lambda x, t: calls.append("a") or torch.ones_like(x)  # noqa: E731
    b = lambda x, t: calls.append("b") or -torch.ones_like(x)  # noqa: E731
    mixed = bounds.windowed_score(a, b, (0.0, 0.5))
    x = torch.zeros(4, 1)
    torch.testing.assert_close(mixed(x, torch.tensor([0.1, 0.5, 0.6, 2.0])), torch.tensor([[1.0], [1.0], [-1.0], [-1.0]]))
    calls.clear()
    mixed(x, torch.full((4,), 0.2))
    mixed(x, 3.0)
    assert calls == ["a", "b"]
    with pytest.raises(ValueError, match="window"):
        bounds.windowed_score(a, b, (0.5, 0.1))


def test_curvature_range_of_a_gaussian_and_of_a_mixture():
    g = GaussianMixture([1.0], [[0.0]], [0.25], dtype=torch.float64)
    lowest, highest = bounds.score_curvature_range(g, OUSDE(5.0))
    assert lowest == pytest.approx(-4.0) and highest == pytest.approx(-1 / (0.25 * math.exp(-10) + 1 - math.exp(-10)))
    lowest, highest = bounds.score_curvature_range(MIX_1D, OUSDE(5.0))
    assert lowest >= -4.0 - 1e-9  # the first term of the Hessian: at least minus the largest precision
    assert highest > 4.0 and bounds.score_lipschitz(MIX_1D, OUSDE(5.0)) == highest  # L comes from the convex part


def _gaussian_path_kl(mu, s2, T, h):
    """Girsanov's sum for q = N(mu, s2) in closed form: with the linear score -(x - m_u) / v_u, the difference of the
    scores at forward times u and u + delta has variance 1/v_{u+delta} + 1/v_u - 2 e^{-delta} / v_{u+delta}."""
    v = lambda u: s2 * math.exp(-2 * u) + 1 - math.exp(-2 * u)  # noqa: E731
    total = 0.0
    for k in range(round(T / h)):
        frozen = T - k * h
        total += integrate.quad(lambda d, f=frozen: 1 / v(f) + 1 / v(f - d) - 2 * math.exp(-d) / v(f), 0, h)[0]
    return total


@pytest.mark.parametrize("h", [0.2, 0.05])
def test_discretisation_path_kl_of_a_gaussian_is_the_closed_form(h):
    g = GaussianMixture([1.0], [[0.5]], [0.2], dtype=torch.float64)
    estimate = bounds.discretisation_path_kl(g, 2.0, h, n=4000, generator=0)
    assert abs(estimate.value - _gaussian_path_kl(0.5, 0.2, 2.0, h)) < 4 * estimate.se


def test_discretisation_path_kl_is_first_order_in_h_for_a_mixture():
    kl = [bounds.discretisation_path_kl(MIX_1D, 2.0, h, n=1000, generator=1) for h in (0.1, 0.05, 0.025)]
    ratios = [kl[0].value / kl[1].value, kl[1].value / kl[2].value]
    assert all(1.8 < r < 2.2 for r in ratios)  # halving h halves the KL between the paths (the TV bound's sqrt(h))
    with pytest.raises(ValueError, match="whole number"):
        bounds.discretisation_path_kl(MIX_1D, 1.0, 0.3)


def test_grid_tv_against_a_mixture_a_log_density_and_another_law():
    law = bounds.grid_integrator_law(MIX_1D.marginal_score(OUSDE(2.0)), 2.0, 0.1)
    by_mixture = bounds.grid_tv(law, MIX_1D)
    assert by_mixture == pytest.approx(bounds.grid_tv(law, MIX_1D.log_prob), abs=1e-12)
    x, density = law
    q_law = (x, MIX_1D.log_prob(torch.as_tensor(x)[:, None]).exp().numpy())
    assert bounds.grid_tv(law, q_law) == pytest.approx(by_mixture, abs=1e-12)
    assert bounds.grid_tv(law, law) == 0.0
    with pytest.raises(ValueError, match="same cells"):
        bounds.grid_tv(law, (x + 0.01, density))
    with pytest.raises(ValueError, match="law must be"):
        bounds.grid_tv((x, density[:-1]), MIX_1D)


# --- lesson 06's fits, start costs, Euler-Maruyama's law, particles and the variance-ratio TV ---------------------


def test_fitted_exponents_are_exact_on_power_laws_and_exponentials():
    x = np.array([0.1, 0.2, 0.4, 0.8])
    assert bounds.loglog_slope(x, 3 * x**0.5) == pytest.approx(0.5, abs=1e-12)
    assert bounds.decay_rate(np.array([-1.0, 0.0, 2.0]), 2 * np.exp(-1.7 * np.array([-1.0, 0.0, 2.0]))) == pytest.approx(1.7, abs=1e-12)
    with pytest.raises(ValueError, match="y must be finite and positive"):
        bounds.loglog_slope(x, np.array([1.0, 0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="x must be finite, positive"):
        bounds.loglog_slope(-x, x)
    with pytest.raises(ValueError, match="t must be finite and not all equal"):
        bounds.decay_rate([1.0, 1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="one length"):
        bounds.decay_rate([1.0, 2.0, 3.0], [1.0, 2.0])


@pytest.mark.parametrize("mu, s2, T", [(0.7, 0.3, 0.5), (0.0, 2.0, 1.5), (-1.0, 0.25, 3.0)])
def test_start_tv_of_a_gaussian_is_the_closed_form(mu, s2, T):
    g = GaussianMixture([1.0], [[mu]], [s2])  # float32 in: the laws are formed in float64 (no rounding floor at 1e-8)
    noised, output = bounds.start_tv(g, T)
    mu, s2 = float(np.float32(mu)), float(np.float32(s2))  # the parameters as float32 stored them
    v_T = s2 * math.exp(-2 * T) + 1 - math.exp(-2 * T)
    # Gauss-Legendre on |p - q|, which has a kink where the laws cross: measured 3e-5 of the TV at most here
    assert noised == pytest.approx(gaussian_tv(mu * math.exp(-T), v_T, 0.0, 1.0), rel=1e-4)
    mean, var = _reverse_from_prior_gaussian(mu, s2, T)
    assert output == pytest.approx(gaussian_tv(mean, var, mu, s2), rel=1e-4)
    assert output <= noised  # data processing


def test_start_tv_stays_exact_far_below_float32_rounding():
    """The first Hermite mode's constants hold at T = 7, where TV(p_T, q) ~ 1e-7: a law formed in float32 would stop
    falling at ~1e-8 (lesson 06, exercise 1, fits rates down to 1e-12)."""
    q = GaussianMixture([0.3, 0.7], [[-2.0], [1.5]], [0.25, 0.5])  # float32, as the lesson builds it
    mu = 0.45
    x = torch.linspace(-12, 12, 200_001, dtype=torch.float64)
    abs_dev = float(((x - mu).abs() * MIX_1D.log_prob(x[:, None]).exp()).sum() * (x[1] - x[0]))
    for T in (5.0, 8.0):
        noised, output = bounds.start_tv(q, T)
        assert noised * math.exp(T) == pytest.approx(0.5 * mu * math.sqrt(2 / math.pi), rel=2 * math.exp(-T))
        assert output * math.exp(2 * T) == pytest.approx(0.5 * mu * abs_dev, rel=2 * math.exp(-T))
    with pytest.raises(ValueError, match="1-D"):
        bounds.start_tv(MIX_2D, 1.0)
    with pytest.raises(ValueError, match="T must be positive"):
        bounds.start_tv(q, -1.0)


@pytest.mark.parametrize("scheme", ["exponential", "euler_maruyama"])
def test_grid_law_of_either_scheme_is_the_gaussian_closed_form(scheme):
    mean, var, T, h = 0.7, 0.3, 3.0, 0.1
    g = GaussianMixture([1.0], [[mean]], [var], dtype=torch.float64)
    x, density = bounds.grid_integrator_law(g.marginal_score(OUSDE(T)), T, h, scheme=scheme)
    M, V = bounds.gaussian_integrator_law(mean, var, T, h, scheme=scheme)
    assert 0.5 * np.abs(density - stats.norm.pdf(x, M[0], math.sqrt(V[0]))).sum() * (x[1] - x[0]) < 1e-6
    # the midpoint rule's error where the densities cross: ~ |slope of p - q| width^2 / 4 ~ 0.05 * 7e-4 / 4 each
    assert bounds.output_tv(g.marginal_score(OUSDE(T)), T, h, g, scheme=scheme) == pytest.approx(
        gaussian_tv(M[0], V[0], mean, var), abs=2e-5
    )


def test_euler_maruyama_law_is_pc_samples_and_its_stationary_variance():
    """Euler-Maruyama on OUSDE as `pc_sample` runs it (eps = 1e-4 instead of 0: a shift far below the Monte-Carlo
    error) has the closed-form law; for q = gamma (score -x) its variance tends to 2 / (2 - h) = 1 + h/2 + ..., the
    exponential integrator's to (e^h + 1) / (3 - e^h) = 1 + h + ...: freezing the linear part does not double the error."""
    mean, var, T, h, n = 0.7, 0.3, 2.0, 0.1, 200_000
    g = GaussianMixture([1.0], [[mean]], [var], dtype=torch.float64)
    x0 = torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    em = dict(predictor="euler_maruyama", corrector=None, eps=1e-4, denoise=False, generator=1)
    y = sampling.pc_sample(g.marginal_score(OUSDE(T)), OUSDE(T), x0, round(T / h), **em)
    M, V = bounds.gaussian_integrator_law(mean, var, T, h, scheme="euler_maruyama")
    assert abs(y.mean().item() - M[0]) < 4 * math.sqrt(V[0] / n)
    assert abs(y.var().item() - V[0]) < 4 * V[0] * math.sqrt(2 / n)
    _, V_em = bounds.gaussian_integrator_law(0.0, 1.0, 12.0, h, scheme="euler_maruyama")
    _, V_ei = bounds.gaussian_integrator_law(0.0, 1.0, 12.0, h)
    assert V_em[0] == pytest.approx(2 / (2 - h), rel=1e-9) and V_ei[0] == pytest.approx((math.exp(h) + 1) / (3 - math.exp(h)), rel=1e-9)
    with pytest.raises(ValueError, match="scheme must be one of"):
        bounds.gaussian_integrator_law(0.0, 1.0, 1.0, 0.1, scheme="heun")
    with pytest.raises(ValueError, match="scheme must be one of"):
        bounds.grid_integrator_law(lambda x, t: -x, 1.0, 0.1, scheme="euler")


def test_integrator_output_is_one_run_per_seed_and_follows_the_grid_law():
    score = MIX_1D.marginal_score(OUSDE(2.0))
    a = bounds.integrator_output(score, 2.0, 0.1, 50_000, generator=3)
    torch.testing.assert_close(a, bounds.integrator_output(score, 2.0, 0.1, 50_000, generator=3))
    assert a.shape == (50_000, 1) and not torch.equal(a, bounds.integrator_output(score, 2.0, 0.1, 50_000, generator=4))
    x, density = bounds.grid_integrator_law(score, 2.0, 0.1)
    width = x[1] - x[0]
    mean, second = (density * x).sum() * width, (density * x**2).sum() * width
    assert abs(a.mean().item() - mean) < 4 * math.sqrt((second - mean**2) / len(a))
    assert bounds.integrator_output(lambda x, t: -x, 1.0, 0.5, 4, dim=3, generator=0).shape == (4, 3)
    with pytest.raises(ValueError, match="n must be"):
        bounds.integrator_output(score, 2.0, 0.1, 0)


@pytest.mark.parametrize("d", [1, 2, 16, 256])
def test_variance_ratio_tv_is_the_first_order_term_of_the_exact_tv(d):
    for delta in (1e-3, 1e-4):
        exact = gaussian_tv(np.zeros(d), 1 + delta, np.zeros(d), 1.0)
        approx = bounds.variance_ratio_tv(1 + delta, d)
        assert abs(approx / exact - 1) < 20 * delta * math.sqrt(d)  # the next order: relative O(delta sqrt(d))
    mad = stats.chi2(d).expect(lambda v: abs(v - d))  # E|chi^2_d - d| by scipy's integration
    assert bounds.variance_ratio_tv(3.0, d) == pytest.approx(0.5 * mad, rel=1e-7)
    with pytest.raises(ValueError, match="ratio must be positive"):
        bounds.variance_ratio_tv(0.0, d)
