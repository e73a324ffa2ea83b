"""Bad input gets a ValueError or TypeError that names the offending argument (as a whole word)."""

import math

import numpy as np
import pytest
import torch

from scorelab import (
    EMA,
    VESDE,
    VPSDE,
    EnergyMLP,
    GaussianMixture,
    ScoreMLP,
    TrainConfig,
    datasets,
    fit,
    likelihood,
    losses,
    metrics,
    noise,
    sampling,
    viz,
)

X = torch.randn(8, 2)
NAN_X = X.clone().index_put_((torch.tensor([0]), torch.tensor([1])), torch.tensor(math.nan))
MIX = datasets.ring_mixture(n_modes=2)


def score(x):
    return -x


def time_score(x, t):
    return -x


VP = VPSDE()


CASES = [
    # (call, expected exception, word the message must contain)
    (lambda: GaussianMixture([0.5, 0.6], [[0, 0], [1, 1]], [1, 1]), ValueError, "weights"),
    (lambda: GaussianMixture([1.2, -0.2], [[0, 0], [1, 1]], [1, 1]), ValueError, "weights"),
    (lambda: GaussianMixture([1.0], [[0, 0]], [[[1, 2], [2, 1]]]), ValueError, "covs"),
    (lambda: GaussianMixture([1.0], [[0, 0]], [[[1, 0.5], [0, 1]]]), ValueError, "covs"),
    (lambda: GaussianMixture([1.0], [[0, 0]], [-1.0]), ValueError, "covs"),
    (lambda: GaussianMixture([1.0], [[0, 0]], [[1.0, 0.0]]), ValueError, "covs"),
    (lambda: GaussianMixture([0.5, 0.5], [[0, 0]], [1, 1]), ValueError, "weights"),
    (lambda: GaussianMixture([1.0], [0, 0], [1.0]), ValueError, "means"),
    (lambda: GaussianMixture([1.0], [[0, 0]], [[1.0, 1.0, 1.0]]), ValueError, "covs"),
    (lambda: GaussianMixture([1.0], [[math.nan, 0]], [1.0]), ValueError, "means"),
    (lambda: GaussianMixture([1.0], [["a", "b"]], [1.0]), TypeError, "means"),
    (lambda: MIX.score(torch.randn(4, 3)), ValueError, "x"),
    (lambda: MIX.log_prob(NAN_X), ValueError, "x"),
    (lambda: MIX.score([[0.0, 0.0]]), TypeError, "x"),
    (lambda: MIX.sample(0), ValueError, "n"),
    (lambda: MIX.sample(2.5), TypeError, "n"),
    (lambda: MIX.sample(10, generator="seed"), TypeError, "generator"),
    (lambda: MIX.convolve(-0.1), ValueError, "sigma"),
    (lambda: MIX.convolve(0.0), ValueError, "sigma"),
    (lambda: MIX.affine(0.0, 1.0), ValueError, "scale"),
    (lambda: MIX.affine(1.0, -1.0), ValueError, "noise_std"),
    (lambda: MIX.posterior_mean(X, math.inf), ValueError, "noise_std"),
    (lambda: losses.dsm(score, X, -1.0), ValueError, "sigma"),
    (lambda: losses.dsm(score, X, 0.0), ValueError, "sigma"),
    (lambda: losses.dsm(score, X, torch.tensor([0.1, -0.1] * 4)), ValueError, "sigma"),
    (lambda: losses.dsm(score, X, "0.1"), TypeError, "sigma"),
    (lambda: losses.dsm(score, NAN_X, 0.1), ValueError, "x"),
    (lambda: losses.dsm(score, X, 0.1, noise=torch.randn(3, 2)), ValueError, "noise"),
    (lambda: losses.dsm("score", X, 0.1), TypeError, "score"),
    (lambda: losses.ism(score, torch.randn(5)), ValueError, "x"),
    (lambda: losses.ism(score, torch.ones(4, 2, dtype=torch.long)), TypeError, "x"),
    (lambda: losses.ism(lambda x: x[:, :1], X), ValueError, "score"),
    (lambda: losses.ssm(score, X, projection="uniform"), ValueError, "projection"),
    (lambda: losses.ssm(score, X, n_projections=0), ValueError, "n_projections"),
    (lambda: losses.ssm(score, X, reduction="sum"), ValueError, "reduction"),
    (lambda: losses.esm(score, X, None), TypeError, "true_score"),
    (lambda: losses.ncsn(lambda x, s: x, X, []), ValueError, "sigmas"),
    (lambda: losses.ncsn(lambda x, s: x, X, [1.0, -0.5]), ValueError, "sigmas"),
    (lambda: ScoreMLP(0), ValueError, "dim"),
    (lambda: ScoreMLP(2)(torch.randn(4, 3)), ValueError, "x"),
    (lambda: ScoreMLP(2, log_condition=True), ValueError, "n_fourier"),
    (lambda: ScoreMLP(2, n_fourier=4, log_condition=True)(X, torch.zeros(8)), ValueError, "c"),
    (lambda: EMA(ScoreMLP(2), decay=1.0), ValueError, "decay"),
    (lambda: ScoreMLP(2, n_fourier=4)(X, torch.ones(7)), ValueError, "c"),  # one sigma too few: no silent broadcast
    (lambda: ScoreMLP(2, n_fourier=4)(X, torch.ones(8, 2)), ValueError, "c"),
    (lambda: ScoreMLP(2)(torch.zeros(8, 2, dtype=torch.long)), TypeError, "x"),
    (lambda: fit(ScoreMLP(2), lambda m, x, g: (m(x) ** 2).sum(1), X, TrainConfig(n_steps=1, progress=False)), ValueError, "loss_fn"),
    (lambda: fit(ScoreMLP(2), lambda m, x, g: 1.0, X, TrainConfig(n_steps=1, progress=False)), ValueError, "loss_fn"),
    (lambda: EMA("model"), TypeError, "model"),
    (lambda: TrainConfig(n_steps=0), ValueError, "n_steps"),
    (lambda: TrainConfig(lr=-1e-3), ValueError, "lr"),
    (lambda: TrainConfig(batch_size=1.5), TypeError, "batch_size"),
    (lambda: fit(ScoreMLP(2), None, X), TypeError, "loss_fn"),
    (lambda: fit(ScoreMLP(2), lambda m, x, g: m(x).sum(), NAN_X, TrainConfig(n_steps=1, progress=False)), ValueError, "data"),
    (lambda: metrics.tv_grid(X, MIX, bounds=(1, -1)), ValueError, "bounds"),
    (lambda: metrics.tv_grid(X, MIX, bins=0), ValueError, "bins"),
    (lambda: metrics.tv_grid(torch.randn(8, 3), MIX), ValueError, "samples"),
    (lambda: metrics.tv_grid(X, "mixture"), TypeError, "target"),
    (lambda: metrics.fisher_divergence(score, X), TypeError, "dist"),
    (lambda: metrics.mmd(X, torch.randn(8, 3)), ValueError, "same sample shape"),
    (lambda: datasets.ring(-5), ValueError, "n"),
    (lambda: datasets.ring_mixture(n_modes=0), ValueError, "n_modes"),
    (lambda: datasets.checkerboard(10, n_squares=1), ValueError, "n_squares"),
    (lambda: viz.plot_field("score"), TypeError, "fn"),
    (lambda: viz.plot_paths(np.zeros((3, 2))), ValueError, "paths"),
    (lambda: viz.plot_score_error(lambda x: x, "exact"), TypeError, "reference"),
    (lambda: viz.grid(bounds=(0, 0)), ValueError, "bounds"),
    (lambda: sampling.langevin(score, X, 0.0, 10), ValueError, "step_size"),
    (lambda: sampling.langevin(score, X, -0.1, 10), ValueError, "step_size"),
    (lambda: sampling.langevin(score, X, 0.1, -1), ValueError, "n_steps"),
    (lambda: sampling.langevin(score, NAN_X, 0.1, 1), ValueError, "x"),
    (lambda: sampling.mala(None, X, 0.1, 1), TypeError, "log_prob"),
    (lambda: sampling.annealed_langevin(score, X, [], 0.1, 1), ValueError, "sigmas"),
    (lambda: sampling.annealed_langevin(score, X, [0.1, 1.0], 0.1, 1), ValueError, "sigmas"),
    (lambda: sampling.annealed_langevin(score, X, [1.0, 1.0], 0.1, 1), ValueError, "sigmas"),
    (lambda: sampling.annealed_langevin(score, X, [1.0, -0.5], 0.1, 1), ValueError, "sigmas"),
    (lambda: sampling.annealed_langevin(score, X, [1.0, 0.5], 0.1, -2), ValueError, "n_steps_each"),
    (lambda: sampling.annealed_langevin(score, X, [1.0, 0.5], 0.1, 1, mask=torch.ones(2, dtype=torch.bool)), ValueError, "mask"),
    (lambda: noise.geometric_sigmas(0.1, 1.0, 10), ValueError, "sigma_max"),
    (lambda: noise.geometric_sigmas(1.0, 0.1, 1), ValueError, "n"),
    (lambda: noise.ratio_for_dimension(0), ValueError, "dim"),
    (lambda: noise.ratio_for_dimension(100, target=1.5), ValueError, "target"),
    (lambda: noise.langevin_step_size([1.0, 0.5], 0), ValueError, "n_steps_each"),
    (lambda: MIX.noisy_score(X, -1.0), ValueError, "sigma"),
    (lambda: MIX.condition(torch.tensor([True, True]), [0.0, 0.0]), ValueError, "mask"),
    (lambda: MIX.condition(torch.tensor([True, False]), [0.0, 1.0]), ValueError, "values"),
    (lambda: VP.marginal_coeffs(VP.check_time(1.5)), ValueError, "t"),
    (lambda: VP.marginal_sample(X, -0.1), ValueError, "t"),
    (lambda: VP.marginal_sample(X, "half"), TypeError, "t"),
    (lambda: MIX.marginal(VP, 2.0), ValueError, "t"),
    (lambda: MIX.marginal_score(VP)(X, torch.full((8,), -1.0)), ValueError, "t"),
    (lambda: VESDE(sigma_min=1.0, sigma_max=0.5), ValueError, "sigma_max"),
    (lambda: VPSDE(beta_min=-0.1), ValueError, "beta_min"),
    (lambda: sampling.pc_sample(time_score, VP, X, 0), ValueError, "n_steps"),
    (lambda: sampling.pc_sample(time_score, VP, X, 10, predictor="heun"), ValueError, "predictor"),
    (lambda: sampling.pc_sample(time_score, VP, X, 10, corrector="hmc"), ValueError, "corrector"),
    (lambda: sampling.pc_sample(time_score, VP, X, 10, snr=-0.1), ValueError, "snr"),
    (lambda: sampling.pc_sample(time_score, VP, X, 10, eps=0.0), ValueError, "eps"),
    (lambda: sampling.pc_sample(time_score, VP, X, 10, eps=1.5), ValueError, "eps"),
    (lambda: sampling.pc_sample(time_score, VP, X, 10, n_corrector_steps=-1), ValueError, "n_corrector_steps"),
    (lambda: sampling.pc_sample(time_score, VP, X, 10, predictor=None, corrector=None), ValueError, "predictor"),
    (lambda: sampling.ode_sample(time_score, VP, X, method="lsoda"), ValueError, "method"),
    (lambda: sampling.ode_sample(time_score, VP, X, eps=-1e-3), ValueError, "eps"),
    (lambda: likelihood.log_prob(time_score, VP, X, divergence="trace"), ValueError, "divergence"),
    (lambda: likelihood.log_prob(time_score, VP, X, divergence="hutchinson", n_probes=0), ValueError, "n_probes"),
    (lambda: likelihood.bits_per_dim(time_score, VP, torch.full((2, 4), 300)), ValueError, "images"),
    (lambda: likelihood.bits_per_dim(time_score, VP, torch.rand(2, 4)), TypeError, "images"),
    (lambda: losses.sde_dsm(time_score, X, VP, weighting="uniform"), ValueError, "weighting"),
    (lambda: losses.sde_dsm(time_score, X, VP, eps=2.0), ValueError, "eps"),
]


@pytest.mark.parametrize("call, error, word", CASES, ids=[f"{i:02d}-{c[2]}" for i, c in enumerate(CASES)])
def test_bad_input_raises_naming_the_argument(call, error, word):
    with pytest.raises(error, match=rf"\b{word}\b"):
        call()


def test_networks_take_float64_and_keep_its_dtype():
    """numpy gives float64: the float32 network casts it in and its answer back (the rule in nets._flatten_features)."""
    unconditional, conditional = ScoreMLP(2), ScoreMLP(2, n_fourier=4, log_condition=True)
    for y64, y32 in [(unconditional(X.double()), unconditional(X)), (conditional(X.double(), 0.5), conditional(X, 0.5))]:
        assert y64.dtype == torch.float64 and y64.shape == X.shape
        torch.testing.assert_close(y64.float(), y32)
    energy = EnergyMLP(2)
    assert energy(X.double()).dtype == torch.float64 and energy.score(X.double()).dtype == torch.float64


def test_per_sample_conditioning_accepts_the_common_forms():
    net = ScoreMLP(2, n_fourier=4, log_condition=True)
    reference = net(X, torch.full((8,), 0.3))
    for c in (0.3, torch.tensor(0.3), torch.full((8, 1), 0.3)):
        torch.testing.assert_close(net(X, c), reference)
