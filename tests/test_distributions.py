"""GaussianMixture against autograd, quadrature and Monte Carlo (tolerances from standard errors)."""

import math

import numpy as np
import pytest
import torch

from scorelab import GaussianMixture, banana_energy, sampling, score_from_energy
from scorelab.datasets import far_apart_mixture, ring_mixture


def random_mixture(seed, K=3, D=2, dtype=torch.float64, cov="full"):
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(K, generator=g, dtype=dtype) + 0.2
    means = 3 * torch.randn(K, D, generator=g, dtype=dtype)
    if cov == "full":
        a = torch.randn(K, D, D, generator=g, dtype=dtype)
        covs = a @ a.transpose(1, 2) + 0.3 * torch.eye(D, dtype=dtype)
    elif cov == "diag":
        covs = torch.rand(K, D, generator=g, dtype=dtype) + 0.3
    else:
        covs = torch.rand(K, generator=g, dtype=dtype) + 0.3
    return GaussianMixture(weights / weights.sum(), means, covs)


@pytest.mark.parametrize("cov", ["full", "diag", "iso"])
@pytest.mark.parametrize("D", [1, 2, 5])
def test_score_equals_autograd_of_log_prob(cov, D):
    mix = random_mixture(seed=D, K=4, D=D, cov=cov)
    x = (mix.sample(200, generator=1) * 1.5).requires_grad_(True)  # also points between and outside modes
    (grad,) = torch.autograd.grad(mix.log_prob(x).sum(), x)
    torch.testing.assert_close(mix.score(x.detach()), grad, rtol=1e-10, atol=1e-10)


def test_log_prob_against_scipy():
    from scipy.stats import multivariate_normal

    mix = random_mixture(seed=3, K=3, D=3)
    x = mix.sample(50, generator=2)
    ref = sum(w.item() * multivariate_normal(m.numpy(), c.numpy()).pdf(x.numpy()) for w, m, c in zip(mix.weights, mix.means, mix.covs))
    np.testing.assert_allclose(mix.log_prob(x).numpy(), np.log(np.asarray(ref)), rtol=1e-10)


def test_log_prob_integrates_to_one_on_a_grid():
    mix = random_mixture(seed=5, K=3, D=2, cov="full")
    half = 3 * mix.covs.diagonal(dim1=1, dim2=2).max().sqrt().item() + mix.means.abs().max().item() + 6
    axis = torch.linspace(-half, half, 801, dtype=torch.float64)
    gx, gy = torch.meshgrid(axis, axis, indexing="ij")
    dens = mix.log_prob(torch.stack([gx.ravel(), gy.ravel()], 1)).exp()
    total = dens.sum().item() * (axis[1] - axis[0]).item() ** 2
    assert total == pytest.approx(1.0, abs=1e-6)


def test_log_prob_is_stable_far_from_the_modes():
    mix = random_mixture(seed=0, K=3, D=2, dtype=torch.float32)
    x = torch.tensor([[1e3, -1e3], [50.0, 50.0]])
    assert torch.isfinite(mix.log_prob(x)).all()
    assert torch.isfinite(mix.score(x)).all()
    torch.testing.assert_close(mix.score(x), mix.to(dtype=torch.float64).score(x.double()).float(), rtol=1e-4, atol=1e-3)


def test_sample_weights_and_moments_within_standard_errors():
    n = 40_000
    mix = random_mixture(seed=7, K=3, D=2)
    x = mix.sample(n, generator=11)
    # mean: each coordinate's sample mean is within 4 SE of the exact mixture mean
    mean = (mix.weights[:, None] * mix.means).sum(0)
    second = (mix.weights[:, None, None] * (mix.covs + mix.means[:, :, None] * mix.means[:, None, :])).sum(0)
    cov = second - mean[:, None] * mean[None, :]
    se = (cov.diagonal() / n).sqrt()
    assert ((x.mean(0) - mean).abs() < 4 * se).all()
    # covariance entries: SE of a sample second moment is sqrt(Var(X_i X_j) / n), estimated from the sample
    centred = x - mean
    prods = centred[:, :, None] * centred[:, None, :]
    se_cov = prods.std(0) / math.sqrt(n)
    assert ((prods.mean(0) - cov).abs() < 4 * se_cov).all()


def test_sample_component_frequencies_match_weights():
    n = 20_000
    mix = far_apart_mixture()  # modes 14 standard deviations apart: the side of x = -y tells the component
    x = mix.sample(n, generator=3)
    frac = (x.sum(1) < 0).double().mean().item()
    assert abs(frac - 0.2) < 4 * math.sqrt(0.2 * 0.8 / n)


def test_same_seed_same_samples():
    mix = ring_mixture()
    torch.testing.assert_close(mix.sample(100, generator=5), mix.sample(100, generator=5), rtol=0, atol=0)
    assert not torch.equal(mix.sample(100, generator=5), mix.sample(100, generator=6))


def test_convolve_and_affine_against_monte_carlo():
    n = 50_000
    mix = random_mixture(seed=2, K=2, D=2)
    scale, noise_std = 0.6, 0.8
    exact = mix.affine(scale, noise_std)
    g = torch.Generator().manual_seed(4)
    y = scale * mix.sample(n, generator=g) + noise_std * torch.randn(n, 2, generator=g, dtype=torch.float64)
    # the exact law's log-density, averaged over its own samples vs over the simulated ones:
    # equal expectations (cross-entropy = entropy) iff the laws agree in this statistic; compare within 4 SE.
    lp_sim, lp_exact = exact.log_prob(y), exact.log_prob(exact.sample(n, generator=5))
    se = math.sqrt(lp_sim.var().item() / n + lp_exact.var().item() / n)
    assert abs(lp_sim.mean().item() - lp_exact.mean().item()) < 4 * se
    # and the first two moments
    assert ((y.mean(0) - exact.sample(n, generator=6).mean(0)).abs() < 4 * (y.var(0) * 2 / n).sqrt()).all()
    # convolve(sigma) is affine(1, sigma): covariances grow by sigma^2 I
    torch.testing.assert_close(mix.convolve(0.5).covs, mix.covs + 0.25 * torch.eye(2, dtype=torch.float64))


def test_affine_composition_is_exact():
    mix = random_mixture(seed=9, K=3, D=2)
    twice = mix.affine(0.5, 0.3).affine(2.0, 0.4)
    once = mix.affine(1.0, math.sqrt((2 * 0.3) ** 2 + 0.4**2))
    torch.testing.assert_close(twice.covs, once.covs)
    torch.testing.assert_close(twice.means, once.means)


def test_tweedie_equals_bayes_posterior_mean():
    mix = random_mixture(seed=4, K=3, D=2)
    sigma = 0.7
    y = mix.sample(500, generator=1) + sigma * torch.randn(500, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    tweedie = y + sigma**2 * mix.convolve(sigma).score(y)
    torch.testing.assert_close(tweedie, mix.posterior_mean(y, sigma), rtol=1e-10, atol=1e-10)


def test_posterior_mean_is_the_mmse_denoiser():
    # Monte Carlo: E[X | y] minimises the squared error; any perturbation increases it
    mix = random_mixture(seed=1, K=2, D=2)
    sigma, n = 1.0, 20_000
    g = torch.Generator().manual_seed(8)
    x = mix.sample(n, generator=g)
    y = x + sigma * torch.randn(n, 2, generator=g, dtype=torch.float64)
    err_bayes = ((mix.posterior_mean(y, sigma) - x) ** 2).sum(1)
    err_shrunk = ((0.9 * mix.posterior_mean(y, sigma) - x) ** 2).sum(1)
    diff = err_shrunk - err_bayes
    assert diff.mean() > 4 * diff.std() / math.sqrt(n)


def test_score_from_energy_ignores_the_normaliser():
    mix = random_mixture(seed=6, K=3, D=2)
    x = mix.sample(100, generator=0)
    s = score_from_energy(lambda x: -mix.log_prob(x) + 123.4)
    torch.testing.assert_close(s(x), mix.score(x))
    with torch.no_grad():
        torch.testing.assert_close(s(x), mix.score(x))


def test_banana_energy_score_closed_form():
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    b = 0.7
    s = score_from_energy(lambda x: banana_energy(x, curvature=b))(x)
    r = x[:, 1] - b * x[:, 0] ** 2
    expected = torch.stack([-x[:, 0] + 2 * b * x[:, 0] * r, -r], 1)
    torch.testing.assert_close(s, expected)


def test_dtype_and_shape_handling():
    mix = ring_mixture(n_modes=4)
    assert mix.dtype == torch.get_default_dtype()
    x64 = torch.zeros(3, 2, dtype=torch.float64)
    assert mix.to(dtype=torch.float64).score(x64).dtype == torch.float64
    assert mix.log_prob(torch.zeros(3, 2)).shape == (3,)
    # an image-shaped batch whose flattened size matches D
    img = GaussianMixture([1.0], torch.zeros(1, 4), [1.0])
    x = torch.randn(5, 1, 2, 2)
    torch.testing.assert_close(img.score(x), -x)


@pytest.mark.parametrize("D, K", [(1, 2), (2, 8), (5, 3)])
@pytest.mark.parametrize("structure", ["diagonal", "diagonal, shared", "isotropic", "isotropic, equal"])
def test_fast_paths_equal_the_whitened_and_per_sample_paths(D, K, structure):
    """Isotropic and diagonal covariances take their own shared-noise score path (`_separable_score`: matrix
    products and an exp; with one covariance for all components the squares drop out): the same numbers as the
    whitened path that full covariances take, and as the per-sample path."""
    g = torch.Generator().manual_seed(D)
    variances = {
        "diagonal": 0.2 + torch.rand(K, D, generator=g),
        "diagonal, shared": (0.2 + torch.rand(1, D, generator=g)).expand(K, D),
        "isotropic": 0.2 + torch.rand(K, generator=g),
        "isotropic, equal": torch.full((K,), 0.7),
    }[structure]
    mix = GaussianMixture(torch.full((K,), 1 / K), torch.randn(K, D, generator=g, dtype=torch.float64), variances)
    assert (mix._isotropic_variances is not None) == structure.startswith("isotropic") or D == 1
    assert mix._diagonal_variances is not None
    assert mix._shared_covariance == (structure.endswith(("shared", "equal")) or K == 1)
    assert GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.5], [0.5, 1.0]]])._diagonal_variances is None
    # 100 points far out: there some logits lie more than 80 below the largest and are floored before exp
    x = torch.cat([2 * torch.randn(400, D, generator=g, dtype=torch.float64), 30 * torch.randn(100, D, generator=g, dtype=torch.float64)])
    fast = mix._shared_affine_score(x, 0.7, 0.4)
    per_sample = mix._affine_score(x, torch.full((500,), 0.7, dtype=torch.float64), torch.full((500,), 0.4, dtype=torch.float64))
    # differentiable (the ODE likelihood takes the divergence of this score by autograd)
    assert torch.autograd.gradcheck(lambda v: mix._shared_affine_score(v, 0.7, 0.4), x[[0, 1, 400, 401]].clone().requires_grad_())
    mix._isotropic_variances = mix._diagonal_variances = None  # force the whitened path
    torch.testing.assert_close(fast, mix._shared_affine_score(x, 0.7, 0.4), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast, per_sample, rtol=1e-10, atol=1e-12)


def test_a_level_expanded_from_one_value_is_read_once_and_still_checked():
    """Samplers pass their level as one value expanded to the batch (stride 0): the score reads that value once
    instead of scanning the batch, gives the numbers a full batch gives, and a bad value is still a clear error."""
    mix = GaussianMixture([0.3, 0.7], [[-1.0, 0.0], [2.0, 1.0]], [0.5, 0.8], dtype=torch.float64)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shared = torch.full((1,), 0.6, dtype=torch.float64).expand(50)
    torch.testing.assert_close(mix.noisy_score(x, shared), mix.noisy_score(x, torch.full((50,), 0.6, dtype=torch.float64)))
    torch.testing.assert_close(mix.noisy_score(x, shared), mix.convolve(0.6).score(x))
    for bad in (float("nan"), -0.6, 0.0):
        with pytest.raises(ValueError, match="sigma must be positive"):
            mix.noisy_score(x, torch.full((1,), bad, dtype=torch.float64).expand(50))


def test_inside_a_sampler_step_scores_skip_their_nan_scan_and_the_sampler_still_reports():
    """`values_checked_by_caller` turns off check_tensor's NaN scan (and only that): the samplers' own checks stand in
    for it, so NaN particles still end in the sampler's DivergenceError, naming the steps."""
    from scorelab._checks import values_checked_by_caller

    mix = GaussianMixture([1.0], [[0.0, 0.0]], [1.0])
    x = torch.tensor([[float("nan"), 0.0], [1.0, 1.0]])
    with pytest.raises(ValueError, match="x contains NaN"):
        mix.score(x)
    with values_checked_by_caller():
        assert torch.isnan(mix.score(x)[0]).all()
        with pytest.raises(TypeError, match="x must be a floating-point tensor"):
            mix.score(x.long())
    with pytest.raises(ValueError, match="x contains NaN"):  # the block ended: the scan is back
        mix.score(x)
    with pytest.raises(sampling.DivergenceError, match="at one of steps 0-9"):
        sampling.annealed_langevin(lambda v, s: mix.score(v) + 1e30 * v**3, torch.ones(4, 2), torch.tensor([1.0, 0.5]), 1.0, 10)
