"""Annealed Langevin throughput, measured side by side in one run.

    python bench/sampling.py [--particles 10000] [--levels 10] [--steps 20] [--repeats 5] [--parts ab]

(a) exact mixture score on the isotropic 8-mode ring: `annealed_langevin(mix.noisy_score, ...)` against two
    baselines of the same chain: the one a strong user writes by hand for an isotropic mixture (logits from
    `x @ mu.T`, a softmax, then `w @ mu`), and the straightforward one (a `torch.distributions` mixture rebuilt per
    level, its score by autograd of `log_prob`). Goal (issue 13): >= 2x the hand-written chain. Where scorelab's
    lead comes from: it lays the logits out `(K, n)` (torch's softmax over the 8 columns of `(n, 8)` costs about
    10 ns an entry, reductions along rows of n are several times cheaper), floors logits 80 nats below the best
    before exp (an exp that underflows costs a CPU ten times a normal one; both chains meet them far from the
    modes), gets the three sums the score needs from one matrix product, and updates x in one add and one add_.
(b) MLP score: `annealed_langevin(model, ...)` against the bare cost of the same number of network forward
    passes. Goal: sampler time <= 1.2x the forward time.
(c) `torch.compile` (CPU inductor) of one fused step of chain (a), sigma passed as a tensor so that one compilation
    serves every level: compile time, steady-state speed against eager, and the particle-steps after which the
    compilation has paid for itself. scorelab uses compilation only where that number is small; on a CPU it is not.

All chains are first run in float64 and must agree to 1e-8: float64 round-off (~1e-16 per operation) cannot reach
that over any number of steps unless the chains differ, while float32 chains drift apart by round-off alone over
long runs, so no float32 tolerance works for every size. Timings are then taken in float32, in turns, and printed as
median [min-max] over `--repeats` runs; ratios are of medians.
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch
from _timing import interleaved, median_and_spread
from torch import distributions as D

import scorelab as sl
from scorelab import noise, sampling


def distributions_annealed_langevin(mix: sl.GaussianMixture, x, sigmas, step_size, n_steps_each, generator):
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


def handwritten_annealed_langevin(mix: sl.GaussianMixture, x, sigmas, step_size, n_steps_each, generator):
    """Ten lines for a mixture of equal isotropic components s^2 I: the score of the noised mixture at x is
    (w @ mu - x) / v with v = s^2 + sigma^2 and w = softmax(x @ mu.T / v + log pi - |mu|^2 / (2 v))."""
    variance = mix.covs[0, 0, 0].item()
    assert torch.equal(mix.covs, variance * torch.eye(mix.dim, dtype=mix.dtype).expand_as(mix.covs)), "equal isotropic components only"
    mu, log_pi, half_sq = mix.means.to(x.dtype), mix.weights.log().to(x.dtype), 0.5 * (mix.means**2).sum(1).to(x.dtype)
    sigma_l = sigmas[-1].item()
    for sigma in sigmas.tolist():
        v = variance + sigma**2
        alpha = step_size * sigma**2 / sigma_l**2
        bias = log_pi - half_sq / v
        for _ in range(n_steps_each):
            w = torch.softmax(torch.addmm(bias, x, mu.T, alpha=1 / v), dim=1)
            x = x + (alpha / v) * (w @ mu - x) + math.sqrt(2 * alpha) * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return x


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="annealed Langevin throughput")
    parser.add_argument("--particles", type=int, default=10_000)
    parser.add_argument("--levels", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20, help="steps per level")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--parts", choices=["a", "b", "ab", "c"], default="ab", help="which comparisons to run")
    args = parser.parse_args(argv)
    sigmas = noise.geometric_sigmas(10.0, 0.05, args.levels)
    eps = noise.langevin_step_size(sigmas, args.steps).step_size
    x0 = 10 * torch.randn(args.particles, 2, generator=torch.Generator().manual_seed(0))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.particles} particles x {args.levels * args.steps} steps\n")
    if "a" in args.parts:
        exact_score_chains(x0, sigmas, eps, args)
    if "b" in args.parts:
        mlp_overhead(x0, sigmas, eps, args)
    if "c" in args.parts:
        compiled_step(x0, args)


def _rate(x0, args, seconds: float) -> float:
    return len(x0) * args.levels * args.steps / seconds / 1e6


def exact_score_chains(x0, sigmas, eps, args) -> None:
    """(a): the three chains agree in float64, then are timed in float32, in turns."""
    mix = sl.datasets.ring_mixture(n_modes=8)

    def ours(m, x, g):
        return sampling.annealed_langevin(m.noisy_score, x, sigmas.to(x.dtype), eps, args.steps, generator=g)

    chains = {
        "scorelab (noisy_score)": ours,
        "hand-written isotropic": lambda m, x, g: handwritten_annealed_langevin(m, x, sigmas.to(x.dtype), eps, args.steps, g),
        "torch.distributions + autograd": lambda m, x, g: distributions_annealed_langevin(m, x, sigmas.to(x.dtype), eps, args.steps, g),
    }
    mix64, x64 = mix.to(dtype=torch.float64), x0.double()
    ends = {name: chain(mix64, x64, torch.Generator().manual_seed(1)) for name, chain in chains.items()}
    reference = ends["scorelab (noisy_score)"]
    for name, end in ends.items():
        gap = (end - reference).abs().max().item()
        assert gap < 1e-8, f"{name} ends {gap:.2g} away from scorelab's chain in float64: the chains differ"
    print("(a) exact mixture score, 8 isotropic components (float64 chains agree to 1e-8)")
    runs = {name: (lambda c=chain: c(mix, x0, torch.Generator().manual_seed(1))) for name, chain in chains.items()}
    times = interleaved(runs, args.repeats)
    for name, ts in times.items():
        print(f"    {name:32s} {median_and_spread([_rate(x0, args, t) for t in ts]):>24s} M particle-steps/s")
    t_ours = statistics.median(times["scorelab (noisy_score)"])
    for name in list(chains)[1:]:
        print(f"    speed-up over {name}: {statistics.median(times[name]) / t_ours:.2f}x")
    print("    (goal: >= 2x the hand-written chain)\n")


def mlp_overhead(x0, sigmas, eps, args) -> None:
    """(b): the sampler with an MLP score against the bare cost of the same number of forward passes."""
    torch.manual_seed(0)
    model = sl.ScoreMLP(2, hidden=128, n_layers=3, n_fourier=8, log_condition=True, divide_by_sigma=True).eval()
    sigma_batch = torch.full((len(x0),), 1.0)

    def forwards():
        with torch.no_grad():
            for _ in range(args.levels * args.steps):
                model(x0, sigma_batch)

    times = interleaved(
        {"bare forwards": forwards, "sampler": lambda: sampling.annealed_langevin(model, x0, sigmas, eps, args.steps, generator=1)},
        args.repeats,
    )
    print("(b) MLP score (3 x 128, Fourier-conditioned)")
    for name, ts in times.items():
        print(f"    {name:14s} {median_and_spread([_rate(x0, args, t) for t in ts]):>24s} M particle-steps/s")
    ratio = statistics.median(times["sampler"]) / statistics.median(times["bare forwards"])
    print(f"    overhead {ratio:.2f}x the forward cost (goal <= 1.2x)")


def compiled_step(x0, args) -> None:
    """(c): one fused step x + alpha s(x) + sqrt(2 alpha) z of the exact isotropic score (the library's own
    `_separable_score`, its coefficients for a level passed as tensors), eager against compiled."""
    import time

    from scorelab.distributions import _separable_score

    mix = sl.datasets.ring_mixture(n_modes=8)
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))

    def step(x, z, alpha, sigma):
        inv_v = 1 / (mix._isotropic_variances[:, None] + sigma**2)  # (K, 1)
        weighted = mix.means * inv_v
        sums = torch.cat([weighted.T, inv_v.T, torch.ones_like(inv_v).T])
        bias = mix.weights.log() + inv_v.log()[:, 0] - 0.5 * (mix.means * weighted).sum(1)
        return x + alpha * _separable_score(x, inv_v, weighted, sums, bias[:, None], True) + (2 * alpha).sqrt() * z

    alpha, sigma = torch.tensor(0.01), torch.tensor(0.5)
    start = time.perf_counter()
    compiled = torch.compile(step, dynamic=False)
    out = compiled(x0, z, alpha, sigma)
    compile_seconds = time.perf_counter() - start
    compiled(x0, z, alpha * 2, sigma * 2)  # another level: must not compile again
    gap = (out - step(x0, z, alpha, sigma)).abs().max().item()
    assert gap < 1e-4 * (1 + x0.abs().max().item()), f"compiled step differs by {gap}"
    n_steps = args.levels * args.steps

    def run(f):
        return lambda: [f(x0, z, alpha, sigma) for _ in range(n_steps)]

    times = interleaved({"eager": run(step), "compiled": run(compiled)}, args.repeats)
    print("(c) torch.compile of one fused step of chain (a) (CPU inductor)")
    for name, ts in times.items():
        print(f"    {name:10s} {median_and_spread([_rate(x0, args, t) for t in ts]):>24s} M particle-steps/s")
    per_step = {name: statistics.median(ts) / n_steps for name, ts in times.items()}
    saved = per_step["eager"] - per_step["compiled"]
    ratio = per_step["eager"] / per_step["compiled"]
    if saved > 0:
        pays = f"it pays after {compile_seconds / saved * len(x0) / 1e6:.0f} M particle-steps"
    else:
        pays = "it never pays"
    print(f"    compiled {ratio:.2f}x eager after {compile_seconds:.1f} s of compilation: {pays}")


if __name__ == "__main__":
    main()
