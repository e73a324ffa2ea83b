"""Bad input gets a ValueError or TypeError that names the offending argument (as a whole word)."""

import atexit
import math
import re
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from scorelab import (
    EMA,
    OUSDE,
    VESDE,
    VPSDE,
    CheckpointError,
    ClassifierMLP,
    EnergyMLP,
    FourierFeatures,
    GaussianMixture,
    LinearPath,
    ScoreMLP,
    SubVPSDE,
    TrainConfig,
    UNet,
    UNetConfig,
    bounds,
    cli,
    datasets,
    fit,
    guidance,
    likelihood,
    load_checkpoint,
    losses,
    metrics,
    noise,
    paths,
    sampling,
    save_checkpoint,
    viz,
)
from scorelab.distributions import log_partition
from scorelab.nets import ImageClassifier

X = torch.randn(8, 2)
NAN_X = X.clone().index_put_((torch.tensor([0]), torch.tensor([1])), torch.tensor(math.nan))
MIX = datasets.ring_mixture(n_modes=2)


def score(x):
    return -x


def time_score(x, t):
    return -x


VP = VPSDE()
LP = LinearPath()


def widgets():
    import scorelab.widgets  # imported on demand, as users do: it needs ipywidgets

    return scorelab.widgets


TINY_UNET = UNet("tiny")
PIXELS = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
SQUARED = lambda m, x, g: (m(x) ** 2).mean()  # noqa: E731
ONE_STEP = TrainConfig(n_steps=1, progress=False)
_TMP = tempfile.TemporaryDirectory()
atexit.register(_TMP.cleanup)
EMPTY_DIR = Path(_TMP.name) / "empty"
EMPTY_DIR.mkdir()
RANDOM_FILE = Path(_TMP.name) / "random.bin"
RANDOM_FILE.write_bytes(np.random.default_rng(0).bytes(256))
ARCHLESS_CHECKPOINT = Path(_TMP.name) / "tagged.pt"
save_checkpoint({"format": "scorelab-checkpoint-v1", "model": {}}, ARCHLESS_CHECKPOINT)  # the tag, but no state
TAG_ONLY_CHECKPOINT = Path(_TMP.name) / "tag-only.pt"
save_checkpoint({"format": "scorelab-checkpoint-v1"}, TAG_ONLY_CHECKPOINT)  # the format marker and nothing else
THREE = torch.full((3,), 0.5)  # a per-sample level or time of the wrong length for X's 8 samples


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
    # --- added with issue 14: every public module, including the image half -----------------------------------
    # nets
    (lambda: UNet("huge"), ValueError, "config"),
    (lambda: UNet(3), TypeError, "config"),
    (lambda: UNetConfig(channels=0), ValueError, "channels"),
    (lambda: UNetConfig(channel_mults=()), ValueError, "channel_mults"),
    (lambda: UNetConfig(dropout=1.5), ValueError, "dropout"),
    (lambda: UNetConfig(n_heads=3), ValueError, "n_heads"),
    (lambda: UNetConfig(attention_levels=(3,)), ValueError, "attention_levels"),
    (lambda: TINY_UNET(torch.randn(2, 1, 18, 18), torch.ones(2)), ValueError, "x"),
    (lambda: TINY_UNET(torch.zeros(0, 1, 16, 16), torch.ones(0)), ValueError, "x"),
    (lambda: TINY_UNET(torch.randn(2, 1, 16, 16), -torch.ones(2)), ValueError, "sigma"),
    (lambda: TINY_UNET(torch.randn(2, 1, 16, 16), torch.ones(3)), ValueError, "sigma"),
    (lambda: TINY_UNET(torch.zeros(2, 1, 16, 16, dtype=torch.uint8), torch.ones(2)), TypeError, "x"),
    (lambda: ImageClassifier(n_classes=1), ValueError, "n_classes"),
    (lambda: ImageClassifier()(torch.zeros(2, 1, 8, 8, dtype=torch.uint8)), TypeError, "x"),
    (lambda: ImageClassifier(channels=3)(torch.zeros(2, 1, 8, 8)), ValueError, "x"),
    (lambda: FourierFeatures(min_freq=-1.0), ValueError, "min_freq"),
    (lambda: FourierFeatures(min_freq=2.0, max_freq=1.0), ValueError, "max_freq"),
    (lambda: EnergyMLP(2, hidden=0), ValueError, "hidden"),
    (lambda: ScoreMLP(2, n_layers=0), ValueError, "n_layers"),
    (lambda: EMA(ScoreMLP(2), decay=-0.1), ValueError, "decay"),
    # datasets
    (lambda: datasets.shapes(0), ValueError, "n"),
    (lambda: datasets.shapes(10, size=4), ValueError, "size"),
    (lambda: datasets.shapes(10, classes=("hexagon",)), ValueError, "classes"),
    (lambda: datasets.shapes(10, weights=(1.0, 1.0)), ValueError, "weights"),
    (lambda: datasets.shapes(10**12), ValueError, "n"),  # says how many GiB it would take
    (lambda: datasets.to_model_range(torch.rand(2, 2)), TypeError, "images"),
    (lambda: datasets.to_model_range(PIXELS, n_bins=1), ValueError, "n_bins"),
    (lambda: datasets.to_model_range(PIXELS, data_range=(1, -1)), ValueError, "data_range"),
    (lambda: datasets.to_model_range(torch.zeros(0, dtype=torch.uint8)), ValueError, "images"),
    (lambda: datasets.to_pixels(X, n_bins=1000), ValueError, "n_bins"),
    (lambda: datasets.to_pixels(NAN_X), ValueError, "x"),
    (lambda: datasets.load_idx_images("emnist", "."), ValueError, "dataset"),
    (lambda: datasets.load_idx_images("mnist", ".", "val"), ValueError, "split"),
    (lambda: datasets.load_idx_images("mnist", 3), TypeError, "root"),
    (lambda: datasets.load_cifar10(EMPTY_DIR), FileNotFoundError, "data_batch_1"),
    (lambda: datasets.load_cifar10(EMPTY_DIR, split="validation"), ValueError, "split"),
    (lambda: datasets.read_idx(RANDOM_FILE), ValueError, "IDX"),
    (lambda: datasets.two_moons(10, noise=-1.0), ValueError, "noise"),
    (lambda: datasets.swiss_roll(10, noise=math.nan), ValueError, "noise"),
    (lambda: datasets.concentric_rings(10, radii=(1.0, -1.0)), ValueError, "radii"),
    (lambda: datasets.checkerboard(10, size=0.0), ValueError, "size"),
    (lambda: datasets.curve(10, amplitude=math.inf), ValueError, "amplitude"),
    (lambda: MIX.sample(10**13), ValueError, "n"),
    # distributions
    (lambda: GaussianMixture([1.0], [[0, 0]], [1.0], dtype=torch.float16), TypeError, "dtype"),
    (lambda: GaussianMixture([1.0], [[0, 0]], [1.0], dtype=torch.int64), TypeError, "dtype"),
    (lambda: GaussianMixture([1.0], [[0, 0]], [1.0], device="cuda:99"), ValueError, "device"),
    (lambda: GaussianMixture([1.0], [[0, 0]], [1.0], device="tpu"), ValueError, "device"),
    # sde: times outside [0, T] used to give NaN
    (lambda: VP.marginal_coeffs(1.5), ValueError, "t"),
    (lambda: VP.diffusion(-0.5), ValueError, "t"),
    (lambda: VESDE().marginal_coeffs(torch.tensor([0.5, 2.0])), ValueError, "t"),
    (lambda: SubVPSDE().marginal_coeffs(math.nan), ValueError, "t"),
    (lambda: OUSDE(T=-1.0), ValueError, "T"),
    (lambda: OUSDE().drift(X, 10.0), ValueError, "t"),
    # samplers: a score of the wrong shape is an error, never a broadcast
    (lambda: sampling.langevin(lambda x: x[:, :1], X, 0.1, 1), ValueError, "score"),
    (lambda: sampling.annealed_langevin(lambda x, s: x.sum(1), X, [1.0, 0.5], 0.1, 1), ValueError, "score"),
    (lambda: sampling.pc_sample(lambda x, t: x[:1], VP, X, 2), ValueError, "score"),
    (lambda: sampling.ode_sample(lambda x, t: x.sum(), VP, X, method="euler", n_steps=2), ValueError, "score"),
    (lambda: sampling.mala(lambda x: (x**2).sum(), X, 0.1, 1), ValueError, "log_prob"),
    (lambda: sampling.mala(lambda x: -(x**2), X, 0.1, 1), ValueError, "log_prob"),
    (lambda: sampling.pc_sample(time_score, VP, X, 2, mask=torch.ones(3, 2, dtype=torch.bool), known=X), ValueError, "mask"),
    (lambda: sampling.pc_sample(time_score, VP, X, 2, mask=torch.ones(8, 2), known=X), TypeError, "mask"),
    (lambda: sampling.pc_sample(time_score, VP, X, 2, mask=torch.ones(8, 2, dtype=torch.bool), known=X[:3]), ValueError, "known"),
    (lambda: sampling.pc_sample(time_score, VP, X, 2, known=X), ValueError, "mask"),
    (lambda: sampling.ode_sample(time_score, VP, X, n_saved=1), ValueError, "n_saved"),
    (lambda: sampling.ode_sample(time_score, VP, X, method="euler"), ValueError, "n_steps"),
    (lambda: sampling.ode_sample(time_score, VP, X, rtol=0.0), ValueError, "rtol"),
    (lambda: sampling.langevin(score, X, 0.1, 1, callback=3), TypeError, "callback"),
    (lambda: sampling.pc_sample(time_score, VP, X, 2, callback="print"), TypeError, "callback"),
    # losses
    (lambda: losses.dsm(lambda x: x[:, :1], X, 0.1), ValueError, "score"),
    (lambda: losses.ncsn(lambda x, s: x.sum(1), X, [1.0]), ValueError, "score"),
    (lambda: losses.sde_dsm(lambda x, t: x[:1], X, VP), ValueError, "score"),
    (lambda: losses.esm(score, X, lambda x: x[:, :1]), ValueError, "true_score"),
    (lambda: losses.ssm(lambda x: x.sum(1), X), ValueError, "score"),
    # likelihood
    (lambda: likelihood.log_prob(time_score, VP, X, prior_log_prob=lambda x: x), ValueError, "prior_log_prob"),
    (lambda: likelihood.log_prob(lambda x, t: x[:, :1], VP, X, method="euler", n_steps=1), ValueError, "score"),
    (lambda: likelihood.log_prob(time_score, VP, X, probe="uniform"), ValueError, "probe"),
    (lambda: likelihood.bits_per_dim(time_score, VP, PIXELS, n_bins=1), ValueError, "n_bins"),
    (lambda: likelihood.bits_per_dim(time_score, VP, PIXELS, data_range=(0, 0)), ValueError, "data_range"),
    # metrics
    (lambda: metrics.class_frequencies(torch.tensor([0, 5]), 3), ValueError, "labels"),
    (lambda: metrics.class_frequencies(torch.rand(3), 3), TypeError, "labels"),
    (lambda: metrics.class_frequencies(torch.tensor([0]), 0), ValueError, "n_classes"),
    (lambda: metrics.energy_distance(X, torch.randn(8, 3)), ValueError, "same sample shape"),
    # viz
    (lambda: viz.subplots(n_cols=0), ValueError, "n_cols"),
    (lambda: viz.subplots(size=-1.0), ValueError, "size"),
    (lambda: viz.image_grid(torch.zeros(0, 1, 4, 4)), ValueError, "images"),
    (lambda: viz.image_grid(torch.zeros(2, 1, 4, 4), n_cols=0), ValueError, "n_cols"),
    (lambda: viz.image_grid(torch.zeros(2, 4, 4)), ValueError, "images"),
    (lambda: viz.plot_field(score, clip_quantile=1.5), ValueError, "clip_quantile"),
    (lambda: viz.plot_field(lambda x: x.sum(1)), ValueError, "score"),
    (lambda: viz.plot_samples(torch.randn(5, 3)), ValueError, "x"),
    (lambda: viz.save_image_grid(torch.zeros(2, 1, 4, 4), EMPTY_DIR / "g.png", scale=0), ValueError, "scale"),
    (lambda: viz.plot_images_by_class(torch.zeros(3, 1, 4, 4), torch.zeros(2, dtype=torch.long), ["a"]), ValueError, "labels"),
    (lambda: viz.grid(resolution=1), ValueError, "resolution"),
    # train
    (lambda: fit(ScoreMLP(2), SQUARED, X, config="fast"), TypeError, "config"),
    (lambda: fit(ScoreMLP(2), SQUARED, X, ONE_STEP, ema="ema"), TypeError, "ema"),
    (lambda: fit(ScoreMLP(2), SQUARED, X, ONE_STEP, ema=EMA(ScoreMLP(3))), ValueError, "ema"),
    (lambda: fit(ScoreMLP(2), SQUARED, X, ONE_STEP, checkpoint=EMPTY_DIR), ValueError, "checkpoint"),
    (lambda: fit(ScoreMLP(2), SQUARED, X, ONE_STEP, checkpoint=3), TypeError, "checkpoint"),
    (lambda: fit(ScoreMLP(2), SQUARED, (X, torch.zeros(3)), ONE_STEP), ValueError, "data"),
    (lambda: fit(ScoreMLP(2), SQUARED, [X], ONE_STEP), TypeError, "data"),
    (lambda: fit(ScoreMLP(2), SQUARED, X, ONE_STEP, metadata=[1]), TypeError, "metadata"),
    (lambda: fit(ScoreMLP(2), SQUARED, X, ONE_STEP, callback=3), TypeError, "callback"),
    (lambda: fit("model", SQUARED, X, ONE_STEP), TypeError, "model"),
    (lambda: fit(ScoreMLP(2), SQUARED, X, TrainConfig(n_steps=1, progress=False, device="cuda:99")), ValueError, "device"),
    (lambda: fit(ScoreMLP(2), SQUARED, X, ONE_STEP, checkpoint=ARCHLESS_CHECKPOINT), CheckpointError, "lacks"),
    (lambda: TrainConfig(precision="fp16"), ValueError, "precision"),
    (lambda: TrainConfig(device="gpu"), ValueError, "device"),
    (lambda: TrainConfig(device=0), TypeError, "device"),
    (lambda: TrainConfig(warmup_steps=-1), ValueError, "warmup_steps"),
    (lambda: TrainConfig(log_every=0), ValueError, "log_every"),
    (lambda: TrainConfig(grad_clip=0.0), ValueError, "grad_clip"),
    (lambda: TrainConfig(checkpoint_every=-5), ValueError, "checkpoint_every"),
    (lambda: TrainConfig(seed=-1), ValueError, "seed"),
    (lambda: load_checkpoint(RANDOM_FILE), CheckpointError, "not a torch checkpoint"),
    (lambda: load_checkpoint(ARCHLESS_CHECKPOINT, map_location="cuda:99"), ValueError, "map_location"),
    (lambda: load_checkpoint(EMPTY_DIR / "absent.pt"), FileNotFoundError, "checkpoint"),
    (lambda: load_checkpoint(ARCHLESS_CHECKPOINT, required=("model", "optimizer")), CheckpointError, "optimizer"),
    # the command line's configuration
    (lambda: cli.RunConfig(dataset="svhn"), ValueError, "dataset"),
    (lambda: cli.RunConfig(sde="edm"), ValueError, "sde"),
    (lambda: cli.RunConfig(holdout=-1), ValueError, "holdout"),
    (lambda: cli.RunConfig(holdout=1, classifier="c.pt"), ValueError, "holdout"),
    (lambda: cli.RunConfig(shape_weights=(1.0,)), ValueError, "shape_weights"),
    (lambda: cli.RunConfig(sigma_max=-1.0), ValueError, "sigma_max"),
    (lambda: cli.apply_overrides(cli.CONFIGS["shapes-vp"], ["lr=fast"]), ValueError, "lr"),
    (lambda: cli.apply_overrides(cli.CONFIGS["shapes-vp"], ["lr"]), ValueError, "key=value"),
    (lambda: cli.apply_overrides(cli.CONFIGS["shapes-vp"], ["unet=huge"]), ValueError, "unet"),
    (lambda: cli.apply_overrides(cli.CONFIGS["shapes-vp"], ["unet.nope=1"]), ValueError, "setting"),
    (lambda: cli.apply_overrides(cli.CONFIGS["shapes-vp"], ["progress=maybe"]), ValueError, "progress"),
    # widgets (the demos' explorers)
    (lambda: widgets().ScoreFieldExplorer(resolution=1), ValueError, "resolution"),
    (lambda: widgets().ScoreFieldExplorer(bounds=(3, -3)), ValueError, "bounds"),
    (lambda: widgets().ScoreFieldExplorer(train_steps=0), ValueError, "n_steps"),
    (lambda: widgets().LangevinPlayground(n_levels=1), ValueError, "n_levels"),
    (lambda: widgets().LangevinPlayground(seed=-1), ValueError, "seed"),
    (lambda: widgets().SDEExplorer(n_particles=0), ValueError, "n_particles"),
    (lambda: widgets().SDEExplorer(n_paths=2.5), TypeError, "n_paths"),
    (lambda: widgets().figure_png("figure"), TypeError, "fig"),
    # lesson 06: the exponential integrator, exact and Monte-Carlo distances, the bound's constants
    (lambda: sampling.exponential_integrator(time_score, X, 1.0, 0.3), ValueError, "h"),
    (lambda: sampling.exponential_integrator(time_score, X, -1.0, 0.1), ValueError, "T"),
    (lambda: sampling.exponential_integrator(lambda x, t: x[:, :1], X, 1.0, 0.5), ValueError, "score"),
    (lambda: sampling.exponential_integrator(time_score, torch.randn(4), 1.0, 0.5), ValueError, "x"),
    (lambda: metrics.tv_monte_carlo(MIX.log_prob, "q", X), TypeError, "q_log_prob"),
    (lambda: metrics.tv_monte_carlo(MIX.log_prob, lambda x: x, X), ValueError, "q_log_prob"),
    (lambda: metrics.kl_monte_carlo(MIX.log_prob, MIX.log_prob, X[:1]), ValueError, "samples_from_p"),
    (lambda: metrics.gaussian_tv([0.0, 1.0], 1.0, [0.0, 0.0, 0.0], 1.0), ValueError, "dimension"),
    (lambda: metrics.gaussian_kl(0.0, 0.0, 0.0, 1.0), ValueError, "var"),
    (lambda: metrics.tv_quadrature(MIX.log_prob, MIX.log_prob, 3, (-1, 1)), ValueError, "dim"),
    (lambda: metrics.kl_quadrature(MIX.log_prob, MIX.log_prob, 2, (1, -1)), ValueError, "bounds"),
    (lambda: bounds.perturbed_score(MIX, OUSDE(), -0.1), ValueError, "epsilon"),
    (lambda: bounds.perturbed_score(MIX, OUSDE(), 0.1, frequency=0), ValueError, "frequency"),
    (lambda: bounds.second_moment("mixture"), TypeError, "dist"),
    (lambda: bounds.score_lipschitz(MIX, OUSDE(), n_grid=1), ValueError, "n_grid"),
    (lambda: bounds.kl_to_standard_normal(MIX, cells=0), ValueError, "cells"),
    (lambda: bounds.score_error(lambda x, t: x, MIX, OUSDE(), []), ValueError, "times"),
    (lambda: bounds.gaussian_integrator_law(0.0, -1.0, 1.0, 0.1), ValueError, "var"),
    (lambda: viz.log_ticks(viz.subplots()[1], x=[0.0, 1.0]), ValueError, "values"),
    # noise
    (lambda: noise.sigma_max_from_data(X, block=0), ValueError, "block"),
    (lambda: noise.variance_ratio(0.0, [1.0, 0.5], 1), ValueError, "step_size"),
    # guidance, labelled mixtures and energy-based models (lessons 07-08)
    (lambda: GaussianMixture([0.5, 0.5], [[0.0], [1.0]], [1.0, 1.0], labels=[0, 2]), ValueError, "labels"),
    (lambda: GaussianMixture([0.5, 0.5], [[0.0], [1.0]], [1.0, 1.0], labels=[0.0, 1.0]), TypeError, "labels"),
    (lambda: GaussianMixture([0.5, 0.5], [[0.0], [1.0]], [1.0, 1.0], labels=[0]), ValueError, "labels"),
    (lambda: MIX.class_mixture(5), ValueError, "y"),
    (lambda: MIX.tilted_log_prob(0, -1.0), ValueError, "gamma"),
    (lambda: MIX.tilted_log_prob(7, 1.0), ValueError, "y"),
    (lambda: MIX.posterior([[1.0, 0.0, 0.0]], [1.0], 0.5), ValueError, "A"),
    (lambda: MIX.posterior([[1.0, 0.0]], [1.0], -0.5), ValueError, "noise_std"),
    (lambda: MIX.posterior([[1.0, 0.0]], [1.0, 2.0], 0.5), ValueError, "y"),
    (lambda: guidance.classifier_guided_score(time_score, time_score, -1.0), ValueError, "scale"),
    (lambda: guidance.cfg_score(time_score, time_score, float("nan")), ValueError, "scale"),
    (lambda: guidance.classifier_guided_score(time_score, "grad", 1.0), TypeError, "log_likelihood_grad"),
    (lambda: guidance.classifier_gradient(MIX.marginal_class_log_prob(VP), 3)(X, torch.ones(8)), ValueError, "y"),
    (lambda: guidance.classifier_gradient(MIX.marginal_class_log_prob(VP), 0.5), TypeError, "y"),
    (lambda: guidance.drop_labels(torch.zeros(4, dtype=torch.long), 1.5), ValueError, "p_uncond"),
    (lambda: guidance.classifier_loss(ClassifierMLP(2, 2), X, torch.full((8,), 2), VP), ValueError, "labels"),
    (lambda: guidance.linear_inverse_sample(time_score, VP, X, 10, [[1.0, 0.0, 0.0]], [1.0], 0.5), ValueError, "A"),
    (lambda: guidance.linear_inverse_sample(time_score, VP, X, 10, [[1.0, 0.0]], [1.0, 2.0], 0.5), ValueError, "y"),
    (lambda: guidance.linear_inverse_sample(time_score, VP, X, 10, [[1.0, 0.0], [2.0, 0.0]], [1.0, 1.0], 0.5), ValueError, "A"),
    (lambda: guidance.linear_inverse_sample(time_score, VP, X, 10, [[1.0, 0.0]], [1.0], 0.0), ValueError, "noise_std"),
    (lambda: guidance.colorize(time_score, VP, X, 10), ValueError, "gray"),
    (lambda: guidance.to_basis(torch.ones(2, 3), torch.ones(3, 3)), ValueError, "basis"),
    (lambda: ScoreMLP(2, n_fourier=4, n_classes=2)(X, 0.5), TypeError, "y"),
    (lambda: ScoreMLP(2, n_fourier=4, n_classes=2)(X, 0.5, 2), ValueError, "y"),
    (lambda: ScoreMLP(2, n_classes=2), ValueError, "n_classes"),
    (lambda: ClassifierMLP(2, 1), ValueError, "n_classes"),
    (lambda: losses.contrastive_divergence(EnergyMLP(2), X, torch.ones(8, 3)), ValueError, "x_model"),
    (lambda: losses.contrastive_divergence(EnergyMLP(2), X, X, regularization=-1.0), ValueError, "regularization"),
    (lambda: losses.ContrastiveDivergence(0, 0.1, lambda n, g: X), ValueError, "n_steps"),
    (lambda: losses.ContrastiveDivergence(5, 0.1, lambda n, g: X, reinit=2.0), ValueError, "reinit"),
    (lambda: losses.ContrastiveDivergence(5, 0.1, lambda n, g: torch.ones(3, 2))(EnergyMLP(2), X), ValueError, "init"),
    (lambda: log_partition(lambda x: x.sum(1), 3), ValueError, "dim"),
    (lambda: log_partition(lambda x: x, 2), ValueError, "energy"),
    # round two (issue 25): calls an outside reader tried
    # a per-sample level or time of the wrong length, to every entry point that takes one
    (lambda: MIX.noisy_score(X, THREE), ValueError, "sigma"),
    (lambda: MIX.marginal_score(VP)(X, THREE), ValueError, "t"),
    (lambda: MIX.marginal_class_log_prob(VP)(X, THREE), ValueError, "t"),
    (lambda: losses.dsm(score, X, THREE), ValueError, "sigma"),
    (lambda: VP.marginal_sample(X, THREE), ValueError, "t"),
    (lambda: VP.drift(X, THREE), ValueError, "t"),
    (lambda: ScoreMLP(2, n_fourier=4)(X, THREE), ValueError, "c"),
    # an SDE by name where an SDE object is expected
    (lambda: losses.sde_dsm(time_score, X, "VP"), TypeError, "sde"),
    (lambda: sampling.pc_sample(time_score, "VP", X, 3), TypeError, "sde"),
    (lambda: sampling.ode_sample(time_score, "VP", X), TypeError, "sde"),
    (lambda: likelihood.log_prob(time_score, "VP", X), TypeError, "sde"),
    (lambda: MIX.marginal_score("VP"), TypeError, "sde"),
    (lambda: MIX.marginal("vp", 0.5), TypeError, "sde"),
    (lambda: losses.diffuse(X, "VP", 1e-3, None), TypeError, "sde"),
    (lambda: guidance.classifier_loss(lambda x, t: x, X, 0, "VP"), TypeError, "sde"),
    # another architecture, a path that is not one, a degenerate shape, a dtype that would truncate, a bandwidth
    (lambda: EMA(ScoreMLP(2)).update(ScoreMLP(3)), ValueError, "model"),
    (lambda: load_checkpoint(123), TypeError, "path"),
    (lambda: load_checkpoint(TAG_ONLY_CHECKPOINT), CheckpointError, "state"),
    (lambda: VP.prior_sample((8, -2)), ValueError, "shape"),
    (lambda: VP.prior_sample((8, 2.5)), TypeError, "shape"),
    (lambda: VP.prior_sample((8, 2), dtype=torch.int64), TypeError, "dtype"),
    (lambda: GaussianMixture([1.0], [[]], [1.0]), ValueError, "means"),
    (lambda: metrics.mmd(X, X, bandwidth="wide"), TypeError, "bandwidth"),
    (lambda: datasets.two_moons(10, dtype=torch.int64), TypeError, "dtype"),
    (lambda: datasets.ring(10, dtype=torch.int64), TypeError, "dtype"),
    (lambda: datasets.far_apart(10, dtype=torch.int32), TypeError, "dtype"),
    (lambda: datasets.checkerboard(10, dtype=torch.int32), TypeError, "dtype"),
    # more than the machine holds: the size, not the allocator's message
    (lambda: VP.prior_sample((10**7, 10**7)), ValueError, "shape"),
    # a step size that overflows the particles' dtype
    (lambda: sampling.langevin(score, X, 1e300, 10), ValueError, "step_size"),
    (lambda: sampling.langevin(score, X, 1e39, 10), ValueError, "step_size"),
    (lambda: sampling.annealed_langevin(time_score, X, torch.tensor([1.0, 0.5]), 1e300, 2), ValueError, "step_size"),
    # inpainting's options (lesson 04)
    (lambda: sampling.annealed_langevin(time_score, X, torch.tensor([1.0, 0.5]), 0.1, 2, renoise="once"), ValueError, "renoise"),
    (lambda: sampling.score_on_unknown(score, torch.ones(2)), TypeError, "mask"),
    (lambda: sampling.score_on_unknown(score, torch.ones(2, dtype=torch.bool)), ValueError, "mask"),
    # Gaussian paths, conversions, flow matching and the fixed-NFE ODE samplers (issue 26, lesson 10)
    (lambda: LP.marginal_coeffs(1.5), ValueError, "t"),
    (lambda: LP.marginal_coeffs_dot("half"), TypeError, "t"),
    (lambda: paths.convert(X, X, 0.5, LP, source="logits", target="x0"), ValueError, "source"),
    (lambda: paths.convert(X, X, 0.5, LP, source="x0", target="v"), ValueError, "target"),
    (lambda: paths.convert(X, X, 0.5, "linear", source="x0", target="eps"), TypeError, "path"),
    (lambda: paths.convert(torch.randn(8, 3), X, 0.5, LP, source="x0", target="eps"), ValueError, "value"),
    (lambda: paths.convert(X, X, 1.5, LP, source="x0", target="eps"), ValueError, "t"),
    (lambda: paths.convert(X, X, THREE, LP, source="x0", target="eps"), ValueError, "t"),
    (lambda: paths.convert(X, NAN_X, 0.5, LP, source="x0", target="eps"), ValueError, "x"),
    (lambda: paths.convert_field("net", LP, source="velocity", target="score"), TypeError, "field"),
    (lambda: paths.convert_field(lambda x, t: x[:, :1], LP, source="velocity", target="score")(X, 0.5), ValueError, "field"),
    (lambda: paths.mixture_field(MIX, LP, "logits"), ValueError, "prediction"),
    (lambda: paths.mixture_field(MIX, "VP"), TypeError, "path"),
    (lambda: paths.mixture_field(MIX, LP)(X, THREE), ValueError, "t"),
    (lambda: paths.mixture_posterior(MIX, LP, X, -0.1), ValueError, "t"),
    (lambda: paths.mixture_posterior(MIX, LP, torch.randn(8, 3), 0.5), ValueError, "x"),
    (lambda: losses.flow_matching(time_score, X, "linear"), TypeError, "path"),
    (lambda: losses.flow_matching(time_score, X, LP, t=THREE), ValueError, "t"),
    (lambda: losses.flow_matching(time_score, X, LP, t=torch.full((8,), 2.0)), ValueError, "t"),
    (lambda: losses.flow_matching(time_score, X, LP, noise=torch.randn(3, 2)), ValueError, "noise"),
    (lambda: losses.flow_matching(time_score, X, LP, marginal_velocity="u"), TypeError, "marginal_velocity"),
    (lambda: losses.flow_matching(lambda x, t: x[:, :1], X, LP), ValueError, "velocity"),
    (lambda: losses.flow_matching(time_score, X, LP, eps=1.0), ValueError, "eps"),
    (lambda: losses.flow_matching(time_score, NAN_X, LP), ValueError, "x"),
    (lambda: losses.path_dsm("net", X, LP), TypeError, "eps_model"),
    (lambda: losses.path_dsm(time_score, X, "linear"), TypeError, "path"),
    (lambda: losses.path_dsm(time_score, X, LP, t=THREE), ValueError, "t"),
    (lambda: losses.path_dsm(time_score, X, LP, noise=torch.randn(3, 2)), ValueError, "noise"),
    (lambda: losses.path_dsm(lambda x, t: x[:, :1], X, LP), ValueError, "eps_model"),
    (lambda: losses.path_dsm(time_score, X, LP, eps=1.0), ValueError, "eps"),
    (lambda: losses.path_dsm(time_score, NAN_X, LP), ValueError, "x"),
    (lambda: paths.straightness(X), ValueError, "trajectory"),
    (lambda: paths.straightness(X[None]), ValueError, "trajectory"),
    (lambda: paths.straightness(torch.stack([X, NAN_X])), ValueError, "trajectory"),
    (lambda: sampling.flow_sample(time_score, LP, X, 4, solver="rk45"), ValueError, "solver"),
    (lambda: sampling.flow_sample(time_score, LP, X, 0, solver="euler"), ValueError, "n_steps"),
    (lambda: sampling.flow_sample(time_score, LP, X, 4, prediction="noise"), ValueError, "prediction"),
    (lambda: sampling.flow_sample(time_score, "linear", X, 4), TypeError, "path"),
    (lambda: sampling.flow_sample(time_score, LP, X, 4, solver="heun"), ValueError, "t_max"),
    (lambda: sampling.flow_sample(time_score, LP, X, 4, schedule="cosine"), ValueError, "schedule"),
    (lambda: sampling.flow_sample(time_score, VP, X, 4, eps=0.0), ValueError, "eps"),
    (lambda: sampling.flow_sample(time_score, VP, X, 4, t_max=2.0), ValueError, "t_max"),
    (lambda: sampling.flow_sample(time_score, VP, X, 4, rho=-1.0), ValueError, "rho"),
    (lambda: sampling.flow_sample(lambda x, t: x[:, :1], VP, X, 4), ValueError, "field"),
    (lambda: sampling.flow_sample("field", VP, X, 4), TypeError, "field"),
    (lambda: sampling.flow_sample(lambda x, t: x * math.nan, VP, X, 4, prediction="velocity"), ValueError, "n_steps"),
    (lambda: sampling.flow_time_grid(VP, 4, schedule="edm", eps=2.0), ValueError, "eps"),
]


@pytest.mark.parametrize("call, error, word", CASES, ids=[f"{i:02d}-{c[2]}" for i, c in enumerate(CASES)])
def test_bad_input_raises_naming_the_argument(call, error, word):
    with pytest.raises(error, match=rf"\b{word}\b"):
        call()


#: which public module a case exercises, from the first of these names its call uses
MODULE_OF = {
    "cli": "cli", "fit": "train", "TrainConfig": "train", "load_checkpoint": "train", "ONE_STEP": "train",
    "sampling": "sampling", "losses": "losses", "likelihood": "likelihood", "metrics": "metrics", "viz": "viz",
    "datasets": "datasets", "noise": "noise", "MIX": "distributions", "GaussianMixture": "distributions",
    "VP": "sde", "VESDE": "sde", "VPSDE": "sde", "SubVPSDE": "sde", "OUSDE": "sde",
    "ScoreMLP": "nets", "EnergyMLP": "nets", "EMA": "nets", "UNet": "nets", "UNetConfig": "nets", "TINY_UNET": "nets",
    "ImageClassifier": "nets", "FourierFeatures": "nets", "widgets": "widgets", "bounds": "bounds",
    "guidance": "guidance", "ClassifierMLP": "nets", "log_partition": "distributions", "paths": "paths", "LP": "sde",
}  # fmt: skip
#: besides ValueError/TypeError, the documented kinds: a checkpoint's own error, and a missing file
DOCUMENTED = (ValueError, TypeError, CheckpointError, FileNotFoundError)


def _outcome(call, error, word) -> str:
    try:
        call()
    except DOCUMENTED as err:
        if isinstance(err, error) and re.search(rf"\b{word}\b", str(err)):
            return "clear"
        return "misleading"
    except Exception:
        return "from inside a dependency"
    return "accepted silently"


def test_fuzz_table_every_malformed_call_gets_a_clear_error(capsys):
    """The whole table at once, counted by module and printed: the goal is every call clear, none accepted."""
    rows = Counter()
    for call, error, word in CASES:
        module = next(MODULE_OF[n] for n in call.__code__.co_names if n in MODULE_OF)
        rows[module, _outcome(call, error, word)] += 1
    modules = sorted({m for m, _ in rows})
    kinds = ["clear", "misleading", "from inside a dependency", "accepted silently"]
    lines = [f"{'module':14s}" + "".join(f"{k:>26s}" for k in kinds)]
    lines += [f"{m:14s}" + "".join(f"{rows[m, k]:>26d}" for k in kinds) for m in modules]
    lines.append(f"{'all ' + str(len(CASES)):14s}" + "".join(f"{sum(rows[m, k] for m in modules):>26d}" for k in kinds))
    with capsys.disabled():  # printed in every run, not only on failure
        print("\nmalformed calls by outcome\n" + "\n".join(lines))
    assert len(CASES) >= 150 and len(modules) == 16  # every public module
    assert sum(rows[m, "clear"] for m in modules) == len(CASES), "\n".join(lines)


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
