"""Lesson 06's tools against closed forms: the exponential integrator, exact Gaussian TV and KL, Monte-Carlo TV and KL,
the bound's constants (L, m_2, KL to N(0, I)), scores with a chosen error, and the 1-D grid TV."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

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
