"""Guidance, posteriors, tilted densities and energy-based models against exact answers (lessons 07-08)."""

import math

import numpy as np
import pytest
import torch

import scorelab as sl
from scorelab import guidance, losses, metrics, sampling
from scorelab.distributions import _quadrature_nodes, log_partition

MEANS = torch.tensor([[-3.0, 0.0], [1.0, 0.0], [3.0, 1.6], [3.0, -1.6]], dtype=torch.float64)
COVS = torch.tensor([[[0.5, 0.1], [0.1, 0.4]], [[0.5, 0.0], [0.0, 0.5]], [[0.3, -0.1], [-0.1, 0.6]], [[0.5, 0.0], [0.0, 0.2]]])
LABELLED = sl.GaussianMixture([0.2, 0.3, 0.25, 0.25], MEANS, COVS, labels=[0, 0, 1, 1], dtype=torch.float64)
SDES = [sl.VPSDE(), sl.VESDE(sigma_max=20.0), sl.SubVPSDE(), sl.OUSDE(3.0)]


def _points(n=64, seed=0):
    return 3 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _times(sde, n=64, seed=1):
    return 1e-3 + (sde.T - 1e-3) * torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- classes of a mixture ------------------------------------------------------------------------------------


def test_class_posterior_sums_component_responsibilities_and_default_labels_are_components():
    x = _points()
    resp = LABELLED.responsibilities(x)
    expected = torch.stack([resp[:, :2].sum(1), resp[:, 2:].sum(1)], 1)
    torch.testing.assert_close(LABELLED.class_log_prob(x).exp(), expected, rtol=1e-12, atol=1e-14)
    plain = sl.GaussianMixture(LABELLED.weights, MEANS, COVS, dtype=torch.float64)
    assert plain.n_classes == 4
    torch.testing.assert_close(plain.class_log_prob(x).exp(), plain.responsibilities(x))


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_noisy_classifier_is_the_classifier_of_the_exact_marginal(sde):
    x, t = _points(), _times(sde)
    noisy = LABELLED.marginal_class_log_prob(sde)(x, t)
    for i in (0, 17, 63):
        expected = LABELLED.marginal(sde, t[i].item()).class_log_prob(x[i : i + 1])
        torch.testing.assert_close(noisy[i : i + 1], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_guidance_with_exact_classifier_at_scale_one_is_the_exact_conditional_score(sde):
    """Bayes' rule for scores, to float64 round-off: the autograd gradient of the exact noisy classifier, added to the
    unconditional score, is the score of the class's own diffused mixture."""
    x, t = _points(), _times(sde)
    for y in (0, 1):
        grad = guidance.classifier_gradient(LABELLED.marginal_class_log_prob(sde), y)
        guided = guidance.classifier_guided_score(LABELLED.marginal_score(sde), grad, 1.0)(x, t)
        exact = LABELLED.class_mixture(y).marginal_score(sde)(x, t)
        torch.testing.assert_close(guided, exact, rtol=1e-9, atol=1e-9)
    zero = guidance.classifier_guided_score(LABELLED.marginal_score(sde), grad, 0.0)(x, t)
    torch.testing.assert_close(zero, LABELLED.marginal_score(sde)(x, t))


def test_guidance_in_an_interval_scales_only_inside_it_and_is_the_conditional_score_outside():
    vp = sl.VPSDE()
    grad = guidance.classifier_gradient(LABELLED.marginal_class_log_prob(vp), 0)
    prior = LABELLED.marginal_score(vp)
    windowed = guidance.classifier_guided_score(prior, grad, 4.0, interval=(0.3, 0.5))
    x = _points()
    t = torch.cat([torch.full((32,), 0.4), torch.full((32,), 0.7)]).double()  # half inside, half outside
    expected = torch.cat(
        [guidance.classifier_guided_score(prior, grad, 4.0)(x[:32], t[:32]), LABELLED.class_mixture(0).marginal_score(vp)(x[32:], t[32:])]
    )
    torch.testing.assert_close(windowed(x, t), expected, rtol=1e-9, atol=1e-9)
    for bad in [(0.5, 0.3), (0.1,), "early"]:
        with pytest.raises((ValueError, TypeError), match="interval"):
            guidance.classifier_guided_score(prior, grad, 4.0, interval=bad)


def test_cfg_at_scale_one_is_the_conditional_score_and_interpolates_linearly():
    net = sl.ScoreMLP(2, hidden=16, n_layers=2, n_fourier=4, n_classes=3).double()
    x, t = _points(), torch.rand(64, dtype=torch.float64)
    cond, uncond = guidance.with_label(net, 2), guidance.with_label(net, guidance.NULL_LABEL)
    torch.testing.assert_close(guidance.cfg_score(cond, uncond, 1.0)(x, t), net(x, t, 2))
    torch.testing.assert_close(guidance.cfg_score(cond, uncond, 0.0)(x, t), net(x, t, -1))
    gamma = 3.0
    expected = net(x, t, -1) + gamma * (net(x, t, 2) - net(x, t, -1))
    torch.testing.assert_close(guidance.cfg_score(cond, uncond, gamma)(x, t), expected)
    assert not torch.allclose(net(x, t, 0), net(x, t, 1))  # the label reaches the output
    # Ho & Salimans' guidance on noise predictions eps = -sigma(t) s: (1 + w) eps(x, y) - w eps(x) is gamma = 1 + w
    w, sigma = 2.5, sl.VPSDE().marginal_coeffs(t)[1][:, None]
    eps_guided = (1 + w) * (-sigma * net(x, t, 2)) - w * (-sigma * net(x, t, -1))
    torch.testing.assert_close(guidance.cfg_score(cond, uncond, 1 + w)(x, t), -eps_guided / sigma)


def test_autoguidance_extrapolates_from_the_worse_score():
    # good model: data N(0, 1); its worse version: N(0, 1.5^2) (too wide, as an underfit model is). Under the VP SDE
    # both marginals stay Gaussian, so the guided score is that of a Gaussian of precision w / v_good + (1 - w) / v_bad
    vp = sl.VPSDE()
    x, t = _points(), torch.rand(64, dtype=torch.float64) * 0.98 + 0.01

    def marginal_var(var, t):  # of data N(0, var) at time t
        mean_scale, std = vp.marginal_coeffs(t)
        return (mean_scale**2 * var + std**2)[:, None]

    good, bad = (lambda x, t: -x / marginal_var(1.0, t)), (lambda x, t: -x / marginal_var(2.25, t))
    v_good, v_bad = marginal_var(1.0, t), marginal_var(2.25, t)
    for w in (0.0, 1.0, 2.0, 3.5):
        expected = -x * (w / v_good + (1 - w) / v_bad)
        torch.testing.assert_close(guidance.autoguided_score(good, bad, w)(x, t), expected)
    assert torch.equal(guidance.autoguided_score(good, bad, 1.0)(x, t), good(x, t))
    # w > 1 sharpens beyond the good model: at t -> 0 the precision 2 - 1 / 2.25 exceeds the data's 1
    tiny = torch.full((64,), 1e-4, dtype=torch.float64)
    ratio = guidance.autoguided_score(good, bad, 2.0)(x, tiny) / (-x)
    torch.testing.assert_close(ratio, torch.full_like(x, 2 - 1 / 2.25), rtol=1e-3, atol=0)
    for bad_weight in (-1.0, float("nan"), True):
        with pytest.raises(ValueError, match="weight"):
            guidance.autoguided_score(good, bad, bad_weight)
    with pytest.raises(TypeError, match="guide_score"):
        guidance.autoguided_score(good, None, 2.0)


def test_label_dropout_rate_and_cfg_loss_trains_both_heads():
    labels = torch.zeros(20_000, dtype=torch.long)
    dropped = guidance.drop_labels(labels, 0.3, generator=0)
    rate = (dropped == guidance.NULL_LABEL).double().mean().item()
    assert abs(rate - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 20_000)
    assert set(dropped.unique().tolist()) == {-1, 0}
    net = sl.ScoreMLP(2, hidden=16, n_layers=2, n_fourier=4, n_classes=2)
    x, y = LABELLED.to(dtype=torch.float32).sample_labelled(64, generator=1)
    loss = guidance.cfg_dsm(sl.sde.condition_on_std(net, sl.VPSDE()), x, y, sl.VPSDE(), p_uncond=0.5, generator=2)
    loss.backward()
    grads = net.label_embed.weight.grad
    assert torch.isfinite(loss) and (grads.abs().sum(1) > 0).all()  # rows 0, 1 and the null row all trained


def test_sample_labelled_matches_sample_and_labels_follow_the_components():
    x, y = LABELLED.sample_labelled(4000, generator=3)
    torch.testing.assert_close(x, LABELLED.sample(4000, generator=3))
    frac = y.double().mean().item()  # p(y = 1) = 0.5
    assert abs(frac - 0.5) < 4 * math.sqrt(0.25 / 4000)
    # labels are drawn from p(y | x): the Bayes classifier agrees with them at the rate E[max_y p(y | x)]
    posterior = LABELLED.class_log_prob(x).exp()
    agree = (posterior.argmax(1) == y).double()
    assert abs(agree.mean() - posterior.max(1).values.mean()) < 4 * agree.std() / math.sqrt(len(x))


# --- posterior and tilted densities -------------------------------------------------------------------------


def _grid_posterior(prior, A, y, noise_std, cells=120):
    """Bayes' rule on a quadrature grid, independently of `posterior`: mean and covariance of p(x | y)."""
    points, weights = _quadrature_nodes(-8, 8, cells, 2)
    resid = y - points @ A.T
    log_post = prior.log_prob(points) - 0.5 * (resid**2).sum(1) / noise_std**2
    w = weights * (log_post - log_post.max()).exp()
    w = w / w.sum()
    mean = (w[:, None] * points).sum(0)
    centred = points - mean
    return mean, (w[:, None, None] * centred[:, :, None] * centred[:, None, :]).sum(0)


@pytest.mark.parametrize("A, y, noise_std", [([[1.0, 1.0]], [2.0], 0.5), ([[1.0, 0.0], [0.3, 1.0]], [2.2, 0.4], 0.7)])
def test_posterior_matches_bayes_rule_on_a_grid_and_importance_sampling(A, y, noise_std):
    A, y = torch.tensor(A, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    post = LABELLED.posterior(A, y, noise_std)
    post_mean = (post.weights[:, None] * post.means).sum(0)
    centred = post.means - post_mean
    post_cov = (post.weights[:, None, None] * (post.covs + centred[:, :, None] * centred[:, None, :])).sum(0)
    grid_mean, grid_cov = _grid_posterior(LABELLED, A, y, noise_std)
    torch.testing.assert_close(post_mean, grid_mean, rtol=0, atol=1e-8)
    torch.testing.assert_close(post_cov, grid_cov, rtol=0, atol=1e-8)
    # importance sampling: prior draws weighted by the likelihood; tolerance from the effective sample size
    x = LABELLED.sample(200_000, generator=4)
    log_w = -0.5 * ((y - x @ A.T) ** 2).sum(1) / noise_std**2
    w = (log_w - log_w.max()).exp()
    w = w / w.sum()
    is_mean = (w[:, None] * x).sum(0)
    se = ((w[:, None] ** 2 * (x - is_mean) ** 2).sum(0)).sqrt()
    assert ((is_mean - post_mean).abs() < 4 * se).all(), (is_mean, post_mean, se)
    # the posterior density is prior x likelihood, normalised: ratios agree pointwise
    pts = _points(32, seed=5)
    log_ratio = post.log_prob(pts) - LABELLED.log_prob(pts) + 0.5 * ((y - pts @ A.T) ** 2).sum(1) / noise_std**2
    torch.testing.assert_close(log_ratio, log_ratio[:1].expand(32), rtol=0, atol=1e-9)
    assert post.n_classes == LABELLED.n_classes


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 3.0])
def test_tilted_density_integrates_to_one_and_matches_its_special_cases(gamma):
    log_prob = LABELLED.tilted_log_prob(0, gamma, bounds=(-9, 9), cells=60)
    points, weights = _quadrature_nodes(-9, 9, 90, 2)  # another grid than the one that normalised it
    assert abs((log_prob(points).exp() * weights).sum().item() - 1) < 1e-8
    # Z = E_p[p(y | x)^gamma]: a Monte-Carlo check within 4 standard errors
    x = LABELLED.sample(100_000, generator=6)
    terms = (gamma * LABELLED.class_log_prob(x)[:, 0]).exp()
    assert abs(terms.mean() - math.exp(log_prob.log_Z)) < 4 * terms.std() / math.sqrt(len(x)) + 1e-12
    pts = _points(16)
    if gamma == 0.0:
        torch.testing.assert_close(log_prob(pts), LABELLED.log_prob(pts), rtol=0, atol=1e-9)
    if gamma == 1.0:
        assert abs(log_prob.log_Z - math.log(0.5)) < 1e-9  # Z = p(y = 0) = 0.2 + 0.3
        torch.testing.assert_close(log_prob(pts), LABELLED.class_mixture(0).log_prob(pts), rtol=0, atol=1e-9)


def test_tv_grid_takes_a_log_density_and_agrees_with_the_mixture_target():
    x = LABELLED.sample(5000, generator=7)
    as_mixture = metrics.tv_grid(x, LABELLED, bounds=(-6, 6), bins=20)
    as_function = metrics.tv_grid(x, LABELLED.log_prob, bounds=(-6, 6), bins=20)
    assert as_mixture == pytest.approx(as_function, rel=1e-9)
    with pytest.raises(ValueError, match="normalised"):
        metrics.tv_grid(x, lambda v: LABELLED.log_prob(v) + 1.0, bounds=(-6, 6), bins=20)


# --- samplers: inpainting, inverse problems, colorization ------------------------------------------------------


def test_linear_inverse_sampler_is_stable_conditions_and_tends_to_inpainting():
    vp, score = sl.VPSDE(), LABELLED.marginal_score(sl.VPSDE())
    x_T = vp.prior_sample((4000, 2), generator=8, dtype=torch.float64)
    A, y = torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([2.2], dtype=torch.float64)
    x = guidance.linear_inverse_sample(score, vp, x_T, 100, A, y, 1e-4, generator=9)
    _, final_std = (c.item() for c in vp.marginal_coeffs(1e-3))
    assert (x[:, 0] - 2.2).abs().max() < 6 * final_std  # A x = y^_eps = m y + sigma z: the known coordinate
    # a noisy measurement moves the mean most of the way from the prior's to the exact posterior's (measured: 95 %;
    # the rest is the approximation's bias, lesson 07's subject): at least 3/4 of the way, a qualitative claim
    post = LABELLED.posterior(A, y, 0.5)
    x = guidance.linear_inverse_sample(score, vp, x_T, 100, A, y, 0.5, generator=10)
    post_mean = (post.weights[:, None] * post.means).sum(0)
    prior_mean = (LABELLED.weights[:, None] * LABELLED.means).sum(0)
    assert abs(x[:, 0].mean() - post_mean[0]) < 0.25 * abs(prior_mean[0] - post_mean[0])


def test_explicit_likelihood_step_diverges_where_the_exact_flow_does_not():
    """Why linear_inverse_sample solves the likelihood term's flow exactly: the Euler step of it is unstable near T."""
    vp = sl.VPSDE()
    prior_score = LABELLED.marginal_score(vp)
    A, y, noise_std = torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([2.2], dtype=torch.float64), 0.3

    def explicit(x, t):  # s + A^T (y^_t - A x) / (m^2 noise_std^2), y^_t = m y + sigma A z
        m, s = (c[:, None] for c in vp.marginal_coeffs(t))
        y_hat = m * y + s * torch.randn(len(x), 1, dtype=x.dtype)
        return prior_score(x, t) + (y_hat - x @ A.T) @ A / (m * noise_std) ** 2

    x_T = vp.prior_sample((500, 2), generator=11, dtype=torch.float64)
    with pytest.raises(sampling.DivergenceError):
        sampling.pc_sample(explicit, vp, x_T, 200, corrector=None, generator=12)
    assert torch.isfinite(guidance.linear_inverse_sample(prior_score, vp, x_T, 200, A, y, noise_std, generator=12)).all()


@pytest.mark.parametrize("y_path", guidance.Y_PATHS)
def test_y_path_draws_the_noisy_measurement_as_its_docstring_says(y_path):
    """With A = I and a tiny noise_std the likelihood flow projects x onto y^_t, so the particles after each step are
    y^_t itself: its mean m(t) y and spread sigma(t) at every step, and the correlation of consecutive steps' noise,
    0 (redraw), a sigma(s) / sigma(t) (the forward SDE's, for x_t = a x_s + b w), or 1 (fixed). Tolerances: 4
    standard errors of a mean, a variance and a correlation of n draws."""
    vp, n, y = sl.VPSDE(), 4000, torch.tensor([0.7], dtype=torch.float64)
    one_d = sl.GaussianMixture([1.0], [[0.0]], [[[1.0]]], dtype=torch.float64)
    kept = []
    x_T = vp.prior_sample((n, 1), generator=17, dtype=torch.float64)
    guidance.linear_inverse_sample(
        one_d.marginal_score(vp),
        vp,
        x_T,
        10,
        [[1.0]],
        y,
        1e-9,
        y_path=y_path,
        generator=18,
        callback=lambda d: kept.append((d["t"], d["x"][:, 0].clone())),
    )
    (s, x_s), (t, x_t) = kept[3], kept[2]  # s < t: consecutive steps
    s, t = torch.tensor(s, dtype=torch.float64), torch.tensor(t, dtype=torch.float64)
    m_s, sigma_s = (c.item() for c in vp.marginal_coeffs(s))
    sigma_t = vp.marginal_coeffs(t)[1].item()
    assert abs(x_s.mean() - m_s * y) < 4 * max(sigma_s, 1e-12) / math.sqrt(n) + 1e-12
    if y_path == "none":
        torch.testing.assert_close(x_s, torch.full_like(x_s, m_s * y.item()))
        return
    assert abs(x_s.std() / sigma_s - 1) < 4 / math.sqrt(2 * n)
    a = vp.transition_coeffs(s, t)[0].item()
    rho = {"redraw": 0.0, "forward": a * sigma_s / sigma_t, "fixed": 1.0}[y_path]
    corr = torch.corrcoef(torch.stack([x_s, x_t]))[0, 1].item()
    assert abs(corr - rho) < 4 * (1 - rho**2) / math.sqrt(n) + 1e-9, (corr, rho)


def test_redrawn_measurement_noise_narrows_the_samples_as_no_noise_does():
    """Lesson 07's mechanism on a second prior, a correlated Gaussian: y^_t redrawn at every step gives the variance
    along A of y^_t = m(t) y (no noise), within 4 standard errors; a forward path of y^_t gives more, one z per
    particle more still."""
    vp = sl.VPSDE()
    prior = sl.GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.6], [0.6, 1.0]]], dtype=torch.float64)
    A, y = torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([1.5], dtype=torch.float64)
    x_T, n = vp.prior_sample((8000, 2), generator=19, dtype=torch.float64), 8000
    var = {
        path: guidance.linear_inverse_sample(prior.marginal_score(vp), vp, x_T, 100, A, y, 0.5, y_path=path, generator=20)[:, 0]
        .var()
        .item()
        for path in guidance.Y_PATHS
    }
    se = var["redraw"] * math.sqrt(2 / n)  # the standard error of a variance of n Gaussian draws
    assert abs(var["redraw"] - var["none"]) < 4 * math.sqrt(2) * se, var
    assert var["none"] + 10 * se < var["forward"] < var["fixed"] - 10 * se, var


def test_dps_step_is_chung_et_al_algorithm_1_with_the_likelihood_step_or_their_normalised_one():
    """One DPS step by hand for a Gaussian prior, where x^_0 = E[x_0 | x_t] and its Jacobian are linear: the
    reverse-diffusion predictor, then x <- x - zeta_i grad ||y - A x^_0(x_i)||^2 with zeta_i = b^2 / (2 noise_std^2)
    or zeta' / ||y - A x^_0||, and x^_0 of the result at eps."""
    vp = sl.VPSDE()
    cov = torch.tensor([[1.0, 0.6], [0.6, 1.0]], dtype=torch.float64)
    prior = sl.GaussianMixture([1.0], [[0.5, -0.2]], cov[None], dtype=torch.float64)
    A, y, noise_std = torch.tensor([[1.0, 1.0]], dtype=torch.float64), torch.tensor([0.8], dtype=torch.float64), 0.3
    x = vp.prior_sample((64, 2), generator=21, dtype=torch.float64)
    t, eps = 1.0, 0.5  # one step from T to eps
    (m_t, sigma_t), (m_e, sigma_e) = ((c.item() for c in vp.marginal_coeffs(torch.tensor(v, dtype=torch.float64))) for v in (t, eps))
    a, b = (c.item() for c in vp.transition_coeffs(torch.tensor(eps, dtype=torch.float64), torch.tensor(t, dtype=torch.float64)))
    mean = prior.means[0]

    def x0_hat(v, m, sigma):  # E[x_0 | x_t = v] = mu + Sigma m (m^2 Sigma + sigma^2 I)^-1 (v - m mu)
        gain = cov @ torch.linalg.inv(m**2 * cov + sigma**2 * torch.eye(2, dtype=torch.float64)) * m
        return mean + (v - m * mean) @ gain.T, gain

    for zeta in (None, 0.2):
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(22), dtype=torch.float64)
        score = prior.marginal_score(vp)(x, torch.full((64,), t, dtype=torch.float64))
        x0, gain = x0_hat(x, m_t, sigma_t)
        residual = y - x0 @ A.T
        grad = -2 * residual @ A @ gain  # grad ||y - A x^_0(x)||^2
        step = b**2 / (2 * noise_std**2) if zeta is None else zeta / residual.norm(dim=1, keepdim=True)
        moved = (2 - a) * x + b**2 * score + b * z - step * grad
        expected = x0_hat(moved, m_e, sigma_e)[0]
        got = guidance.dps_sample(prior.marginal_score(vp), vp, x, 1, A, y, noise_std, zeta=zeta, eps=eps, generator=22)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_dps_weighs_the_measurement_by_its_noise():
    """A very noisy measurement barely moves DPS's samples from the prior's; an informative one moves their mean along
    A most of the way to the exact posterior's (the approximation's bias is lesson 07's subject)."""
    vp, score = sl.VPSDE(), LABELLED.marginal_score(sl.VPSDE())
    A, y = torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([2.2], dtype=torch.float64)
    x_T = vp.prior_sample((4000, 2), generator=23, dtype=torch.float64)
    prior_mean = (LABELLED.weights[:, None] * LABELLED.means).sum(0)[0]
    spread = LABELLED.sample(4000, generator=24)[:, 0].std() / math.sqrt(4000)
    vague = guidance.dps_sample(score, vp, x_T, 50, A, y, 100.0, generator=25)
    assert abs(vague[:, 0].mean() - prior_mean) < 4 * math.sqrt(2) * spread
    post = LABELLED.posterior(A, y, 0.5)
    post_mean = (post.weights[:, None] * post.means).sum(0)[0]
    sharp = guidance.dps_sample(score, vp, x_T, 50, A, y, 0.5, generator=25)
    assert abs(sharp[:, 0].mean() - post_mean) < 0.25 * abs(prior_mean - post_mean)


def test_inverse_samplers_refuse_bad_options():
    vp, score = sl.VPSDE(), LABELLED.marginal_score(sl.VPSDE())
    x_T = vp.prior_sample((8, 2), generator=26, dtype=torch.float64)
    with pytest.raises(ValueError, match="y_path"):
        guidance.linear_inverse_sample(score, vp, x_T, 5, [[1.0, 0.0]], [1.0], 0.5, y_path="sometimes")
    for zeta in (-1.0, 0.0, float("nan")):
        with pytest.raises(ValueError, match="zeta"):
            guidance.dps_sample(score, vp, x_T, 5, [[1.0, 0.0]], [1.0], 0.5, zeta=zeta)
    with pytest.raises(ValueError, match="noise_std"):
        guidance.dps_sample(score, vp, x_T, 5, [[1.0, 0.0]], [1.0], -0.5)
    with pytest.raises(sampling.DivergenceError, match="dps_sample"):  # an explicit step far too long
        guidance.dps_sample(score, vp, x_T, 50, [[1.0, 0.0]], [1.0], 1e-4, generator=27)


def test_score_in_an_orthonormal_basis_is_the_score_of_the_rotated_mixture():
    rgb = sl.GaussianMixture([0.5, 0.5], [[0.8, 0.1, 0.1], [0.1, 0.7, 0.2]], [0.02, 0.03], dtype=torch.float64)
    Q = guidance.COLOR_BASIS
    rotated = sl.GaussianMixture(rgb.weights, rgb.means @ Q.T, Q @ rgb.covs @ Q.T, dtype=torch.float64)
    u = torch.randn(16, 3, dtype=torch.float64)
    torch.testing.assert_close(guidance.in_basis(lambda x, t: rgb.score(x), Q)(u, None), rotated.score(u))
    torch.testing.assert_close(guidance.to_basis(guidance.to_basis(u, Q), Q.T), u)


def test_colorize_keeps_the_grey_level_exactly_and_picks_a_colour_consistent_with_it():
    rgb = sl.GaussianMixture([0.5, 0.5], [[0.9, 0.1, 0.1], [0.1, 0.1, 0.9]], [0.005, 0.005], dtype=torch.float64)
    vp = sl.VPSDE()
    x = rgb.sample(200, generator=13)
    gray = x.mean(1, keepdim=True)
    colour = guidance.colorize(rgb.marginal_score(vp), vp, gray, 100, corrector=None, generator=14)
    torch.testing.assert_close(colour.mean(1, keepdim=True), gray, rtol=0, atol=1e-12)
    # red and blue share a grey level: each sample must be one of the two, split about evenly
    is_red = colour[:, 0] > colour[:, 2]
    assert ((colour - rgb.means[(~is_red).long()]).norm(dim=1) < 0.4).all()
    assert abs(is_red.double().mean() - 0.5) < 4 * math.sqrt(0.25 / len(is_red))  # binomial, 4 SE


# --- energy-based models -----------------------------------------------------------------------------------------


class _GaussianEnergy(torch.nn.Module):
    """E(x) = (x - mu)^2 / (2 s^2) in 1-D, parameters mu and log s: the MLE gradient is known in closed form."""

    def __init__(self, mu, log_s):
        super().__init__()
        self.mu, self.log_s = torch.nn.Parameter(torch.tensor(mu)), torch.nn.Parameter(torch.tensor(log_s))

    def forward(self, x):
        return 0.5 * ((x[:, 0] - self.mu) / self.log_s.exp()) ** 2


def test_contrastive_divergence_gradient_is_the_nll_gradient_in_expectation():
    """With exact model samples, E[grad CD] = grad NLL = (-(x_bar - mu) / s^2, 1 - E_data[(x - mu)^2] / s^2)."""
    energy = _GaussianEnergy(0.5, math.log(1.5))
    g = torch.Generator().manual_seed(15)
    data = 1.2 + 0.8 * torch.randn(256, 1, generator=g, dtype=torch.float64)
    mu, s = 0.5, 1.5
    exact = torch.tensor([-(data.mean() - mu) / s**2, 1 - ((data - mu) ** 2).mean() / s**2], dtype=torch.float64)
    grads = []
    for _ in range(400):
        energy.zero_grad()
        model_samples = mu + s * torch.randn(256, 1, generator=g, dtype=torch.float64)
        losses.contrastive_divergence(energy, data, model_samples).backward()
        grads.append(torch.stack([energy.mu.grad, energy.log_s.grad]).double())
    grads = torch.stack(grads)
    se = grads.std(0) / math.sqrt(len(grads))
    assert ((grads.mean(0) - exact).abs() < 4 * se).all(), (grads.mean(0), exact, se)


def test_persistent_chains_continue_and_short_run_chains_restart():
    energy = sl.EnergyMLP(2, hidden=8, n_layers=1)
    x = torch.randn(32, 2)
    init = lambda n, g: torch.zeros(n, 2)  # noqa: E731
    short = losses.ContrastiveDivergence(3, 0.01, init)
    short(energy, x, torch.Generator().manual_seed(0))
    assert short.chains is None
    pcd = losses.ContrastiveDivergence(3, 0.01, init, persistent=True, reinit=0.0)
    pcd(energy, x, torch.Generator().manual_seed(0))
    first = pcd.chains.clone()
    pcd(energy, x, torch.Generator().manual_seed(1))
    steps_from_zero = losses.ContrastiveDivergence(3, 0.01, init)
    assert not torch.allclose(pcd.chains, first) and (pcd.chains - first).norm() < (pcd.chains.norm() + first.norm())
    loss = steps_from_zero(energy, x, torch.Generator().manual_seed(1))
    loss.backward()
    assert all(p.grad is not None for p in energy.parameters())


def test_log_partition_of_a_gaussian_energy_and_of_a_normalised_mixture():
    s = 0.7
    log_z = log_partition(lambda x: 0.5 * (x**2).sum(1) / s**2, 2, (-8, 8), 40)
    assert abs(log_z - math.log(2 * math.pi * s**2)) < 1e-10
    assert abs(log_partition(lambda x: -LABELLED.log_prob(x), 2, (-10, 10), 60)) < 1e-9
    assert abs(log_partition(lambda x: 0.5 * x[:, 0] ** 2, 1, (-10, 10), 50) - 0.5 * math.log(2 * math.pi)) < 1e-10


def test_learned_energy_normalised_by_quadrature_is_a_density():
    energy = sl.EnergyMLP(2, hidden=16, n_layers=2)
    log_z = log_partition(energy, 2, (-6, 6), 30)
    points, weights = _quadrature_nodes(-6, 6, 45, 2)
    with torch.no_grad():
        mass = (weights * (-energy(points.float()).double() - log_z).exp()).sum().item()
    assert abs(mass - 1) < 1e-4  # float32 energy: round-off, not quadrature, limits this
    assert np.isfinite(log_z)


def test_ism_ssm_and_dsm_train_an_energy_through_its_autograd_score():
    """The same EnergyMLP under the three score-matching losses: ISM - ESM is one constant for two different energies
    (Hyvarinen's identity, checked within 4 standard errors), and every loss reaches the energy's weights."""
    mix = LABELLED.to(dtype=torch.float32)
    x = mix.sample(20_000, generator=16)
    gaps = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        energy = sl.EnergyMLP(2, hidden=16, n_layers=2)
        ism = losses.ism(energy.score, x, reduction="none")
        esm = losses.esm(energy.score, x, mix.score, reduction="none")
        gaps.append((ism - esm).detach().double())
    diff = gaps[0] - gaps[1]
    assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(len(diff))
    energy = sl.EnergyMLP(2, hidden=16, n_layers=2)
    for loss in (
        losses.ism(energy.score, x[:64]),
        losses.ssm(energy.score, x[:64], generator=0),
        losses.dsm(energy.score, x[:64], 0.1, generator=0),
    ):
        energy.zero_grad()
        loss.backward()
        # every weight matrix gets a gradient (the output bias cannot: a constant in E leaves the score unchanged)
        weights = [p for p in energy.parameters() if p.ndim == 2]
        assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in weights)
        assert energy.net[-1].bias.grad is None
