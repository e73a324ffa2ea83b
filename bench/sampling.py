"""Annealed Langevin throughput, measured side by side in one run.

    python bench/sampling.py [--particles 10000] [--levels 10] [--steps 20]

(a) exact mixture score: `annealed_langevin(mix.noisy_score, ...)` against a straightforward
    torch baseline of the same chain (a `torch.distributions` mixture rebuilt per level, its
    score by autograd of `log_prob`). Goal: >= 2x the baseline's particle-steps/s.
(b) MLP score: `annealed_langevin(model, ...)` against the bare cost of the same number of
    network forward passes. Goal: sampler time <= 1.2x the forward time.
Both chains are checked to agree before anything is timed.
"""

from __future__ import annotations

import argparse
import math

import torch
from _timing import best_of
from torch import distributions as D

import scorelab as sl
from scorelab import noise, sampling


def baseline_annealed_langevin(mix: sl.GaussianMixture, x, sigmas, step_size, n_steps_each, generator):
    """What one writes first: a torch.distributions mixture per level, score by autograd, then the same update."""
    sigma_l = sigmas[-1].item()
    eye = torch.eye(mix.dim, dtype=x.dtype)
    for sigma in sigmas.tolist():
        noisy = D.MixtureSameFamily(D.Categorical(probs=mix.weights), D.MultivariateNormal(mix.means, mix.covs + sigma**2 * eye))
        alpha = step_size * sigma**2 / sigma_l**2
        for _ in range(n_steps_each):
            x = x.detach().requires_grad_(True)
            (score,) = torch.autograd.grad(noisy.log_prob(x).sum(), x)
            x = x.detach() + alpha * score + math.sqrt(2 * alpha) * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return x.detach()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="annealed Langevin throughput")
    parser.add_argument("--particles", type=int, default=10_000)
    parser.add_argument("--levels", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20, help="steps per level")
    args = parser.parse_args(argv)
    n, total_steps = args.particles, args.levels * args.steps
    mix = sl.datasets.ring_mixture(n_modes=8)
    sigmas = noise.geometric_sigmas(10.0, 0.05, args.levels)
    eps = noise.langevin_step_size(sigmas, args.steps).step_size
    x0 = 10 * torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {n} particles x {total_steps} steps\n")

    # (a) exact mixture score
    ours = sampling.annealed_langevin(mix.noisy_score, x0, sigmas, eps, args.steps, generator=torch.Generator().manual_seed(1))
    base = baseline_annealed_langevin(mix, x0, sigmas, eps, args.steps, torch.Generator().manual_seed(1))
    assert torch.allclose(ours, base, atol=1e-3), "the two chains must agree before timing"
    t_ours = best_of(lambda: sampling.annealed_langevin(mix.noisy_score, x0, sigmas, eps, args.steps, generator=1))
    t_base = best_of(lambda: baseline_annealed_langevin(mix, x0, sigmas, eps, args.steps, torch.Generator().manual_seed(1)))
    rate = lambda t: n * total_steps / t / 1e6
    print("(a) exact mixture score, 8 components")
    print(f"    baseline (torch.distributions + autograd) {rate(t_base):8.2f} M particle-steps/s")
    print(f"    scorelab (fused noisy_score)              {rate(t_ours):8.2f} M particle-steps/s")
    print(f"    speed-up {t_base / t_ours:.2f}x (goal >= 2x)\n")

    # (b) MLP score: sampler overhead over bare forward passes
    torch.manual_seed(0)
    model = sl.ScoreMLP(2, hidden=128, n_layers=3, n_fourier=8, log_condition=True, divide_by_sigma=True).eval()
    sigma_batch = torch.full((n,), 1.0)

    def forwards():
        with torch.no_grad():
            for _ in range(total_steps):
                model(x0, sigma_batch)

    t_forward = best_of(forwards)
    t_sampler = best_of(lambda: sampling.annealed_langevin(model, x0, sigmas, eps, args.steps, generator=1))
    print("(b) MLP score (3 x 128, Fourier-conditioned)")
    print(f"    bare forwards {rate(t_forward):8.2f} M particle-steps/s")
    print(f"    sampler       {rate(t_sampler):8.2f} M particle-steps/s")
    print(f"    overhead {t_sampler / t_forward:.2f}x the forward cost (goal <= 1.2x)")


if __name__ == "__main__":
    main()
