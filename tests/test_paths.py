"""Gaussian paths, the exact mixture fields on them and the conversions between predictions (lesson 10), against
closed forms to round-off."""

import math

import pytest
import torch

from scorelab import OUSDE, VESDE, VPSDE, GaussianMixture, LinearPath, ScoreMLP, SubVPSDE, losses, paths, sampling
from scorelab.sde import CosinePath, probability_flow_drift

PATHS = [LinearPath(), VPSDE(), SubVPSDE(), VESDE(sigma_min=0.01, sigma_max=5.0), OUSDE(2.0), CosinePath()]
SDES = PATHS[1:5]
# two components with full, different covariances: no shortcut of the mixture code applies
MIXTURE = GaussianMixture(
    [0.3, 0.7], [[-1.0, 0.5], [1.5, -0.5]], [[[0.5, 0.2], [0.2, 0.3]], [[0.2, -0.05], [-0.05, 0.4]]], dtype=torch.float64
)


def _points(n=64, seed=0):
    return 2 * torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _times(path, n=64, seed=1):
    """Per-sample times inside (0.02 T, 0.98 T): away from t = 0, where sigma_dot of an SDE is infinite."""
    u = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return path.T * (0.02 + 0.96 * u)


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_coefficient_derivatives_are_those_of_the_coefficients(path):
    """alpha_dot, sigma_dot (for an SDE worked out from f and g by the moment equations) equal autograd's d/dt of
    alpha(t), sigma(t) to round-off."""
    t = _times(path).requires_grad_(True)
    for coefficient, derivative in zip(path.marginal_coeffs(t), path.marginal_coeffs_dot(t.detach())):
        exact = torch.autograd.grad(coefficient.sum(), t, retain_graph=True)[0] if coefficient.requires_grad else torch.zeros_like(t)
        torch.testing.assert_close(derivative, exact, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_time_of_half_log_snr_inverts_it(path):
    t = _times(path)
    torch.testing.assert_close(path.time_of_half_log_snr(path.half_log_snr(t)), t, rtol=0, atol=1e-13)


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_posterior_means_add_up_to_x(path):
    """alpha E[x0 | x] + sigma E[eps | x] = x: the identity every conversion rests on."""
    x, t = _points(), _times(path)
    x0, eps = paths.mixture_posterior(MIXTURE, path, x, t)
    alpha, sigma = path.marginal_coeffs(t)
    torch.testing.assert_close(alpha[:, None] * x0 + sigma[:, None] * eps, x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", [LinearPath(), VPSDE()], ids=repr)
def test_single_gaussian_fields_match_the_closed_form(path):
    """For x0 ~ N(mu, s^2 I): E[x0 | x_t] = mu + alpha s^2 (x - alpha mu) / v with v = alpha^2 s^2 + sigma^2, the
    score -(x - alpha mu) / v, and the velocity u = alpha_dot E[x0 | x] + sigma_dot E[eps | x]; also at the linear
    path's ends t = 0 and t = 1 (alpha = 0), where no conversion can divide."""
    mu, s2 = torch.tensor([0.7, -1.2], dtype=torch.float64), 0.3
    gaussian = GaussianMixture([1.0], mu[None], [s2], dtype=torch.float64)
    x = _points()
    t = torch.cat([_times(path)[:-2], torch.tensor([0.0, path.T], dtype=torch.float64)]) if isinstance(path, LinearPath) else _times(path)
    alpha, sigma = (c[:, None] for c in path.marginal_coeffs(t))
    alpha_dot, sigma_dot = (c[:, None] for c in path.marginal_coeffs_dot(t))
    v = alpha**2 * s2 + sigma**2
    x0 = mu + alpha * s2 * (x - alpha * mu) / v
    eps = sigma * (x - alpha * mu) / v
    torch.testing.assert_close(paths.mixture_field(gaussian, path, "x0")(x, t), x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(paths.mixture_field(gaussian, path, "eps")(x, t), eps, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        paths.mixture_field(gaussian, path, "velocity")(x, t), alpha_dot * x0 + sigma_dot * eps, rtol=1e-12, atol=1e-12
    )
    inner = slice(0, -2) if isinstance(path, LinearPath) else slice(None)  # the score needs sigma > 0
    torch.testing.assert_close(
        paths.mixture_field(gaussian, path, "score")(x[inner], t[inner]), -((x - alpha * mu) / v)[inner], rtol=1e-12, atol=1e-12
    )


def test_ve_posterior_mean_is_the_mixtures_bayes_posterior_mean():
    """On VE (alpha = 1) E[x0 | x_t] is `GaussianMixture.posterior_mean` at noise sigma(t), computed with the
    precisions rather than eigenvectors: two codes, one answer."""
    path, x = VESDE(sigma_min=0.01, sigma_max=5.0), _points()
    for t in (0.1, 0.5, 0.9):
        sigma = path.marginal_coeffs(t)[1].item()
        torch.testing.assert_close(paths.mixture_field(MIXTURE, path, "x0")(x, t), MIXTURE.posterior_mean(x, sigma), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_sde_velocity_is_the_probability_flow_drift_and_score_the_exact_score(sde):
    """For an SDE path the marginal velocity is f x - g^2 s / 2 (Song et al. 2021, Eq. 13) with the exact score of
    `GaussianMixture.marginal_score`, and the path's score is that score: three codes, one field."""
    x, t = _points(), _times(sde)
    exact_score = MIXTURE.marginal_score(sde)
    torch.testing.assert_close(paths.mixture_field(MIXTURE, sde, "score")(x, t), exact_score(x, t), rtol=1e-10, atol=1e-10)
    drift = probability_flow_drift(sde, exact_score, x, t)
    torch.testing.assert_close(paths.mixture_field(MIXTURE, sde, "velocity")(x, t), drift, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("path", [LinearPath(), VPSDE(), VESDE(sigma_min=0.01, sigma_max=5.0)], ids=repr)
def test_velocity_solves_the_continuity_equation(path):
    """d/dt log p_t + div u_t + u_t . grad log p_t = 0 (the continuity equation divided by p_t), with d/dt log p_t by
    a central difference of the exact marginal mixture (step 1e-5: truncation ~1e-10, round-off ~1e-11) and the
    divergence by autograd. The same check on the velocity scaled by 1.01 (the ablation) leaves a residual 100 times
    the tolerance at least."""
    x = _points(32)
    field = paths.mixture_field(MIXTURE, path, "velocity")
    for t in (0.2, 0.5, 0.8):
        t = t * path.T

        def log_p(time):
            alpha, sigma = (c.item() for c in path.marginal_coeffs(time))
            return MIXTURE.affine(alpha, sigma).log_prob(x)

        h = 1e-5
        dlogp_dt = (log_p(t + h) - log_p(t - h)) / (2 * h)
        y = x.clone().requires_grad_(True)
        u = field(y, t)
        divergence = sum(torch.autograd.grad(u[:, d].sum(), y, retain_graph=True)[0][:, d] for d in range(2))
        alpha, sigma = (c.item() for c in path.marginal_coeffs(t))
        transport = divergence.detach() + (u.detach() * MIXTURE.affine(alpha, sigma).score(x)).sum(1)
        tolerance = 1e-6 * (1 + dlogp_dt.abs().max())
        assert (dlogp_dt + transport).abs().max() < tolerance, (t, (dlogp_dt + transport).abs().max().item())
        assert (dlogp_dt + 1.01 * transport).abs().max() > 100 * tolerance


@pytest.mark.parametrize("path", [LinearPath(), VPSDE(), VESDE(sigma_min=0.01, sigma_max=5.0)], ids=repr)
@pytest.mark.parametrize("source", paths.PREDICTIONS)
def test_convert_turns_each_exact_prediction_into_every_other(path, source):
    x, t = _points(), _times(path)
    value = paths.mixture_field(MIXTURE, path, source)(x, t)
    for target in paths.PREDICTIONS:
        expected = paths.mixture_field(MIXTURE, path, target)(x, t)
        torch.testing.assert_close(paths.convert(value, x, t, path, source=source, target=target), expected, rtol=1e-10, atol=1e-10)
        converted = paths.convert_field(paths.mixture_field(MIXTURE, path, source), path, source=source, target=target)
        torch.testing.assert_close(converted(x, t), expected, rtol=1e-10, atol=1e-10)


def test_convert_is_shape_agnostic():
    """The same conversion on (n, 2) points and on (n, 1, 2, 1) "images" of the same numbers."""
    path, x, t = VPSDE(), _points(), _times(VPSDE())
    value = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    flat = paths.convert(value, x, t, path, source="velocity", target="x0")
    image = paths.convert(value.reshape(-1, 1, 2, 1), x.reshape(-1, 1, 2, 1), t, path, source="velocity", target="x0")
    torch.testing.assert_close(image.reshape(flat.shape), flat, rtol=0, atol=0)


def test_flow_matching_is_zero_for_the_exact_field_against_itself_and_its_minimiser_is_the_exact_field():
    """Marginal FM of the exact velocity against itself is 0; conditional FM of the exact velocity plus a constant
    c exceeds that of the exact velocity by |c|^2 on average (the cross term has mean zero): within 4 standard
    errors of the per-sample differences on common draws."""
    path, n = LinearPath(), 20000
    g = torch.Generator().manual_seed(4)
    x = MIXTURE.sample(n, generator=g)
    t = torch.rand(n, dtype=torch.float64, generator=g)
    z = torch.randn(n, 2, dtype=torch.float64, generator=g)
    exact = paths.mixture_field(MIXTURE, path, "velocity")
    assert losses.flow_matching(exact, x, path, marginal_velocity=exact, t=t, noise=z).item() == 0.0
    c = torch.tensor([0.3, -0.2], dtype=torch.float64)
    shifted = lambda y, s: exact(y, s) + c  # noqa: E731
    diff = losses.flow_matching(shifted, x, path, t=t, noise=z, reduction="none") - losses.flow_matching(
        exact, x, path, t=t, noise=z, reduction="none"
    )
    se = diff.std() / math.sqrt(n)
    assert abs(diff.mean() - (c**2).sum()) < 4 * se


def test_conditional_and_marginal_flow_matching_differ_by_a_theta_free_constant():
    """CFM - FM is the same for two unrelated networks (Lipman et al. 2023, Thm. 2): the per-sample difference of
    differences, -2 (v1 - v2) . (target - u), has mean zero; |its mean| within 4 of its standard errors."""
    path, n = VPSDE(), 20000
    g = torch.Generator().manual_seed(5)
    x = MIXTURE.sample(n, generator=g)
    t = 1e-3 + (1 - 1e-3) * torch.rand(n, dtype=torch.float64, generator=g)
    z = torch.randn(n, 2, dtype=torch.float64, generator=g)
    exact = paths.mixture_field(MIXTURE, path, "velocity")
    gaps = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = ScoreMLP(2, hidden=16, n_layers=2, n_fourier=4).double()
        with torch.no_grad():
            cfm = losses.flow_matching(net, x, path, t=t, noise=z, reduction="none")
            fm = losses.flow_matching(net, x, path, marginal_velocity=exact, t=t, noise=z, reduction="none")
        gaps.append(cfm - fm)
    difference = gaps[0] - gaps[1]
    assert abs(difference.mean()) < 4 * difference.std() / math.sqrt(n)
    assert gaps[0].mean() > 10 * difference.std() / math.sqrt(n)  # the constant itself is far from zero


def test_flow_matching_trains_a_velocity_network():
    """One gradient step of `ScoreMLP` as a velocity network on the linear path lowers the loss on fixed draws."""
    torch.manual_seed(0)
    net, path = ScoreMLP(2, hidden=32, n_layers=2, n_fourier=8), LinearPath()
    g = torch.Generator().manual_seed(6)
    x = MIXTURE.sample(512, generator=g).float()
    t, z = torch.rand(512, generator=g), torch.randn(512, 2, generator=g)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2)
    before = losses.flow_matching(net, x, path, t=t, noise=z)
    before.backward()
    optimizer.step()
    assert losses.flow_matching(net, x, path, t=t, noise=z).item() < before.item()


# --- lesson 10's helpers: path_dsm, straightness, the cosine path ------------------------------------------------


@pytest.mark.parametrize("path", [LinearPath(), VPSDE(), CosinePath()], ids=repr)
def test_flow_matching_of_an_eps_network_is_path_dsm_weighted_by_the_path(path):
    """One network, the same draws: flow matching of its velocity = ((alpha sigma_dot - alpha_dot sigma) / alpha)^2
    times DSM of its noise prediction, per sample, to round-off (the identity lesson 10 boxes)."""
    torch.manual_seed(0)
    net = ScoreMLP(2, hidden=16, n_layers=2, n_fourier=4).double()
    x = MIXTURE.sample(256, generator=3)
    draws = {"t": 0.02 + 0.9 * torch.rand(256, dtype=torch.float64), "noise": torch.randn(256, 2, dtype=torch.float64)}
    dsm = losses.path_dsm(net, x, path, reduction="none", **draws)
    velocity = paths.convert_field(net, path, source="eps", target="velocity")
    fm = losses.flow_matching(velocity, x, path, reduction="none", **draws)
    alpha, sigma, alpha_dot, sigma_dot = (c.flatten() for c in paths.path_coefficients(path, draws["t"], draws["t"][:, None]))
    torch.testing.assert_close(fm, dsm * ((alpha * sigma_dot - alpha_dot * sigma) / alpha) ** 2, rtol=1e-10, atol=0)


def test_path_dsm_is_twice_sde_dsm_on_an_sde_with_the_same_seed():
    """The draws of t and noise follow sde_dsm's order, so with one generator seed path_dsm(eps) = 2 sde_dsm(-eps/sigma)."""
    torch.manual_seed(1)
    net, sde = ScoreMLP(2, hidden=16, n_layers=2, n_fourier=4).double(), VPSDE()
    x = MIXTURE.sample(128, generator=4)
    score = paths.convert_field(net, sde, source="eps", target="score")
    ours = losses.path_dsm(net, x, sde, eps=1e-3, generator=5, reduction="none")
    theirs = losses.sde_dsm(score, x, sde, eps=1e-3, generator=5, reduction="none")
    torch.testing.assert_close(ours, 2 * theirs, rtol=1e-10, atol=1e-12)


def test_straightness_is_one_for_a_line_and_two_over_pi_for_a_half_circle():
    angle = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    half_circle = torch.stack([angle.cos(), angle.sin()], dim=-1)[:, None]  # (2001, 1, 2)
    line = torch.linspace(0, 1, 7, dtype=torch.float64)[:, None, None] * torch.tensor([[[3.0, -4.0]]], dtype=torch.float64)
    still = torch.zeros(5, 1, 2, dtype=torch.float64)
    result = paths.straightness(half_circle)
    torch.testing.assert_close(result, torch.tensor([2 / math.pi], dtype=torch.float64), rtol=1e-6, atol=0)
    torch.testing.assert_close(paths.straightness(line), torch.ones(1, dtype=torch.float64))
    assert paths.straightness(still).item() == 1.0  # a particle that does not move
    back_and_forth = torch.tensor([[[0.0, 0.0]], [[1.0, 0.0]], [[0.0, 0.0]]])
    assert paths.straightness(back_and_forth).item() == 0.0
    with pytest.raises(ValueError, match="trajectory"):
        paths.straightness(line[:1])
    with pytest.raises(ValueError, match="trajectory"):
        paths.straightness(torch.zeros(5, 2))


def test_vp_and_cosine_paths_share_their_exact_trajectories():
    """Both are variance preserving, so x_t depends on t only through lambda: from the same start at the same lambda,
    the same curves with different clocks. Heun's straightness on the two differs only by its discretisation error,
    which falls like h^2 (measured: 4.1x smaller from 100 to 200 steps)."""
    start = torch.randn(300, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    vp, cosine = VPSDE(), CosinePath()
    ends = torch.tensor([0.999, 1e-3], dtype=torch.float64)
    matched = cosine.time_of_half_log_snr(vp.half_log_snr(ends)).tolist()  # cosine's times at VP's lambdas
    gaps = []
    for n_steps in (100, 200):
        ratios = []
        for path, (t_max, eps) in [(vp, ends.tolist()), (cosine, matched)]:
            record = [start]
            sampling.flow_sample(
                paths.mixture_field(MIXTURE, path, "velocity"), path, start, n_steps, solver="heun", schedule="logsnr",
                prediction="velocity", t_max=t_max, eps=eps, callback=lambda s, r=record: r.append(s["x"]),
            )  # fmt: skip
            ratios.append(paths.straightness(torch.stack(record)))
        gaps.append((ratios[0] - ratios[1]).abs().max().item())
    assert gaps[1] < 5e-3 and 3 < gaps[0] / gaps[1] < 5.5


@pytest.mark.parametrize("to_path", [VPSDE(), CosinePath(), VESDE(sigma_min=0.01, sigma_max=5.0)], ids=repr)
@pytest.mark.parametrize("prediction", paths.PREDICTIONS)
def test_transfer_field_turns_the_exact_linear_field_into_the_exact_field_of_another_path(to_path, prediction):
    x, t = _points(), _times(to_path)
    moved = paths.transfer_field(paths.mixture_field(MIXTURE, LinearPath(), prediction), LinearPath(), to_path, prediction=prediction)
    torch.testing.assert_close(moved(x, t), paths.mixture_field(MIXTURE, to_path, prediction)(x, t), rtol=1e-9, atol=1e-9)


def test_transfer_field_rejects_bad_input():
    field = paths.mixture_field(MIXTURE, LinearPath(), "eps")
    with pytest.raises(TypeError, match="field"):
        paths.transfer_field("net", LinearPath(), VPSDE(), prediction="eps")
    with pytest.raises(TypeError, match="to_path"):
        paths.transfer_field(field, LinearPath(), "VP", prediction="eps")
    with pytest.raises(ValueError, match="prediction"):
        paths.transfer_field(field, LinearPath(), VPSDE(), prediction="logits")
    with pytest.raises(ValueError, match="t"):
        paths.transfer_field(field, LinearPath(), VPSDE(), prediction="eps")(_points(), 2.0)


@pytest.mark.parametrize("path", [LinearPath(), VPSDE(), VESDE(sigma_min=0.01, sigma_max=5.0)], ids=repr)
def test_isotropic_mixtures_take_a_shortcut_to_the_same_posterior_means(path):
    """Isotropic components (the ring mixtures) skip the eigenvectors, with per-sample times or one shared time (then
    the coefficients are numbers): the same posterior means as the general computation, to round-off, at t = 0 and T."""
    ring = GaussianMixture([0.2, 0.3, 0.5], [[3.0, 0.0], [-1.5, 2.6], [-1.5, -2.6]], [0.36, 0.25, 0.5], dtype=torch.float64)
    assert ring._isotropic_variances is not None
    general = GaussianMixture(ring.weights, ring.means, ring.covs + 1e-300, dtype=torch.float64)  # not detected isotropic
    x = _points()
    for t in [_times(path), 0.0, 0.37 * path.T, path.T]:
        for fast, slow in zip(paths.mixture_posterior(ring, path, x, t), paths.mixture_posterior(general, path, x, t)):
            torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
