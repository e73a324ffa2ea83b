"""ODE log-likelihood throughput: scorelab (torch + torchdiffeq) against scipy `solve_ivp` with numpy round trips.

    python bench/likelihood.py [--points 1000] [--divergence exact]

The baseline is how the official score_sde code computes likelihoods: the augmented state is flattened
into a float64 numpy vector, and every right-hand-side evaluation converts it to a torch tensor, runs the
model and the divergence, and converts back (RK45, same tolerances). Both integrate the same model
(a time-conditional MLP) with the same divergence and fixed probes; the results are checked to agree
before timing. Prints points/s, NFE and the ratio.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch
from _timing import interleaved, median_and_spread
from scipy.integrate import solve_ivp

import scorelab as sl
from scorelab import likelihood
from scorelab.likelihood import _exact_divergence, _hutchinson_divergence
from scorelab.sde import condition_on_std, probability_flow_drift


def baseline_log_prob(score, sde, x, divergence, probes, eps, rtol, atol):
    """The same computation through scipy.solve_ivp, numpy <-> torch (and host <-> device) at every evaluation."""
    shape, n = x.shape, len(x)
    nfe = 0

    def rhs(t, state):
        nonlocal nfe
        nfe += 1
        y = torch.as_tensor(state[:-n].reshape(shape), dtype=x.dtype, device=x.device).requires_grad_(True)
        with torch.enable_grad():
            field = probability_flow_drift(sde, score, y, torch.full((n,), t, dtype=x.dtype, device=x.device))
            div = _exact_divergence(field, y) if divergence == "exact" else _hutchinson_divergence(field, y, probes)
        return np.concatenate([field.detach().cpu().numpy().ravel(), div.detach().cpu().numpy()]).astype(np.float64)

    state0 = np.concatenate([x.cpu().numpy().ravel(), np.zeros(n)]).astype(np.float64)
    solution = solve_ivp(rhs, (eps, sde.T), state0, rtol=rtol, atol=atol, method="RK45")
    x_T = torch.as_tensor(solution.y[:-n, -1].reshape(shape), dtype=x.dtype, device=x.device)
    return sde.prior_log_prob(x_T) + torch.as_tensor(solution.y[-n:, -1], dtype=x.dtype, device=x.device), nfe


def divergence_costs(score, sde, x, repeats: int) -> None:
    """One evaluation of div F at 1000 points by each way of computing it, checked to agree, timed in turns."""
    t = torch.full((len(x),), 0.3, dtype=x.dtype, device=x.device)
    D = x[0].numel()
    basis = torch.eye(D, dtype=x.dtype, device=x.device).reshape(D, 1, *x.shape[1:]).expand(D, *x.shape)

    def field(y):
        return probability_flow_drift(sde, score, y, t)

    def backward_passes():  # scorelab: D backward passes through one graph
        with torch.enable_grad():
            y = x.detach().requires_grad_(True)
            return _exact_divergence(field(y), y)

    def batched_backward():  # one vmapped backward pass over the D basis vectors
        with torch.enable_grad():
            y = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(field(y), y, grad_outputs=basis, is_grads_batched=True)
        return g.reshape(D, len(x), D).diagonal(dim1=0, dim2=2).sum(-1)

    def forward_mode():  # torch.func: vmap over the basis of jvp
        jv = torch.func.vmap(lambda v: torch.func.jvp(field, (x,), (v,))[1])(basis)
        return jv.reshape(D, len(x), D).diagonal(dim1=0, dim2=2).sum(-1)

    def hutchinson():  # one vector-Jacobian product (an estimate, not the exact divergence)
        with torch.enable_grad():
            y = x.detach().requires_grad_(True)
            return _hutchinson_divergence(field(y), y, basis[:1])

    def field_only():  # no divergence: what every exact way adds D products through the same weights to
        with torch.no_grad():
            return field(x)

    ways = {"D backward passes (scorelab)": backward_passes, "one batched backward": batched_backward,
            "forward mode, vmap(jvp)": forward_mode, "Hutchinson, one vjp": hutchinson,
            "the field alone, no divergence": field_only}  # fmt: skip
    reference = backward_passes()
    for name in list(ways)[1:3]:
        gap = (ways[name]() - reference).abs().max().item()
        assert gap < 1e-4 * (1 + reference.abs().max().item()), f"{name} disagrees by {gap}"
    times = interleaved({name: (lambda f=f: [f() for _ in range(20)]) for name, f in ways.items()}, repeats)
    base = statistics.median(times["D backward passes (scorelab)"])
    for name, ts in times.items():
        per = [1e3 * v / 20 for v in ts]
        print(f"    {name:30s} {median_and_spread(per):>22s} ms   {base / statistics.median(ts):.2f}x")
    # an exact divergence multiplies the field's Jacobian by D basis vectors: D more products through every weight
    # matrix of the MLP, in either mode, so it costs at least (1 + D) evaluations of the field in arithmetic
    floor = (1 + D) * statistics.median(times["the field alone, no divergence"])
    print(f"    no exact way can beat scorelab's by more than {base / floor:.2f}x: each costs at least (1 + D) = {1 + D} fields")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="ODE likelihood throughput")
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--divergence", choices=["exact", "hutchinson"], default="exact")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    sde = sl.VPSDE()
    net = sl.ScoreMLP(2, hidden=128, n_layers=3, n_fourier=8, log_condition=True, divide_by_sigma=True).eval()
    score = condition_on_std(net, sde)
    x = sl.datasets.ring_mixture(n_modes=4, radius=3.0, std=0.6).sample(args.points, generator=0)
    probes = torch.randn((1, *x.shape), generator=torch.Generator().manual_seed(1))
    options = dict(eps=1e-5, rtol=1e-5, atol=1e-5)

    def ours_run():
        return likelihood.log_prob(score, sde, x, divergence=args.divergence, generator=1, return_nfe=True, **options)

    def base_run():
        return baseline_log_prob(score, sde, x, args.divergence, probes, **options)

    (ours, nfe_ours), (base, nfe_base) = ours_run(), base_run()  # warm-up: first calls pay one-off imports
    gap = (ours - base).abs().max().item()
    assert gap < 1e-2, f"the two integrations disagree by {gap}"
    times = interleaved({"ours": ours_run, "base": base_run}, args.repeats)
    rates = {name: median_and_spread([args.points / t for t in ts]) for name, ts in times.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.points} points, {args.divergence} divergence, VP SDE")
    print(f"  scipy solve_ivp + numpy round trips  {rates['base']:>24s} points/s   NFE {nfe_base}")
    print(f"  scorelab (torchdiffeq dopri5)        {rates['ours']:>24s} points/s   NFE {nfe_ours}")
    ratio = statistics.median(times["base"]) / statistics.median(times["ours"])
    print(f"  speed-up {ratio:.2f}x (medians); max |difference| {gap:.1e} nats")
    print(f"\n  one divergence evaluation at {args.points} points, the MLP score, D = {x[0].numel()} (speed relative to scorelab's):")
    divergence_costs(score, sde, x, args.repeats)


if __name__ == "__main__":
    main()
