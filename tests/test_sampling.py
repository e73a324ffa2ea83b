"""Langevin samplers and noise schedules against closed forms, scipy and direct simulation."""

import math

import numpy as np
import pytest
import torch
from scipy import optimize
from scipy.stats import norm

from scorelab import VESDE, VPSDE, GaussianMixture, noise, sampling
from scorelab.datasets import far_apart_mixture, ring_mixture

S2 = 0.8  # target variance of the 1-D-per-coordinate Gaussian tests


def gaussian_score(x):
    return -x / S2


def variance_within(x, expected, n_se=4.0):
    """Each coordinate's sample variance within n_se standard errors (Var of s^2 = 2 v^2 / (n - 1)) of `expected`."""
    se = expected * math.sqrt(2 / (len(x) - 1))
    return bool(((x.var(0) - expected).abs() < n_se * se).all())


def test_ula_reaches_the_discretised_chains_stationary_variance():
    # x' = (1 - eps/s^2) x + sqrt(2 eps) z has stationary variance s^2 * 2 / (2 - eps / s^2)
    eps, n = 0.5 * S2, 40_000
    x0 = torch.zeros(n, 2, dtype=torch.float64)
    x = sampling.langevin(gaussian_score, x0, eps, 60, generator=0)
    biased = S2 * 2 / (2 - eps / S2)
    assert variance_within(x, biased)
    assert not variance_within(x, S2)  # the bias is detectable at this sample size


def test_mala_is_exactly_stationary_and_accepts_in_between():
    eps, n = 0.5 * S2, 40_000
    start = math.sqrt(S2) * torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x, acceptance = sampling.mala(lambda x: -(x**2).sum(1) / (2 * S2), start, eps, 30, generator=2)
    assert variance_within(x, S2)
    assert 0 < acceptance < 1


def test_mala_corrects_ula_on_a_mixture():
    # eps = 0.2 against component variances 0.3 and 0.6: ULA inflates them (2/(2 - eps/s^2) = 1.5x and 1.2x), MALA does not
    mix = GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.5, 0.5]], [0.3, 0.6], dtype=torch.float64)
    n = 20_000
    start = mix.sample(n, generator=3)
    x, acceptance = sampling.mala(mix.log_prob, start, 0.2, 40, generator=4)
    y = sampling.langevin(mix.score, start, 0.2, 40, generator=4)
    mean = (mix.weights[:, None] * mix.means).sum(0)
    second = (mix.weights[:, None] * (mix.covs.diagonal(dim1=1, dim2=2) + mix.means**2)).sum(0)
    variance = second - mean**2
    se = ((x - mean) ** 2).std(0) / math.sqrt(n)  # SE of a sample variance, from the sample's fourth moment
    assert ((x.var(0) - variance).abs() < 4 * se).all()
    assert ((y.var(0) - variance) > 4 * se).any()
    assert ((x.mean(0) - mean).abs() < 4 * x.std(0) / math.sqrt(n)).all()
    assert 0.3 < acceptance < 1


def test_same_seed_same_output_and_callback_sees_every_step():
    seen = []
    a = sampling.langevin(gaussian_score, torch.zeros(10, 2), 0.1, 5, generator=7, callback=lambda d: seen.append((d["i"], d["x"].shape)))
    b = sampling.langevin(gaussian_score, torch.zeros(10, 2), 0.1, 5, generator=7)
    assert torch.equal(a, b) and [i for i, _ in seen] == list(range(5))
    sigmas = noise.geometric_sigmas(1.0, 0.1, 3)
    levels = []
    c = sampling.annealed_langevin(
        lambda x, s: -x / (1 + s[:, None] ** 2), torch.zeros(4, 2), sigmas, 0.01, 2, generator=3, callback=levels.append
    )
    d = sampling.annealed_langevin(lambda x, s: -x / (1 + s[:, None] ** 2), torch.zeros(4, 2), sigmas, 0.01, 2, generator=3)
    assert torch.equal(c, d)
    assert [e["level"] for e in levels] == [0, 0, 1, 1, 2, 2] and levels[0]["sigma"] == pytest.approx(1.0)
    assert levels[0]["step_size"] == pytest.approx(0.01 * 1.0 / 0.01)  # alpha_i = eps sigma_i^2 / sigma_L^2


def test_annealed_langevin_score_receives_a_batch_of_sigmas():
    shapes = []

    def score(x, sigma):
        shapes.append(sigma.shape)
        return -x

    sampling.annealed_langevin(score, torch.zeros(6, 1, 2, 2), [1.0, 0.5], 0.01, 1, denoise=True, generator=0)
    assert shapes == [(6,)] * 3


def test_annealed_langevin_with_exact_scores_recovers_the_mode_weights():
    # 100 levels x 20 steps at Technique 4's step size: the annealing's own bias on the small-mode
    # fraction is 0.009 (measured with 20 000 particles), one SE at n = 2000. Coarser schedules fail
    # this test (10 levels x 50 steps: 0.24), as does plain Langevin (about 0.5).
    mix = far_apart_mixture().to(dtype=torch.float64)
    sigmas = noise.geometric_sigmas(20.0, 0.1, 100)
    step = noise.langevin_step_size(sigmas, 20)
    n = 2000
    start = 20 * torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = sampling.annealed_langevin(mix.noisy_score, start, sigmas, step.step_size, 20, denoise=True, generator=1)
    small = (x.sum(1) < 0).double().mean().item()
    assert abs(small - 0.2) < 4 * math.sqrt(0.2 * 0.8 / n)
    # whereas plain Langevin from a broad start keeps the initial split
    y = sampling.langevin(
        mix.score, 20 * torch.rand(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) - 10, 0.1, 500, generator=1
    )
    assert abs((y.sum(1) < 0).double().mean().item() - 0.2) > 0.2


def test_inpainting_samples_the_exact_conditional():
    mix = ring_mixture(n_modes=4, radius=3.0, std=0.7).to(dtype=torch.float64)
    mask = torch.tensor([True, False])
    value = 0.8
    conditional = mix.condition(mask, [value])
    sigmas = noise.geometric_sigmas(8.0, 0.05, 100)
    n = 4000
    start = 4 * torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    known = torch.tensor([value, 0.0], dtype=torch.float64)
    x = sampling.annealed_langevin(
        mix.noisy_score, start, sigmas, noise.langevin_step_size(sigmas, 20).step_size, 20, mask=mask, known=known, generator=2
    )
    assert torch.all(x[:, 0] == value)
    # the unknown coordinate's law: compare its CDF at a few points with the exact conditional mixture
    ref = conditional.sample(200_000, generator=3)[:, 0]
    for q in (-2.0, 0.0, 2.0):
        p_hat, p = (x[:, 1] < q).double().mean().item(), (ref < q).double().mean().item()
        assert abs(p_hat - p) < 4 * math.sqrt(p * (1 - p) / n)


def _known_parts_seen(renoise, n_steps_each=3):
    """The first coordinate the score sees at every step of a 2-level inpainting run, (levels * steps, n)."""
    seen = []

    def score(x, sigma):
        seen.append(x[:, 0].clone())
        return torch.zeros_like(x)

    known = torch.tensor([2.0, 0.0], dtype=torch.float64)
    start = torch.zeros(20_000, 2, dtype=torch.float64)
    x = sampling.annealed_langevin(
        score, start, [3.0, 0.5], 0.01, n_steps_each, mask=torch.tensor([True, False]), known=known, renoise=renoise, generator=0
    )
    assert torch.all(x[:, 0] == 2.0)  # the known entries come back clean
    return torch.stack(seen)


@pytest.mark.parametrize("renoise", ["step", "level"])
def test_inpainting_noises_the_known_part_at_the_level_once_per_step_or_once_per_level(renoise):
    seen = _known_parts_seen(renoise)
    for level, sigma in enumerate([3.0, 0.5]):
        block = seen[3 * level : 3 * level + 3]
        # each step's noisy copy is known + sigma z: mean 2, SD sigma (SE of an SD from 20 000 draws: 0.5%)
        assert ((block.mean(1) - 2).abs() < 4 * sigma / math.sqrt(20_000)).all()
        assert ((block.std(1) / sigma - 1).abs() < 4 / math.sqrt(2 * 20_000)).all()
        if renoise == "level":  # Song & Ermon 2019, Alg. 2: one draw held for the level's steps
            assert torch.equal(block[0], block[1]) and torch.equal(block[1], block[2])
        else:  # a fresh draw before every step (NCSNv2's code)
            assert not torch.equal(block[0], block[1]) and not torch.equal(block[1], block[2])
    assert not torch.equal(seen[2], seen[3])  # a new level, a new draw, in both variants


def test_inpainting_variants_differ_only_in_when_the_known_part_is_drawn():
    # with one step per level there is nothing to hold: the two variants are the same chain, draw for draw
    assert torch.equal(_known_parts_seen("step", 1), _known_parts_seen("level", 1))
    with pytest.raises(ValueError, match="renoise"):
        sampling.annealed_langevin(lambda x, s: -x, torch.zeros(4, 2), [1.0, 0.5], 0.1, 1, renoise="once")


def _printed_algorithm_2(score, x, sigmas, step_size, n_steps_each, mask, known, generator):
    """Song & Ermon 2019, Alg. 2 as the notes print it (Khungurn, Sec. 5.2), in this module's step convention:
    draw y = known + sigma_i z at the start of level i; after every Langevin step, write y over the known part."""
    sigma_l = sigmas[-1].item()
    for sigma in sigmas.tolist():
        alpha = step_size * sigma**2 / sigma_l**2
        y = known + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        for _ in range(n_steps_each):
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            x = x + alpha * score(x, torch.full((len(x),), sigma, dtype=x.dtype)) + math.sqrt(2 * alpha) * z
            x = torch.where(mask, y, x)
    return x


@pytest.mark.slow
def test_level_renoise_matches_algorithm_2_as_printed():
    # The library also writes y_i in at the start of level i (as the authors' NCSN code does); as printed, a level's
    # first step still sees y_{i-1}. One step in 20 differs; on lesson 04's bimodal case (x1 = 0, mode weights 1/5,
    # 4/5) the two give the same biased fraction below 0 (about 0.28, not 0.20) within sampling error.
    mix = far_apart_mixture()
    sigmas = noise.geometric_sigmas(20.0, 0.1, 100)
    step = noise.langevin_step_size(sigmas, 20).step_size
    mask, known, n = torch.tensor([True, False]), torch.zeros(2), 8000
    start = 20 * torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    printed = _printed_algorithm_2(mix.noisy_score, start, sigmas, step, 20, mask, known, torch.Generator().manual_seed(1))
    library = sampling.annealed_langevin(mix.noisy_score, start, sigmas, step, 20, mask=mask, known=known, renoise="level", generator=2)
    a, b = (printed[:, 1] < 0).double().mean().item(), (library[:, 1] < 0).double().mean().item()
    se = math.sqrt(2 * 0.28 * 0.72 / n)  # two independent binomial fractions
    assert abs(a - b) < 4 * se
    assert min(a, b) - 0.2 > 4 * math.sqrt(0.2 * 0.8 / n)  # both biased: the comparison is not between two exact samplers


def test_score_on_unknown_runs_the_conditional_chain_on_the_unknown_coordinates():
    # independent coordinates: the conditional of x2 given x1 is x2's own law, so replacement inpainting and the
    # conditional chain fed the same random numbers are the same chain, to rounding
    g = GaussianMixture([1.0], [[0.0, 1.0, -1.0]], [[[1.0, 0.0, 0.0], [0.0, 2.0, 0.5], [0.0, 0.5, 1.0]]], dtype=torch.float64)
    mask = torch.tensor([True, False, False])
    cond = g.condition(mask, [1.5])
    on_unknown = sampling.score_on_unknown(cond.noisy_score, mask)
    x = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    s = on_unknown(x, torch.full((7,), 0.3, dtype=torch.float64))
    assert torch.all(s[:, 0] == 0)
    torch.testing.assert_close(s[:, 1:], g.noisy_score(x, 0.3)[:, 1:], rtol=1e-12, atol=1e-12)
    sigmas = noise.geometric_sigmas(5.0, 0.1, 10)
    known = torch.tensor([1.5, 0.0, 0.0], dtype=torch.float64)
    for renoise in ("step", "level"):
        replaced, conditional = (
            sampling.annealed_langevin(score, 3 * x, sigmas, 0.01, 5, mask=mask, known=known, renoise=renoise, generator=1)
            for score in (g.noisy_score, on_unknown)
        )
        torch.testing.assert_close(replaced, conditional, rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match="mask"):
        sampling.score_on_unknown(cond.noisy_score, torch.tensor([1, 0, 0]))
    with pytest.raises(ValueError, match="mask"):
        sampling.score_on_unknown(cond.noisy_score, torch.tensor([True, True, True]))
    with pytest.raises(ValueError, match="shape"):
        on_unknown(torch.zeros(4, 2, dtype=torch.float64), torch.ones(4, dtype=torch.float64))


def test_noisy_score_matches_convolve_per_sample():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 2, 2, generator=g, dtype=torch.float64)
    mix = GaussianMixture(
        [0.2, 0.3, 0.5], 3 * torch.randn(3, 2, generator=g, dtype=torch.float64), a @ a.transpose(1, 2) + 0.3 * torch.eye(2)
    )
    x = 1.3 * mix.sample(50, generator=1)
    sigma = torch.rand(50, generator=g, dtype=torch.float64) + 0.05
    ref = torch.stack([mix.convolve(s.item()).score(xi[None])[0] for xi, s in zip(x, sigma)])
    torch.testing.assert_close(mix.noisy_score(x, sigma), ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(mix.noisy_score(x, 0.3), mix.convolve(0.3).score(x), rtol=1e-10, atol=1e-10)


def test_condition_against_the_joint_density():
    mix = GaussianMixture([0.4, 0.6], [[0.0, 1.0, -1.0], [2.0, -1.0, 0.5]], [[1.0, 0.5, 2.0], [0.7, 1.2, 0.4]], dtype=torch.float64)
    mask = torch.tensor([True, False, True])
    values = torch.tensor([1.0, 0.2], dtype=torch.float64)
    cond = mix.condition(mask, values)
    # p(u | o) = p(u, o) / p(o): log-densities differ by a constant in u
    u = cond.sample(20, generator=0)
    joint = torch.empty(20, 3, dtype=torch.float64)
    joint[:, mask], joint[:, ~mask] = values, u
    diff = mix.log_prob(joint) - cond.log_prob(u)
    torch.testing.assert_close(diff, diff[:1].expand(20), rtol=1e-10, atol=1e-10)


def test_divergence_raises_naming_the_step_size():
    with pytest.raises(ValueError, match="step_size=50"):
        sampling.langevin(gaussian_score, torch.ones(4, 2), 50.0, 200)
    with pytest.raises(ValueError, match="level 0"):
        sampling.annealed_langevin(lambda x, s: -x * 1e3, torch.ones(4, 2), [1.0, 0.5], 1.0, 200)


# --- noise schedules and the improved techniques ---------------------------------------------


def test_geometric_sigmas():
    s = noise.geometric_sigmas(10.0, 0.01, 4)
    torch.testing.assert_close(s, torch.tensor([10.0, 1.0, 0.1, 0.01]))


def test_sigma_max_is_the_largest_pairwise_distance_without_an_n_by_n_matrix():
    x = torch.randn(3001, 3, generator=torch.Generator().manual_seed(0))
    assert noise.sigma_max_from_data(x, block=256) == pytest.approx(torch.cdist(x.double(), x.double()).max().item())


@pytest.mark.parametrize("dim", [5, 10, 100, 784, 3072])
def test_ratio_for_dimension_against_scipy(dim):
    def overlap(g):
        c = math.sqrt(2 * dim) * (g - 1)
        return norm.cdf(c + 3 * g) - norm.cdf(c - 3 * g) - 0.5

    grid = 1 + np.geomspace(1e-4, 1e3, 4000)
    first = np.argmax(np.array([overlap(g) for g in grid]) < 0)  # first sign change on a fine grid
    ref = optimize.brentq(overlap, grid[first - 1], grid[first], xtol=1e-14)
    assert noise.ratio_for_dimension(dim) == pytest.approx(ref, rel=1e-9)


def test_ratio_for_dimension_has_no_solution_in_low_dimension():
    with pytest.raises(ValueError, match="never falls"):
        noise.ratio_for_dimension(2)


def test_variance_ratio_formula_against_direct_simulation():
    # single-point data: the level-i target is N(0, sigma_i^2); start at the previous level's variance
    sigmas = noise.geometric_sigmas(4.0, 0.5, 4).double()
    eps, T, n = 0.02, 15, 100_000
    ratios = noise.variance_ratio(eps, sigmas, T)
    g = torch.Generator().manual_seed(0)
    for i in range(1, len(sigmas)):
        x = sigmas[i - 1] * torch.randn(n, 1, dtype=torch.float64, generator=g)
        alpha = eps * sigmas[i].item() ** 2 / sigmas[-1].item() ** 2
        target_variance = sigmas[i].item() ** 2
        x = sampling.langevin(lambda v: -v / target_variance, x, alpha, T, generator=g)  # noqa: B023 (used at once)
        measured = x.var().item() / sigmas[i].item() ** 2
        assert abs(measured - ratios[i - 1].item()) < 4 * ratios[i - 1].item() * math.sqrt(2 / (n - 1))


def test_langevin_step_size_minimises_the_worst_ratio_error():
    sigmas = noise.geometric_sigmas(20.0, 0.01, 10)
    for T in (5, 100):
        step = noise.langevin_step_size(sigmas, T)
        a_grid = np.geomspace(1e-8, 0.999, 4000)
        worst = [(noise.variance_ratio(a * 1e-4, sigmas, T) - 1).abs().max().item() for a in a_grid]
        assert abs(step.ratio - 1) <= min(worst) + 1e-6
        assert step.ratio > 1  # exactly 1 is not attainable


# --- divergence: never NaN without an error (issue 14) ------------------------------------------------------------


def _nan_below(t_bad: float):
    """A time-conditional score that turns NaN below t_bad (as a network can near t = 0)."""

    def score(x, t):
        return torch.where((t < t_bad).reshape(-1, *[1] * (x.ndim - 1)), torch.full_like(x, math.nan), -x)

    return score


def test_ode_sample_and_log_prob_raise_instead_of_returning_nan():
    from scorelab.likelihood import log_prob
    from scorelab.sampling import DivergenceError

    sde, x = VPSDE(), torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(DivergenceError, match="euler.*n_steps=10"):
        sampling.ode_sample(_nan_below(0.5), sde, x, method="euler", n_steps=10)
    with pytest.raises(DivergenceError, match="dopri5"):  # the adaptive solver's step underflows, or its result is NaN
        sampling.ode_sample(_nan_below(0.5), sde, x)
    with pytest.raises(DivergenceError):
        log_prob(_nan_below(0.5), sde, x, method="euler", n_steps=10)
    with pytest.raises(DivergenceError, match="prior"):
        log_prob(lambda y, t: -y, sde, x, method="euler", n_steps=2, prior_log_prob=lambda y: torch.full((len(y),), -math.inf))
    assert isinstance(DivergenceError("x"), ValueError)  # caught like the samplers' other errors


def test_torchdiffeq_underflow_becomes_a_clear_error():
    from scorelab.sampling import DivergenceError

    stiff = lambda x, t: -1e12 * x * (t < 0.5).reshape(-1, 1)  # noqa: E731
    with pytest.raises(DivergenceError, match="gave up|non-finite"):
        sampling.ode_sample(stiff, VPSDE(), torch.randn(4, 2), rtol=1e-9, atol=1e-9)


def test_pc_sample_checks_its_final_step_and_names_its_own_arguments():
    from scorelab.sampling import DivergenceError

    sde, x = VPSDE(), torch.randn(4, 2)
    with pytest.raises(DivergenceError, match="denoising"):  # NaN only at t = eps, where the Tweedie step evaluates
        sampling.pc_sample(_nan_below(2e-3), sde, x, 2, corrector=None, eps=1e-3)
    with pytest.raises(DivergenceError, match=r"snr.*n_steps=3") as info:
        sampling.pc_sample(lambda y, t: 1e300 * y, sde, x.double(), 3, generator=0)
    assert "step_size" not in str(info.value)  # pc_sample has no step_size to reduce


def test_mala_warns_when_nothing_was_accepted():
    narrow = lambda x: -1e8 * (x**2).sum(1)  # noqa: E731
    with pytest.warns(RuntimeWarning, match="accepted none.*reduce step_size"):
        _, rate = sampling.mala(narrow, torch.ones(4, 2), 1.0, 3, generator=0)
    assert rate == 0


def _nan_score(x, *args):
    return torch.full_like(x, math.nan)


def _huge_score(x, *args):
    return 1e300 * torch.sign(x) * x.abs().clamp_min(1.0)  # finite, but overflows float64 within a step or two


def _divergence_cases():
    from scorelab.likelihood import bits_per_dim, log_prob

    sde, ve = VPSDE(), VESDE(0.01, 10.0)
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    nan_lp = lambda y: torch.full((len(y),), math.nan, dtype=y.dtype) + y.sum(1)  # noqa: E731
    huge_lp = lambda y: 1e300 * (y**2).sum(1)  # noqa: E731
    runs = {
        "langevin": lambda s: sampling.langevin(s, x, 0.1, 5, generator=0),
        "annealed_langevin": lambda s: sampling.annealed_langevin(s, x, [1.0, 0.1], 0.1, 3, generator=0),
        "pc euler_maruyama": lambda s: sampling.pc_sample(s, sde, x, 3, predictor="euler_maruyama", generator=0),
        "pc reverse_diffusion": lambda s: sampling.pc_sample(s, sde, x, 3, generator=0),
        "pc ancestral (VE)": lambda s: sampling.pc_sample(s, ve, x, 3, predictor="ancestral", corrector=None, generator=0),
        "pc corrector only": lambda s: sampling.pc_sample(s, sde, x, 3, predictor=None, generator=0),
        "ode dopri5": lambda s: sampling.ode_sample(s, sde, x),
        "ode euler": lambda s: sampling.ode_sample(s, sde, x, method="euler", n_steps=3),
        "ode rk4": lambda s: sampling.ode_sample(s, sde, x, method="rk4", n_steps=3),
        "log_prob exact": lambda s: log_prob(s, sde, x, method="euler", n_steps=3),
        "log_prob hutchinson": lambda s: log_prob(s, sde, x, divergence="hutchinson", method="euler", n_steps=3, generator=0),
        "bits_per_dim": lambda s: bits_per_dim(s, sde, torch.randint(0, 256, (4, 2)), method="euler", n_steps=3),
    }
    cases = [
        (f"{name}, {kind}", run, score) for name, run in runs.items() for kind, score in (("NaN", _nan_score), ("overflow", _huge_score))
    ]
    cases += [
        (f"mala, {kind}", lambda lp: sampling.mala(lp, x, 0.1, 3, generator=0), lp) for kind, lp in (("NaN", nan_lp), ("overflow", huge_lp))
    ]
    return cases


@pytest.mark.parametrize("name, run, bad", _divergence_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_sampler_and_likelihood_raises_instead_of_returning_nan(name, run, bad):
    """26 divergence cases: a NaN or an overflowing score (log-density for MALA) in every sampler and likelihood."""
    from scorelab.sampling import DivergenceError

    try:
        out = run(bad)
    except DivergenceError:
        return
    outputs = out if isinstance(out, tuple) else (out,)
    tensors = [o for o in outputs if isinstance(o, torch.Tensor)]
    assert all(torch.isfinite(t).all() for t in tensors), f"{name}: returned non-finite values without an error"


def test_finiteness_is_checked_every_k_steps_and_names_the_step_range():
    """No host sync per step: particles are checked every CHECK_EVERY steps and after the last (every step when a
    callback looks at them), and the error names the range of steps in which they went non-finite."""
    from scorelab.sampling import CHECK_EVERY, DivergenceError

    calls = {"n": 0}

    def score_nan_from_step_3(x):
        calls["n"] += 1
        return -x if calls["n"] <= 3 else torch.full_like(x, math.nan)

    x = torch.zeros(4, 2)
    with pytest.raises(DivergenceError, match=rf"at one of steps 0-{CHECK_EVERY - 1}\b.*step_size"):
        sampling.langevin(score_nan_from_step_3, x, 0.1, 3 * CHECK_EVERY)
    calls["n"] = 0
    with pytest.raises(DivergenceError, match=r"at step 3\b"):
        sampling.langevin(score_nan_from_step_3, x, 0.1, 3 * CHECK_EVERY, callback=lambda info: None)
    calls["n"] = 0
    with pytest.raises(DivergenceError, match=r"at one of steps 0-4\b"):  # the last step is always checked
        sampling.langevin(score_nan_from_step_3, x, 0.1, 5)
    calls["n"] = 0
    with pytest.raises(DivergenceError, match=rf"at one of steps 0-{CHECK_EVERY - 1}\b.*level 0"):
        sampling.annealed_langevin(lambda v, s: score_nan_from_step_3(v), x, [1.0, 0.5], 0.01, 2 * CHECK_EVERY)


@pytest.mark.parametrize("shape", [(50, 2), (6, 1, 4, 4)])
def test_langevin_corrector_step_is_song_et_al_algorithm_5(shape):
    """x' = x + e s + sqrt(2 e) z with e = 2 alpha (snr |z| / |s|)^2, the norms batch means of per-sample norms, for a
    mixture's score (laid out transposed) and for images."""
    sde, D = VPSDE(), math.prod(shape[1:])
    mix = ring_mixture(n_modes=3, radius=2.0, std=0.5) if D == 2 else GaussianMixture([0.5, 0.5], torch.randn(2, D), torch.ones(2))
    g = torch.Generator().manual_seed(5)
    x, z = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    score = mix.to(dtype=torch.float64).marginal_score(sde)
    t, t_prev = 0.4, 0.45
    schedule = sampling._Schedule(sde, [t_prev, t])
    out, mean = sampling._langevin_corrector(sde, schedule, score, x, t, t_prev, z, 0.16)
    s = score(x, torch.full((len(x),), t, dtype=torch.float64))
    alpha = (sde.marginal_coeffs(t_prev)[0] / sde.marginal_coeffs(t)[0]).item() ** 2  # 1 - beta_i: t_prev > t
    per_sample_norm = lambda v: torch.linalg.vector_norm(v.reshape(len(v), -1), dim=1).mean()  # noqa: E731
    e = 2 * alpha * (0.16 * per_sample_norm(z) / per_sample_norm(s)) ** 2
    torch.testing.assert_close(mean, x + e * s, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, x + e * s + (2 * e).sqrt() * z, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_fixed_step_methods_step_as_torchdiffeqs_and_save_the_same_path(method):
    """scorelab steps the fixed-step methods itself (it knows their times in advance): every saved state, between
    steps too (linear, as torchdiffeq's), is what torchdiffeq's solver of the same name gives, for a tensor state and a
    tuple state, integrating backwards in time as the samplers do."""
    from torchdiffeq import odeint

    from scorelab.sampling import integrate_ode

    def flow(t, y):
        return torch.cos(3 * torch.as_tensor(t, dtype=torch.float64)) * torch.tanh(y) - 0.5 * y

    def field(t, state):  # the flow and a running integral of a function of it, as the likelihood's state
        return flow(t, state[0]), torch.cos(state[0]).sum(1) * t

    y0 = (torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), torch.zeros(5, dtype=torch.float64))
    ours = integrate_ode(field, y0, 1.0, 0.125, method=method, rtol=1e-5, atol=1e-5, n_steps=7, interval=(0.125, 1.0), n_saved=5)
    times = torch.linspace(1.0, 0.125, 5, dtype=torch.float64)
    theirs = odeint(field, y0, times, method=method, options={"step_size": 0.125})
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    single = integrate_ode(flow, y0[0], 1.0, 0.125, method=method, rtol=1e-5, atol=1e-5, n_steps=7, interval=(0.125, 1.0))
    torch.testing.assert_close(single, theirs[0][-1], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("method, order", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_fixed_step_methods_converge_at_their_order(method, order):
    """On dy/dt = -t y (exact y(t) = y(1) exp((1 - t^2) / 2)) from 1 down to 0, halving the step divides the error by
    2^order: within 5% of it at 16 -> 32 steps (1.98, 3.92 and 15.35: the next term of the error is O(h) smaller,
    while a method one order off is a factor of 2 away)."""
    from scorelab.sampling import integrate_ode

    y1 = torch.ones(1, 1, dtype=torch.float64)
    exact = math.exp(0.5)

    def error(n):
        y0 = integrate_ode(lambda t, y: -t * y, y1, 1.0, 0.0, method=method, rtol=1e-5, atol=1e-5, n_steps=n, interval=(0.0, 1.0))
        return abs(y0.item() - exact)

    assert error(16) / error(32) == pytest.approx(2**order, rel=0.05)
