"""Each loss against a case with an analytic value, and the identities between them.

Linear score models s(x) = A x + b on Gaussian data N(mu, Sigma) have closed-form
per-sample losses; the identities (ISM - ESM, DSM - ESM_sigma) hold in expectation and
are tested within 4 standard errors.
"""

import math

import pytest
import torch

from scorelab import GaussianMixture, ScoreMLP, losses
from scorelab.metrics import fisher_divergence

D = 3


class Linear(torch.nn.Module):
    def __init__(self, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = torch.nn.Parameter(torch.randn(D, D, generator=g, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.randn(D, generator=g, dtype=torch.float64))

    def forward(self, x):
        return x @ self.A.T + self.b


@pytest.fixture(scope="module")
def gaussian():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(D, D, generator=g, dtype=torch.float64)
    cov = a @ a.T + 0.5 * torch.eye(D, dtype=torch.float64)
    return GaussianMixture([1.0], torch.randn(1, D, generator=g, dtype=torch.float64), cov[None])


def mlp(seed):
    torch.manual_seed(seed)
    return ScoreMLP(D, hidden=32, n_layers=2).double()


def test_esm_per_sample_closed_form(gaussian):
    model = Linear(1)
    x = gaussian.sample(100, generator=1)
    expected = 0.5 * ((model(x) - gaussian.score(x)) ** 2).sum(1)
    torch.testing.assert_close(losses.esm(model, x, gaussian.score, reduction="none"), expected)
    torch.testing.assert_close(losses.esm(model, x, gaussian.score), expected.mean())


def test_esm_expectation_is_half_the_fisher_divergence(gaussian):
    model = Linear(2)
    P = torch.linalg.inv(gaussian.covs[0])
    M, c = model.A.detach() + P, model.b.detach() - P @ gaussian.means[0]
    # E||M x + c||^2 = tr(M Sigma M^T) + ||M mu + c||^2
    exact = (torch.trace(M @ gaussian.covs[0] @ M.T) + ((M @ gaussian.means[0] + c) ** 2).sum()).item()
    est = fisher_divergence(model, gaussian, n=50_000, generator=3)
    assert abs(est.value - exact) < 4 * est.se
    x = gaussian.sample(50_000, generator=3)
    assert losses.esm(model, x, gaussian.score).item() == pytest.approx(est.value / 2, rel=1e-10)


def test_ism_per_sample_is_trace_plus_half_norm(gaussian):
    model = Linear(3)
    x = gaussian.sample(64, generator=2)
    expected = torch.trace(model.A).detach() + 0.5 * (model(x).detach() ** 2).sum(1)
    torch.testing.assert_close(losses.ism(model, x, reduction="none").detach(), expected)


def test_ism_trace_of_a_nonlinear_model_against_jacobian():
    model = mlp(0)
    x = torch.randn(5, D, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    traces = torch.stack([torch.trace(torch.autograd.functional.jacobian(lambda v: model(v[None])[0], xi)) for xi in x])
    expected = traces + 0.5 * (model(x) ** 2).sum(1)
    torch.testing.assert_close(losses.ism(model, x, reduction="none").detach(), expected.detach())


def test_ism_minus_esm_is_minus_half_expected_squared_score(gaussian):
    # E[ISM - ESM] = -1/2 E||grad log p||^2 = -1/2 tr(Sigma^{-1}) for a Gaussian, whatever the model
    const = -0.5 * torch.trace(torch.linalg.inv(gaussian.covs[0])).item()
    x = gaussian.sample(40_000, generator=5)
    for model in (Linear(4), mlp(1), mlp(2)):
        diff = (losses.ism(model, x, reduction="none") - losses.esm(model, x, gaussian.score, reduction="none")).detach()
        assert abs(diff.mean().item() - const) < 4 * diff.std().item() / math.sqrt(len(x))


@pytest.mark.parametrize("projection", ["gaussian", "rademacher"])
@pytest.mark.parametrize("variance_reduction", [False, True])
def test_ssm_expectation_over_projections_equals_ism(gaussian, projection, variance_reduction):
    model = mlp(3)
    x = gaussian.sample(4, generator=6)
    n_v = 20_000
    # one projection per copy of each point: iid draws of the per-projection value, hence an SE
    rep = x.repeat_interleave(n_v, dim=0)
    vals = losses.ssm(model, rep, projection=projection, variance_reduction=variance_reduction, generator=7, reduction="none").detach()
    vals = vals.reshape(len(x), n_v)
    ism = losses.ism(model, x, reduction="none").detach()
    se = vals.std(1) / math.sqrt(n_v)
    assert ((vals.mean(1) - ism).abs() < 4 * se + 1e-12).all()


def test_ssm_rademacher_with_variance_reduction_is_exact_for_diagonal_jacobians():
    # v^T diag(a) v = sum(a) for v in {-1, 1}^D: every projection gives the exact ISM value
    class Diag(torch.nn.Module):
        def forward(self, x):
            return torch.tanh(x) - x**3

    x = torch.randn(32, D, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = losses.ssm(Diag(), x, projection="rademacher", variance_reduction=True, generator=1, reduction="none")
    torch.testing.assert_close(a, losses.ism(Diag(), x, reduction="none"))


def test_ssm_more_projections_reduce_variance(gaussian):
    model = mlp(4)
    x = gaussian.sample(256, generator=8)
    one = torch.stack([losses.ssm(model, x, n_projections=1, generator=s).detach() for s in range(40)])
    many = torch.stack([losses.ssm(model, x, n_projections=8, generator=s).detach() for s in range(40)])
    assert many.var() < one.var() / 2  # 8x fewer projection noise in expectation; factor 2 leaves room for the data term


def test_dsm_per_sample_with_given_noise(gaussian):
    model = Linear(5)
    x = gaussian.sample(50, generator=9)
    z = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(1))
    sigma = 0.3
    expected = 0.5 * ((model(x + sigma * z) + z / sigma) ** 2).sum(1)
    torch.testing.assert_close(losses.dsm(model, x, sigma, noise=z, reduction="none"), expected)


def test_dsm_minus_esm_on_the_noised_density_is_constant(gaussian):
    # E[DSM(s) - ESM_sigma(s)] = 1/2 (D / sigma^2 - E||grad log p_sigma||^2), the same for every model
    sigma, n = 0.5, 40_000
    noisy = gaussian.convolve(sigma)
    const = 0.5 * (D / sigma**2 - torch.trace(torch.linalg.inv(noisy.covs[0])).item())
    x = gaussian.sample(n, generator=10)
    z = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(11))
    diffs = []
    for model in (Linear(6), mlp(5), mlp(6)):
        d = losses.dsm(model, x, sigma, noise=z, reduction="none") - losses.esm(model, x + sigma * z, noisy.score, reduction="none")
        diffs.append(d.detach())
        assert abs(d.mean().item() - const) < 4 * d.std().item() / math.sqrt(n)
    paired = diffs[1] - diffs[2]  # common random numbers: the model-dependent part has mean zero
    assert abs(paired.mean().item()) < 4 * paired.std().item() / math.sqrt(n)


def test_dsm_is_minimised_by_the_noised_score(gaussian):
    sigma = 0.4
    noisy = gaussian.convolve(sigma)
    x = gaussian.sample(20_000, generator=12)
    z = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(13))
    best = losses.dsm(noisy.score, x, sigma, noise=z, reduction="none")
    clean = losses.dsm(gaussian.score, x, sigma, noise=z, reduction="none")
    diff = clean - best
    assert diff.mean() > 4 * diff.std() / math.sqrt(len(x))


def test_ncsn_closed_form_for_standard_normal_data():
    # p = N(0, I), s(x, sigma) = -x / (1 + sigma^2) exactly; then sigma s + z = (z - sigma x) / (1 + sigma^2)
    # and E 1/2||.||^2 = D / (2 (1 + sigma^2)), averaged over the uniformly drawn level.
    sigmas = torch.tensor([0.1, 0.5, 1.0, 3.0], dtype=torch.float64)
    n = 40_000
    x = torch.randn(n, D, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    vals = losses.ncsn(lambda x, s: -x / (1 + s[:, None] ** 2), x, sigmas, generator=1, reduction="none")
    expected = (D / (2 * (1 + sigmas**2))).mean().item()
    assert abs(vals.mean().item() - expected) < 4 * vals.std().item() / math.sqrt(n)


@pytest.mark.parametrize("name", ["ism", "ssm", "dsm"])
def test_losses_are_shape_agnostic(name):
    model = mlp(7).float()
    x_flat = torch.randn(16, D + 1, generator=torch.Generator().manual_seed(0))[:, :D]
    x_img = x_flat.reshape(16, 1, 1, D)

    def image_model(x):
        return model(x.reshape(len(x), -1)).reshape(x.shape)

    call = {
        "ism": lambda s, x: losses.ism(s, x),
        "ssm": lambda s, x: losses.ssm(s, x, generator=3),
        "dsm": lambda s, x: losses.dsm(s, x, 0.2, generator=3),
    }[name]
    torch.testing.assert_close(call(image_model, x_img), call(model, x_flat))


def test_losses_backpropagate_to_parameters(gaussian):
    model = mlp(8)
    x = gaussian.sample(32, generator=0)
    for loss in (losses.ism(model, x), losses.ssm(model, x, generator=0), losses.dsm(model, x, 0.1, generator=0)):
        model.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# --- energy-based models (lesson 08) ------------------------------------------------------------------------------


class _GaussianEnergy1D(torch.nn.Module):
    """E(x) = (x - mu)^2 / (2 s^2) with parameters mu and log s: the NLL and its gradient are known in closed form."""

    def __init__(self, mu, log_s):
        super().__init__()
        self.mu = torch.nn.Parameter(torch.tensor(mu, dtype=torch.float64))
        self.log_s = torch.nn.Parameter(torch.tensor(log_s, dtype=torch.float64))

    def forward(self, x):
        return 0.5 * ((x[:, 0] - self.mu) / self.log_s.exp()) ** 2


class _FlatEnergy(torch.nn.Module):
    """E = 0 (score 0): Langevin chains are pure Gaussian random walks, x + sqrt(2 eps) (z_1 + ... + z_k)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x):
        return self.w * 0.0 * x.sum(1)


def test_quadrature_nll_is_the_exact_nll_and_its_gradient_the_mle_gradient():
    """For a Gaussian energy the box-normalised NLL is mean (x - mu)^2 / (2 s^2) + log(sqrt(2 pi) s) (the box holds the
    mass to 1e-20), and its gradient (-(x_bar - mu) / s^2, 1 - mean (x - mu)^2 / s^2): the exact model term."""
    mu, s = 0.5, 1.5
    energy = _GaussianEnergy1D(mu, math.log(s))
    x = 1.2 + 0.8 * torch.randn(256, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    nll = losses.quadrature_nll(energy, x, bounds=(-15.0, 15.0), cells=10)
    nll.backward()
    exact = ((x - mu) ** 2).mean() / (2 * s**2) + 0.5 * math.log(2 * math.pi) + math.log(s)
    assert nll.item() == pytest.approx(exact.item(), abs=1e-10)
    grad = torch.stack([energy.mu.grad, energy.log_s.grad])
    exact_grad = torch.stack([-(x.mean() - mu) / s**2, 1 - ((x - mu) ** 2).mean() / s**2])
    assert torch.allclose(grad, exact_grad, atol=1e-10)


def test_quadrature_nll_of_a_normalised_mixture_is_its_mean_negative_log_density():
    mix = GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [2.0, -1.0]], [0.5, 0.3], dtype=torch.float64)
    x = mix.sample(100, generator=1)
    nll = losses.quadrature_nll(lambda v: -mix.log_prob(v), x, bounds=(-8.0, 8.0), cells=16)  # 1-wide cells: ~1e-12 (2-wide: 3e-8)
    assert nll.item() == pytest.approx(-mix.log_prob(x).mean().item(), abs=1e-9)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda e, x: losses.quadrature_nll(e, x + 20.0, bounds=(-8.0, 8.0)), "outside bounds"),
        (lambda e, x: losses.quadrature_nll(e, torch.zeros(4, 3), bounds=(-8.0, 8.0)), "shape"),
        (lambda e, x: losses.quadrature_nll(lambda v: v, x, bounds=(-8.0, 8.0)), "energy"),
        (lambda e, x: losses.quadrature_nll(e, x, bounds=(1.0, -1.0)), "bounds"),
        (lambda e, x: losses.ContrastiveDivergence(3, 0.1, "noise"), "init"),
    ],
)
def test_energy_losses_refuse_bad_input(call, match):
    energy, x = _GaussianEnergy1D(0.0, 0.0), torch.zeros(4, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        call(energy, x)


def test_cd_from_data_starts_every_chain_at_its_data_point():
    """init="data" (Hinton's CD-k): with a flat energy a chain is its data point plus k Langevin noise steps, so the
    displacement is N(0, 2 eps k) per coordinate and independent of the point (4-SE tolerances)."""
    eps, k, n = 0.02, 5, 4000
    x = 3.0 * torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cd = losses.ContrastiveDivergence(k, eps, "data")
    loss = cd(_FlatEnergy(), x, torch.Generator().manual_seed(1))
    assert loss.item() == 0.0 and cd.chains is None
    step = (cd.last_samples - x).reshape(-1)
    variance = 2 * eps * k
    assert abs(step.mean().item()) < 4 * math.sqrt(variance / step.numel())
    assert abs(step.var().item() / variance - 1) < 4 * math.sqrt(2 / step.numel())
    assert abs(torch.corrcoef(torch.stack([x.reshape(-1), step]))[0, 1].item()) < 4 / math.sqrt(step.numel())


def test_persistent_chains_restarted_from_data_restart_at_the_batch():
    """persistent=True with init="data": a restarted chain begins at the current batch, a kept one where it stopped."""
    eps, x = 1e-6, torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    all_restart = losses.ContrastiveDivergence(1, eps, "data", persistent=True, reinit=1.0)
    all_restart(_FlatEnergy(), x, torch.Generator().manual_seed(1))
    all_restart(_FlatEnergy(), x + 10.0, torch.Generator().manual_seed(2))
    assert (all_restart.chains - (x + 10.0)).abs().max() < 0.01
    none_restart = losses.ContrastiveDivergence(1, eps, "data", persistent=True, reinit=0.0)
    none_restart(_FlatEnergy(), x, torch.Generator().manual_seed(1))
    none_restart(_FlatEnergy(), x + 10.0, torch.Generator().manual_seed(2))
    assert (none_restart.chains - x).abs().max() < 0.01


@pytest.mark.parametrize("dim", [1, 3, 7])
def test_count_backward_passes_ism_is_d_plus_one_ssm_two(dim):
    torch.manual_seed(0)
    model = ScoreMLP(dim, hidden=16, n_layers=2)
    x = torch.randn(5, dim)
    assert losses.count_backward_passes(model, lambda: losses.ism(model, x).backward()) == dim + 1
    ssm_step = lambda: losses.ssm(model, x, generator=0).backward()  # noqa: E731
    assert losses.count_backward_passes(model, ssm_step) == 2
    four = lambda: losses.ssm(model, x, n_projections=4, generator=0).backward()  # noqa: E731
    assert losses.count_backward_passes(model, four) == 2  # the projections are batched in one pass
    assert losses.count_backward_passes(model, lambda: None) == 0
    # the hook is removed afterwards, also when step raises
    with pytest.raises(RuntimeError):
        losses.count_backward_passes(model, lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert not model.net[0]._backward_pre_hooks


def test_count_backward_passes_bad_input():
    with pytest.raises(TypeError, match="model"):
        losses.count_backward_passes(lambda x: x, lambda: None)
    with pytest.raises(TypeError, match="step"):
        losses.count_backward_passes(ScoreMLP(2, hidden=4, n_layers=1), None)
    with pytest.raises(ValueError, match="Linear"):
        losses.count_backward_passes(torch.nn.Tanh(), lambda: None)


def test_count_flops_matches_the_closed_form_of_a_linear_layer():
    # y = x W^T + b for x (n, k), W (m, k): forward 2nkm; backward 2nkm for dL/dx and 2nkm for dL/dW
    n, k, m = 7, 5, 3
    layer = torch.nn.Linear(k, m)
    x = torch.randn(n, k, requires_grad=True)
    assert losses.count_flops(lambda: layer(x)) == 2 * n * k * m
    assert losses.count_flops(lambda: layer(x).sum().backward()) == 3 * 2 * n * k * m
    with torch.no_grad():
        assert losses.count_flops(lambda: torch.tanh(x)) == 0  # elementwise: not counted
    # matrix-vector and dot products, which PyTorch's own table leaves out
    w, v = torch.randn(40, 50), torch.randn(50)
    assert losses.count_flops(lambda: w @ v) == 2 * 40 * 50
    assert losses.count_flops(lambda: torch.addmv(torch.randn(40), w, v)) == 2 * 40 * 50
    assert losses.count_flops(lambda: v @ v) == 2 * 50
    # a batched product and a convolution, by PyTorch's formulas
    a, b = torch.randn(3, 4, 5), torch.randn(3, 5, 6)
    assert losses.count_flops(lambda: a @ b) == 2 * 3 * 4 * 5 * 6
    conv, image = torch.nn.Conv2d(2, 3, 3, padding=1, bias=False), torch.randn(1, 2, 8, 8)
    with torch.no_grad():
        assert losses.count_flops(lambda: conv(image)) == 2 * 3 * 2 * 9 * 8 * 8
    assert losses.count_flops(lambda: None) == 0


def test_count_flops_sees_create_graph_passes_and_the_backward_through_them():
    # ISM's step: the D trace passes (create_graph) and the parameters' backward through their graphs,
    # so the backward's share grows with D (what lesson 02 asserts); FlopCounterMode raises here
    counts = {}
    for dim in (2, 8):
        torch.manual_seed(0)
        model = ScoreMLP(dim, hidden=16, n_layers=2)
        x = torch.randn(5, dim)
        loss_only = losses.count_flops(lambda m=model, x=x: losses.ism(m, x))
        step = losses.count_flops(lambda m=model, x=x: losses.ism(m, x).backward())
        assert 0 < loss_only < step
        counts[dim] = (loss_only, step - loss_only)
    assert counts[8][1] / counts[2][1] > 3  # the backward grows about like D (4x here)
    with pytest.raises(TypeError, match="step"):
        losses.count_flops(None)
    with pytest.raises(RuntimeError, match="boom"):  # errors in step pass through
        losses.count_flops(lambda: (_ for _ in ()).throw(RuntimeError("boom")))
