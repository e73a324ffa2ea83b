"""SDEs, reverse-time samplers, the probability-flow ODE and likelihoods, against exact mixture marginals."""

import math

import pytest
import torch

from scorelab import OUSDE, VESDE, VPSDE, GaussianMixture, ScoreMLP, SubVPSDE, TrainConfig, fit, likelihood, losses, sampling
from scorelab.datasets import ring_mixture
from scorelab.metrics import fisher_divergence, tv_grid
from scorelab.sde import condition_on_std, simulate_forward

SDES = {"VE": VESDE(0.01, 10.0), "VP": VPSDE(), "subVP": SubVPSDE(), "OU": OUSDE(T=5.0)}
MIX = ring_mixture(n_modes=4, radius=3.0, std=0.6)


@pytest.mark.parametrize("name", SDES)
def test_marginal_coefficients_solve_their_moment_odes(name):
    # for dX = f X dt + g dB: m' = f m and (s^2)' = 2 f s^2 + g^2, with m(0) = 1, s(0) = 0
    sde = SDES[name]
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64) * sde.T
    h = 1e-5
    m, s = sde.marginal_coeffs(t)
    m_plus, s_plus = sde.marginal_coeffs(t + h)
    m_minus, s_minus = sde.marginal_coeffs(t - h)
    f, g = sde.drift_coeff(t), sde.diffusion(t)
    torch.testing.assert_close((m_plus - m_minus) / (2 * h), f * m, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close((s_plus**2 - s_minus**2) / (2 * h), 2 * f * s**2 + g**2, rtol=1e-6, atol=1e-7)
    m0, s0 = sde.marginal_coeffs(0.0)
    assert m0.item() == pytest.approx(1.0) and s0.item() == pytest.approx(0.0, abs=1e-12)


def test_marginal_coefficients_closed_forms():
    t = 0.37
    ve, vp, sub, ou = SDES["VE"], SDES["VP"], SDES["subVP"], SDES["OU"]
    assert ve.marginal_coeffs(t)[1].item() == pytest.approx(math.sqrt((0.01 * 1000**t) ** 2 - 0.01**2))
    integral = 0.1 * t + 0.5 * 19.9 * t**2
    assert vp.marginal_coeffs(t)[0].item() == pytest.approx(math.exp(-0.5 * integral))
    assert vp.marginal_coeffs(t)[1].item() == pytest.approx(math.sqrt(1 - math.exp(-integral)))
    assert sub.marginal_coeffs(t)[1].item() == pytest.approx(1 - math.exp(-integral))
    assert ou.marginal_coeffs(t)[0].item() == pytest.approx(math.exp(-t))


@pytest.mark.parametrize("name", SDES)
def test_simulated_forward_sde_matches_the_exact_mixture_marginal(name):
    sde = SDES[name]
    t = 0.3 * sde.T
    g = torch.Generator().manual_seed(0)
    n = 4000
    x_t = simulate_forward(sde, MIX.sample(n, generator=g), t, 400, generator=g)  # drift and diffusion only
    result = tv_grid(x_t, MIX.marginal(sde, t), bounds=(-8, 8), bins=20)
    assert result.tv < result.floor + 4 * result.spread
    # marginal_sample draws from the same law
    result = tv_grid(sde.marginal_sample(MIX.sample(n, generator=g), t, generator=g), MIX.marginal(sde, t), bounds=(-8, 8), bins=20)
    assert result.tv < result.floor + 4 * result.spread


@pytest.mark.parametrize("name", SDES)
def test_marginal_score_per_sample_times(name):
    sde = SDES[name]
    mix = MIX.to(dtype=torch.float64)
    x = 1.5 * mix.sample(40, generator=1)
    t = sde.T * torch.rand(40, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = torch.stack([mix.marginal(sde, ti.item()).score(xi[None])[0] for xi, ti in zip(x, t)])
    torch.testing.assert_close(mix.marginal_score(sde)(x, t), expected, rtol=1e-10, atol=1e-10)


def test_marginal_score_asked_again_at_a_time_gives_that_times_score():
    """The score keeps what depends on each shared time alone; asking for times in any order, again and alternately,
    each answer is the closed form at its own time, and a bad time is refused even right after a good one."""
    sde, mix = SDES["VP"], MIX.to(dtype=torch.float64)
    score, x = mix.marginal_score(sde), 1.5 * mix.sample(30, generator=3)
    for t in (0.3, 0.3, 0.7, 0.3, 0.7, 0.7, 1.0):
        for time in (torch.full((1,), t, dtype=torch.float64).expand(len(x)), torch.tensor(t, dtype=torch.float64), t):
            torch.testing.assert_close(score(x, time), mix.marginal(sde, t).score(x), rtol=1e-12, atol=1e-12)
    for bad in (float("nan"), 1.5, -0.1):
        with pytest.raises(ValueError, match="t must lie"):
            score(x, torch.full((1,), bad, dtype=torch.float64).expand(len(x)))


@pytest.mark.parametrize("name", ["VP", "VE"])
@pytest.mark.parametrize("covariances", ["diagonal", "full"])
def test_marginal_score_precomputed_times_give_each_times_closed_form(name, covariances):
    """`precompute` works out a grid's times in one call (with the coefficients for diagonal components, m and sigma
    alone for full ones): the score at each of them, and at a time off the grid, is the closed form; a time out of
    [0, T] or a grid that is not a 1-d tensor is refused."""
    covs = {"diagonal": [[0.5, 1.2], [0.9, 0.2]], "full": [[[0.5, 0.3], [0.3, 1.2]], [[0.9, -0.2], [-0.2, 0.2]]]}[covariances]
    sde, mix = SDES[name], GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [2.0, -1.0]], covs, dtype=torch.float64)
    score, x = mix.marginal_score(sde), 1.5 * mix.sample(20, generator=4)
    grid = torch.linspace(sde.T, 0.01, 9, dtype=torch.float64)
    score.precompute(grid)
    for t in [*grid.tolist(), 0.333]:
        time = torch.full((1,), t, dtype=torch.float64).expand(len(x))
        torch.testing.assert_close(score(x, time), mix.marginal(sde, t).score(x), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="t must lie"):
        score.precompute(torch.tensor([0.5, 1.5], dtype=torch.float64))
    with pytest.raises(TypeError, match="times"):
        score.precompute([0.5])


def test_marginal_score_keeps_no_more_coefficients_than_its_budget(monkeypatch):
    """An image-sized mixture's coefficients take ~1 MB a time: past the budget of numbers, a grid keeps only m and
    sigma and each call works its coefficients out, and times asked for one by one are kept until the budget is full,
    then dropped (checked with a budget of 3 times' coefficients); every answer is still the closed form."""
    from scorelab import distributions

    sde, mix = SDES["VP"], GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [2.0, -1.0]], [[0.5, 1.2], [0.9, 0.2]], dtype=torch.float64)
    monkeypatch.setattr(distributions, "_KNOWN_NUMBERS", 3 * 2 * 2 * (2 + 2 + 1))  # K * 2 (D + r + 1) numbers a time
    score, x = mix.marginal_score(sde), mix.sample(10, generator=6)

    def check(t):
        time = torch.full((1,), t, dtype=torch.float64).expand(len(x))
        torch.testing.assert_close(score(x, time), mix.marginal(sde, t).score(x), rtol=1e-12, atol=1e-12)

    score.precompute(torch.tensor([0.8, 0.6, 0.4], dtype=torch.float64))  # within the budget: kept
    check(0.6)
    assert mix._separable_cache is None  # the mixture's own one-law cache was not needed
    score.precompute(torch.linspace(0.9, 0.1, 5, dtype=torch.float64))  # too many to keep their coefficients
    check(0.5)
    assert mix._separable_cache[0] == tuple(c.item() for c in sde.marginal_coeffs(torch.tensor([0.5], dtype=torch.float64)))
    for t in [0.9, 0.3, 0.31, 0.32, 0.33, 0.9, 0.31]:  # times off the grid fill the budget, and start it again
        check(t)


@pytest.mark.parametrize("run", ["pc_sample", "ode_sample rk4", "ode_sample midpoint"])
def test_samplers_work_out_the_scores_times_once_and_sample_as_without(run):
    """pc_sample and the fixed-step ODE sampler tell the mixture score their whole time grid (`precompute`) in the
    dtype they pass it, so m(t), sigma(t) are worked out in one call and never again; the samples are the same as
    with a score that cannot be told (to float32 round-off: the grid's coefficients come from one vectorised call)."""
    sde, calls, diffusion_calls = SDES["VP"], [], []
    marginal_coeffs, diffusion = sde.marginal_coeffs, sde.diffusion

    def counted(t):
        calls.append(t.numel())
        return marginal_coeffs(t)

    def counted_diffusion(t):
        diffusion_calls.append(t.numel())
        return diffusion(t)

    x_T = sde.prior_sample((300, 2), generator=0)
    method = run.split()[-1]
    sample = {
        "pc_sample": lambda s: sampling.pc_sample(s, sde, x_T, 40, generator=1),
        "ode_sample rk4": lambda s: sampling.ode_sample(s, sde, x_T, method=method, n_steps=10),
        "ode_sample midpoint": lambda s: sampling.ode_sample(s, sde, x_T, method=method, n_steps=10),
    }[run]
    score = MIX.marginal_score(sde)
    sde.marginal_coeffs, sde.diffusion = counted, counted_diffusion
    try:
        told = sample(score)
    finally:
        del sde.marginal_coeffs, sde.diffusion
    # each call's number of times: pc_sample's own schedule and the score each work out the 41 grid times once; the
    # ODE's score works out its 10 steps' stage times (rk4's last stage is the next step's first; midpoint never asks at eps)
    assert calls == {"pc_sample": [41, 41], "ode_sample rk4": [31], "ode_sample midpoint": [20]}[run]
    # and the ODE's flow takes g(t)^2 from one call for the same times, not one call per evaluation
    assert diffusion_calls == {"pc_sample": [], "ode_sample rk4": [31], "ode_sample midpoint": [20]}[run]
    untold = sample(lambda x, t: MIX.marginal_score(sde)(x, t))
    torch.testing.assert_close(told, untold, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", SDES)
def test_probability_flow_drift_from_known_coefficients_is_the_same_drift(name):
    """The fixed-step ODE sampler passes f(t), g(t)^2 as floats worked out for its whole grid: the drift is then
    f x - g^2 s / 2 exactly as from the time itself."""
    from scorelab.sde import probability_flow_drift

    sde, mix = SDES[name], MIX.to(dtype=torch.float64)
    x, t = mix.sample(25, generator=5), 0.4 * sde.T
    batch = torch.full((25,), t, dtype=torch.float64)
    known = (sde.drift_coeff(batch)[0].item(), sde.diffusion(batch)[0].item() ** 2)
    score = mix.marginal_score(sde)
    expected = probability_flow_drift(sde, score, x, batch)
    torch.testing.assert_close(probability_flow_drift(sde, score, x, batch, coefficients=known), expected, rtol=1e-12, atol=1e-12)


COMBOS = [
    (sde, predictor, corrector)
    for sde in SDES
    for predictor in ("euler_maruyama", "reverse_diffusion", "ancestral", None)
    for corrector in ("langevin", None)
    if (predictor, corrector) != (None, None) and not (predictor == "ancestral" and sde in ("subVP", "OU"))
]


@pytest.mark.parametrize("name, predictor, corrector", COMBOS)
def test_pc_sampling_with_exact_scores_reproduces_the_mixture(name, predictor, corrector):
    sde = SDES[name]
    n = 2000
    x_T = sde.prior_sample((n, 2), generator=0)
    # corrector-only sampling is Langevin chasing a moving target: it needs more steps and a larger snr to keep
    # up (OU, T = 5, 1000 steps: snr 0.16 lags, mean radius 2.79 vs 3.06, TV 0.21; snr 0.3: TV 0.09 = floor)
    n_steps, snr = (300, 0.16) if predictor else (1000, 0.3)
    x = sampling.pc_sample(MIX.marginal_score(sde), sde, x_T, n_steps, predictor=predictor, corrector=corrector, snr=snr, generator=1)
    result = tv_grid(x, MIX, bounds=(-6, 6), bins=20)
    assert result.tv < result.floor + 4 * result.spread, result


def test_ancestral_is_refused_where_the_paper_does_not_define_it():
    with pytest.raises(ValueError, match="ancestral"):
        sampling.pc_sample(MIX.marginal_score(SDES["OU"]), SDES["OU"], torch.zeros(4, 2), 10, predictor="ancestral")


@pytest.mark.parametrize("name", SDES)
def test_probability_flow_ode_reproduces_the_mixture(name):
    sde = SDES[name]
    x_T = sde.prior_sample((2000, 2), generator=0)
    x, nfe = sampling.ode_sample(MIX.marginal_score(sde), sde, x_T, return_nfe=True)
    result = tv_grid(x, MIX, bounds=(-6, 6), bins=20)
    assert result.tv < result.floor + 4 * result.spread and 10 < nfe < 1000


def test_fixed_step_ode_is_deterministic_and_converges():
    sde = SDES["VP"]
    x_T = sde.prior_sample((200, 2), generator=0)
    score = MIX.marginal_score(sde)
    a = sampling.ode_sample(score, sde, x_T, method="rk4", n_steps=100)
    b = sampling.ode_sample(score, sde, x_T, method="rk4", n_steps=100)
    reference = sampling.ode_sample(score, sde, x_T, rtol=1e-6, atol=1e-6)
    assert torch.equal(a, b)
    assert (a - reference).abs().max() < 2e-2
    with pytest.raises(ValueError, match="n_steps"):
        sampling.ode_sample(score, sde, x_T, method="rk4")


def guarded_score(sde, eps, times):
    inner = MIX.marginal_score(sde)

    def score(x, t):
        times.append((t.min().item(), t.max().item()))
        if t.min() < eps or t.max() > sde.T:
            raise AssertionError(f"score called at t = {t.min().item()} outside [{eps}, {sde.T}]")
        return inner(x, t)

    return score


@pytest.mark.parametrize("name", ["VE", "VP"])
def test_ode_never_evaluates_the_score_outside_eps_T(name):
    # without the guard, dopri5 steps past eps (measured: evaluations at t = -0.037 on a stiff field)
    sde, eps, times = SDES[name], 1e-3, []
    sampling.ode_sample(guarded_score(sde, eps, times), sde, sde.prior_sample((256, 2), generator=0), eps=eps)
    likelihood.log_prob(guarded_score(sde, 1e-5, times), sde, MIX.sample(16, generator=1), eps=1e-5)
    assert len(times) > 20


@pytest.mark.parametrize("name", SDES)
def test_ode_likelihood_equals_the_exact_log_density(name):
    sde = SDES[name]
    mix = MIX.to(dtype=torch.float64)
    x = 1.3 * mix.sample(32, generator=3)
    eps = 1e-5
    lp = likelihood.log_prob(
        mix.marginal_score(sde), sde, x, eps=eps, rtol=1e-7, atol=1e-7, prior_log_prob=mix.marginal(sde, sde.T).log_prob
    )
    torch.testing.assert_close(lp, mix.marginal(sde, eps).log_prob(x), rtol=0, atol=2e-4)


def test_hutchinson_likelihood_is_unbiased():
    sde = SDES["VP"]
    mix = MIX.to(dtype=torch.float64)
    point = mix.sample(1, generator=4)
    copies = point.expand(256, 2).contiguous()  # every copy gets its own probe: 256 independent estimates
    score, prior = mix.marginal_score(sde), mix.marginal(sde, sde.T).log_prob
    exact = likelihood.log_prob(score, sde, point, prior_log_prob=prior, rtol=1e-7, atol=1e-7)
    for probe in ("gaussian", "rademacher"):
        estimates = likelihood.log_prob(score, sde, copies, divergence="hutchinson", probe=probe, prior_log_prob=prior, generator=5)
        se = estimates.std() / math.sqrt(len(estimates))
        assert abs(estimates.mean() - exact) < 4 * se
        assert estimates.std() > 1e-3  # it is an estimate, not the exact divergence


def test_bits_per_dim_on_tiny_images():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (3, 1, 4, 4))
    sde = SDES["VP"]
    # a Gaussian 'model' of 16-pixel images in [-1, 1]: exact scores through the mixture
    model = GaussianMixture([1.0], torch.zeros(1, 16), [0.3])
    bpd = likelihood.bits_per_dim(model.marginal_score(sde), sde, images, generator=0)
    assert bpd.shape == (3,) and torch.isfinite(bpd).all() and (bpd > 0).all()
    # against the closed form: bits/dim of the dequantised images under N(0, 0.3 I) in [-1, 1] space, through the ODE at eps
    u = torch.rand(images.shape, generator=torch.Generator().manual_seed(0))
    x = -1 + 2 * (images + u) / 256
    exact = -(model.marginal(sde, 1e-5).log_prob(x) + 16 * math.log(2) - 16 * math.log(256)) / (16 * math.log(2))
    # 1e-3 bits/dim = 0.011 nats over 16 pixels, 13x the largest float32 VP ODE error seen (8e-4 nats; measured gap 1e-5)
    torch.testing.assert_close(bpd, exact, rtol=0, atol=1e-3)


def test_samplers_and_likelihood_are_shape_agnostic():
    sde = SDES["VP"]
    flat_score = MIX.marginal_score(sde)
    mix4 = GaussianMixture(MIX.weights, torch.cat([MIX.means, -MIX.means], 1), torch.full((4, 4), 0.36))
    image_score = mix4.marginal_score(sde)
    x_flat = sde.prior_sample((8, 4), generator=0)
    x_img = x_flat.reshape(8, 1, 2, 2)
    for run in (
        lambda s, x: sampling.pc_sample(s, sde, x, 20, generator=1),
        lambda s, x: sampling.ode_sample(s, sde, x, method="euler", n_steps=20),
        lambda s, x: likelihood.log_prob(s, sde, x, method="euler", n_steps=20),
        lambda s, x: losses.sde_dsm(s, x, sde, generator=2),
    ):
        torch.testing.assert_close(run(image_score, x_img).reshape(-1), run(image_score, x_flat).reshape(-1))
    assert flat_score(torch.zeros(3, 2), torch.full((3,), 0.5)).shape == (3, 2)


def test_sde_dsm_is_minimised_by_the_exact_marginal_score_and_weightings_agree():
    sde = SDES["VP"]
    x = MIX.sample(20_000, generator=0)
    exact = MIX.marginal_score(sde)
    best = losses.sde_dsm(exact, x, sde, generator=1, reduction="none")
    worse = losses.sde_dsm(lambda x, t: 0.8 * exact(x, t), x, sde, generator=1, reduction="none")
    diff = worse - best  # same t and z (same generator): a paired comparison
    assert diff.mean() > 4 * diff.std() / math.sqrt(len(x))
    # likelihood weighting = g(t)^2 / s(t)^2 times the sigma^2 weighting, sample by sample
    g = torch.Generator().manual_seed(1)
    t = 1e-5 + (sde.T - 1e-5) * torch.rand(len(x), generator=g)
    ratio = sde.diffusion(t) ** 2 / sde.marginal_coeffs(t)[1] ** 2
    likelihood_weighted = losses.sde_dsm(exact, x, sde, weighting="likelihood", generator=1, reduction="none")
    torch.testing.assert_close(likelihood_weighted, ratio.float() * best, rtol=1e-4, atol=1e-5)
    # Min-SNR-gamma = min(SNR, gamma) / SNR times the sigma^2 weighting: below 1 exactly where SNR > gamma
    mean_scale, std = sde.marginal_coeffs(t)
    snr = (mean_scale / std) ** 2
    for gamma in (5.0, 0.5):
        min_snr = losses.sde_dsm(exact, x, sde, weighting="min_snr", generator=1, snr_gamma=gamma, reduction="none")
        torch.testing.assert_close(min_snr, (snr.clamp(max=gamma) / snr).float() * best, rtol=1e-4, atol=1e-5)
        assert 0.05 < (min_snr < best).float().mean() < 0.95  # both sides of gamma are drawn
    with pytest.raises(ValueError, match="snr_gamma"):
        losses.sde_dsm(exact, x, sde, weighting="min_snr", snr_gamma=0.0)


def test_pc_callback_and_determinism():
    sde = SDES["VE"]
    seen = []
    a = sampling.pc_sample(MIX.marginal_score(sde), sde, sde.prior_sample((16, 2), generator=0), 10, generator=3, callback=seen.append)
    b = sampling.pc_sample(MIX.marginal_score(sde), sde, sde.prior_sample((16, 2), generator=0), 10, generator=3)
    assert torch.equal(a, b)
    assert [s["i"] for s in seen] == list(range(10)) and seen[-1]["t"] == pytest.approx(1e-3) and "x_mean" in seen[0]


def test_pc_divergence_raises_with_a_hint():
    # the corrector's step is normalised by |s| and cannot blow up; a predictor with an absurd score can
    sde = SDES["VE"]
    with pytest.raises(ValueError, match="take more steps"):
        sampling.pc_sample(lambda x, t: 1e30 * x, sde, torch.ones(4, 2), 5, predictor="euler_maruyama", corrector=None)


def test_learned_time_conditional_score_through_condition_on_std():
    # a few hundred steps of sde_dsm already halve the Fisher divergence at mid-range times
    sde = SDES["VP"]
    torch.manual_seed(0)
    net = ScoreMLP(2, hidden=64, n_layers=2, n_fourier=8, log_condition=True, divide_by_sigma=True)
    score = condition_on_std(net, sde)
    at = lambda t: lambda x: score(x, torch.full((len(x),), t))
    before = fisher_divergence(at(0.3), MIX.marginal(sde, 0.3), n=2000, generator=0)
    fit(net, lambda m, x, g: losses.sde_dsm(score, x, sde, eps=1e-3, generator=g), MIX.sample, TrainConfig(n_steps=400, progress=False))
    after = fisher_divergence(at(0.3), MIX.marginal(sde, 0.3), n=2000, generator=0)
    assert after.value + 4 * after.se < before.value / 2


def test_ode_path_output():
    sde = SDES["VP"]
    x_T = sde.prior_sample((50, 2), generator=0)
    path = sampling.ode_sample(MIX.marginal_score(sde), sde, x_T, n_saved=11)
    assert path.shape == (11, 50, 2)
    torch.testing.assert_close(path[0], x_T)
    torch.testing.assert_close(path[-1], sampling.ode_sample(MIX.marginal_score(sde), sde, x_T), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("bad", [float("nan"), -0.1, 1.5])
def test_a_time_expanded_to_the_batch_is_still_checked_and_scored_as_a_full_batch(bad):
    """Samplers pass one time expanded to the batch (stride 0), which the range check reads as one value: a bad one
    is still refused, and the exact marginal score gives the same numbers as for a full batch of that time."""
    sde = VPSDE()
    with pytest.raises(ValueError, match=r"t must lie in \[0, T\]"):
        sde.check_time(torch.full((1,), bad).expand(7))
    mix = GaussianMixture([0.4, 0.6], [[-1.0, 0.5], [2.0, -1.0]], [0.3, 0.9], dtype=torch.float64)
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shared = torch.full((1,), 0.3, dtype=torch.float64).expand(7)
    score = mix.marginal_score(sde)
    torch.testing.assert_close(score(x, shared), score(x, torch.full((7,), 0.3, dtype=torch.float64)))
    torch.testing.assert_close(score(x, shared), mix.marginal(sde, 0.3).score(x))


@pytest.mark.parametrize("name", SDES)
def test_pc_sample_from_t_start_reaches_the_mixture_from_its_marginal(name):
    """SDEdit's start (Meng et al. 2022): exact samples of p_t0 at t_start = t0, carried to eps by the exact score,
    are samples of the mixture; the grid runs from t0 (the callback's times), and t_start = T is the default."""
    sde = SDES[name]
    t0, n_steps = 0.3 * sde.T, 150
    x_t0 = MIX.marginal(sde, t0).sample(2000, generator=0)
    seen = []
    x = sampling.pc_sample(MIX.marginal_score(sde), sde, x_t0, n_steps, t_start=t0, generator=1, callback=seen.append)
    result = tv_grid(x, MIX, bounds=(-6, 6), bins=20)
    assert result.tv < result.floor + 4 * result.spread, result
    assert seen[0]["t"] == pytest.approx(t0 - (t0 - 1e-3) / n_steps) and seen[-1]["t"] == pytest.approx(1e-3)
    x_T = sde.prior_sample((16, 2), generator=2)
    default = sampling.pc_sample(MIX.marginal_score(sde), sde, x_T, 10, generator=3)
    assert torch.equal(default, sampling.pc_sample(MIX.marginal_score(sde), sde, x_T, 10, generator=3, t_start=sde.T))
    for bad in (0.0, 1e-4, 1.5 * sde.T):
        with pytest.raises(ValueError, match="t_start"):
            sampling.pc_sample(MIX.marginal_score(sde), sde, x_T, 10, t_start=bad)
