"""metrics.denoising_mmse (lesson 01) and metrics.eyring_kramers_rate (lesson 03) against closed forms."""

import math

import pytest
import torch

from scorelab import GaussianMixture
from scorelab.metrics import denoising_mmse, eyring_kramers_rate


def test_denoising_mmse_of_a_gaussian_is_the_closed_form():
    cov = torch.tensor([[2.0, 1.2], [1.2, 1.0]], dtype=torch.float64)
    sigma = 0.7
    eye = torch.eye(2, dtype=torch.float64)
    closed = torch.trace(sigma**2 * cov @ torch.linalg.inv(cov + sigma**2 * eye)).item()
    dist = GaussianMixture([1.0], [[0.5, -0.3]], cov[None], dtype=torch.float64)
    assert abs(denoising_mmse(dist, sigma) - closed) < 1e-9


def test_denoising_mmse_of_disjoint_components_is_their_weighted_sum_and_of_overlap_is_larger():
    # modes 40 apart: the posterior never mixes them, so the MMSE is the weighted per-component closed form
    covs = torch.tensor([[1.0], [0.25]], dtype=torch.float64)[:, :, None]
    far = GaussianMixture([0.3, 0.7], [[-20.0], [20.0]], covs, dtype=torch.float64)
    sigma = 1.0
    per = [c / (c + sigma**2) * sigma**2 for c in (1.0, 0.25)]
    assert abs(denoising_mmse(far, sigma, bounds=(-40, 40), cells=200) - (0.3 * per[0] + 0.7 * per[1])) < 1e-9
    # modes 1 apart: not knowing the component adds error
    near = GaussianMixture([0.3, 0.7], [[-0.5], [0.5]], covs, dtype=torch.float64)
    assert denoising_mmse(near, sigma) > 0.3 * per[0] + 0.7 * per[1] + 1e-3


def test_denoising_mmse_equals_tweedies_monte_carlo_error_within_its_se():
    dist = GaussianMixture([0.5, 0.5], [[-1.5, 0.0], [1.5, 0.5]], [0.5, 1.0], dtype=torch.float64)
    sigma, n = 1.0, 40_000
    g = torch.Generator().manual_seed(0)
    x = dist.sample(n, generator=g)
    y = x + sigma * torch.randn(x.shape, generator=g, dtype=torch.float64)
    err = ((dist.posterior_mean(y, sigma) - x) ** 2).sum(1)
    assert abs(err.mean().item() - denoising_mmse(dist, sigma)) < 4 * err.std().item() / math.sqrt(n)


def double_well(c):
    # U = (x^2 - 1)^2 + c y^2 / 2: minima (±1, 0), Hess diag(8, c); saddle (0, 0), Hess diag(-4, c); barrier 1
    return lambda v: (v[:, 0] ** 2 - 1) ** 2 + 0.5 * c * v[:, 1] ** 2


@pytest.mark.parametrize("c", [0.5, 3.0])
def test_eyring_kramers_rate_of_a_double_well_is_the_closed_form(c):
    k = eyring_kramers_rate(double_well(c), [0.8, 0.1], [0.15, -0.2])  # rough starts, refined by Newton
    closed = 4 / (2 * math.pi) * math.sqrt(8 * c / (4 * c)) * math.exp(-1.0)
    assert abs(k.rate - closed) < 1e-10 * closed
    assert abs(k.barrier - 1.0) < 1e-12 and abs(k.unstable_eigenvalue + 4) < 1e-10
    assert torch.allclose(k.minimum, torch.tensor([1.0, 0.0], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(k.saddle, torch.zeros(2, dtype=torch.float64), atol=1e-12)


def test_eyring_kramers_rate_in_one_dimension_is_kramers_formula():
    # U = x^4/4 - x^2/2: U''(±1) = 2, U''(0) = -1, barrier 1/4
    k = eyring_kramers_rate(lambda v: v[:, 0] ** 4 / 4 - v[:, 0] ** 2 / 2, [1.2], [0.1])
    assert abs(k.rate - math.sqrt(2 * 1) / (2 * math.pi) * math.exp(-0.25)) < 1e-12


def test_eyring_kramers_rate_refuses_points_of_the_wrong_kind():
    with pytest.raises(ValueError, match="minimum: the Hessian"):
        eyring_kramers_rate(double_well(1.0), [0.0, 0.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="saddle: the Hessian"):
        eyring_kramers_rate(double_well(1.0), [1.0, 0.0], [-1.0, 0.0])
    with pytest.raises(ValueError, match="minimum and saddle"):
        eyring_kramers_rate(double_well(1.0), [1.0, 0.0], [0.0])
    with pytest.raises(TypeError, match="energy"):
        eyring_kramers_rate(3.0, [1.0, 0.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="sigma"):
        denoising_mmse(GaussianMixture([1.0], [[0.0]], [1.0]), -1.0)


def test_fisher_quadrature_is_the_closed_form_for_a_shift_and_the_monte_carlo_value_for_a_mixture():
    from scorelab.metrics import fisher_divergence, fisher_quadrature

    cov = torch.tensor([[2.0, 1.2], [1.2, 1.0]], dtype=torch.float64)
    p = GaussianMixture([1.0], [[0.0, 0.0]], cov[None]).to(dtype=torch.float64)
    q = GaussianMixture([1.0], [[1.5, 0.0]], cov[None]).to(dtype=torch.float64)
    # the stored covariance (built in float32, then cast): the closed form with exactly that matrix
    exact = (torch.linalg.solve(p.covs[0], torch.tensor([1.5, 0.0], dtype=torch.float64)) ** 2).sum().item()
    assert abs(fisher_quadrature(q.score, p) - exact) < 1e-9 * exact
    mix = GaussianMixture([0.2, 0.8], [[-1.0], [1.0]], [1.0, 1.0]).to(dtype=torch.float64)
    even = GaussianMixture([0.5, 0.5], mix.means, mix.covs).to(dtype=torch.float64)
    mc = fisher_divergence(even.score, mix, n=40_000, generator=0)
    assert abs(fisher_quadrature(even.score, mix, bounds=(-12, 12), cells=200) - mc.value) < 4 * mc.se
    with pytest.raises(ValueError, match="bounds"):
        fisher_quadrature(even.score, mix, bounds=(1, -1))
    with pytest.raises(TypeError, match="dist"):
        fisher_quadrature(even.score, "p")
