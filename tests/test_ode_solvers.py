"""The fixed-NFE ODE samplers of lesson 10 (`sampling.flow_sample`) against the exact flow of a Gaussian target,
where their order of convergence can be measured."""

import math

import pytest
import torch

from scorelab import VESDE, VPSDE, GaussianMixture, LinearPath, paths, sampling

MU, S2 = torch.tensor([0.7, -1.2], dtype=torch.float64), 0.25
GAUSSIAN = GaussianMixture([1.0], MU[None], [S2], dtype=torch.float64)
EPS = 1e-3


def _start(n=16, seed=0):
    return torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _exact_flow(path, x, t_start, t_end):
    """The probability-flow ODE of N(mu, s^2 I) keeps z = (x - alpha mu) / std fixed, std = sqrt(alpha^2 s^2 + sigma^2)."""
    (a0, s0), (a1, s1) = ([c.item() for c in path.marginal_coeffs(t)] for t in (t_start, t_end))
    std0, std1 = math.sqrt(a0**2 * S2 + s0**2), math.sqrt(a1**2 * S2 + s1**2)
    return a1 * MU + std1 * (x - a0 * MU) / std0


def _error(path, solver, n_steps, prediction="velocity", eps=EPS, **options):
    """Max error against the exact flow at the sampler's end: eps, or t = 0 (sigma = 0) for edm (Alg. 1)."""
    x = _start()
    field = paths.mixture_field(GAUSSIAN, path, prediction)
    out = sampling.flow_sample(field, path, x, n_steps, solver=solver, prediction=prediction, eps=eps, **options)
    end = 0.0 if solver == "edm" else eps
    return (out - _exact_flow(path, x, options.get("t_max") or path.T, end)).abs().max().item()


# (path, solver, schedule, t_max, order): VP on each solver's default grid, the linear path on the uniform grid;
# DPM-Solver-2 and EDM (on its sigma / alpha grid) on the linear path from t_max = 0.99, as its log-SNR is -inf at t = 1
CASES = [
    (VPSDE(), "euler", None, None, 1),
    (VPSDE(), "heun", None, None, 2),
    (VPSDE(), "edm", None, None, 2),
    (VPSDE(), "ddim", None, None, 1),
    (VPSDE(), "dpm_solver_2", None, None, 2),
    (LinearPath(), "euler", None, None, 1),
    (LinearPath(), "heun", "uniform", None, 2),
    (LinearPath(), "edm", None, 0.99, 2),
    (LinearPath(), "ddim", None, None, 1),
    (LinearPath(), "dpm_solver_2", None, 0.99, 2),
]


@pytest.mark.parametrize("path, solver, schedule, t_max, order", CASES, ids=[f"{c[0]!r}-{c[1]}" for c in CASES])
def test_measured_order_is_the_methods(path, solver, schedule, t_max, order):
    """Halving the step divides the error by 2^order: the measured order log2(e(N) / e(2N)) at N = 32 -> 64 lies within
    0.15 of the method's, while a method one order off is 1 away. The gap is the next term of the error, O(h) smaller:
    it halves with each halving of h (Euler on VP: 0.64, 0.86, 0.93, 0.97 from N = 8 -> 16 to 64 -> 128); at 32 -> 64
    the ten cases measured 0.93, 1.96, 2.11, 0.97, 2.04, 0.98, 1.94, 2.11, 0.98, 2.04. EDM (Alg. 1) ends with an
    Euler step from sigma~_min = sigma / alpha at eps to 0, whose error z sigma~_min^2 / (2 s) does not shrink with N
    (at eps = 1e-3 on VP, sigma~_min = 0.01, it bends the measured order to 2.16 at 32 -> 64 and 2.34 at 64 -> 128),
    so its order is measured from eps = 1e-5 (sigma~_min = 1e-3 on VP), where that floor is ~100x smaller."""
    eps = 1e-5 if solver == "edm" else EPS
    errors = [_error(path, solver, n, schedule=schedule, t_max=t_max, eps=eps) for n in (32, 64)]
    measured = math.log2(errors[0] / errors[1])
    assert measured == pytest.approx(order, abs=0.15), (errors, measured)


def test_ddim_is_exact_for_data_at_one_point():
    """With x0 ~ delta_mu the posterior mean is mu for every x_t and the flow keeps eps fixed, so DDIM's
    x <- alpha' mu + sigma' eps_hat is the exact flow, in one step; Euler's single step is not."""
    path, x = VPSDE(), _start()
    point = lambda y, t: MU.expand_as(y)  # noqa: E731  (the exact x0-prediction of a point mass)
    exact = _exact_flow_point(path, x)
    ddim = sampling.flow_sample(point, path, x, 1, solver="ddim", prediction="x0", eps=EPS)
    euler = sampling.flow_sample(point, path, x, 1, solver="euler", prediction="x0", eps=EPS)
    torch.testing.assert_close(ddim, exact, rtol=1e-12, atol=1e-12)
    assert (euler - exact).abs().max() > 0.1


def _exact_flow_point(path, x):
    (a0, s0), (a1, s1) = ([c.item() for c in path.marginal_coeffs(t)] for t in (path.T, EPS))
    return a1 * MU + s1 * (x - a0 * MU) / s0


@pytest.mark.parametrize("solver", sampling.FLOW_SOLVERS)
def test_every_prediction_gives_the_same_samples(solver):
    """One ODE whatever the field predicts: velocity, score, x0 and eps fields give the same samples to round-off."""
    path, x = VPSDE(), _start()
    outs = [
        sampling.flow_sample(paths.mixture_field(GAUSSIAN, path, p), path, x, 5, solver=solver, prediction=p, eps=EPS)
        for p in paths.PREDICTIONS
    ]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("solver, per_step", [("euler", 1), ("heun", 2), ("edm", 2), ("ddim", 1), ("dpm_solver_2", 2)])
def test_nfe_is_counted(solver, per_step):
    """N steps cost N or 2N evaluations; EDM's (Alg. 1) last step, to sigma = 0, is uncorrected: 2N - 1."""
    path, x = VPSDE(), _start()
    _, nfe = sampling.flow_sample(paths.mixture_field(GAUSSIAN, path), path, x, 7, solver=solver, prediction="velocity", return_nfe=True)
    assert nfe == 7 * per_step - (solver == "edm")


def test_edm_grid_is_karras_eq_5():
    """The "edm" grid's sigma / alpha at each node is Karras et al.'s rho = 7 spacing between its ends."""
    path, n = VPSDE(), 10
    times = torch.tensor(sampling.flow_time_grid(path, n, schedule="edm", eps=EPS), dtype=torch.float64)
    alpha, sigma = path.marginal_coeffs(times)
    ratio = sigma / alpha
    i = torch.arange(n + 1, dtype=torch.float64) / n
    expected = (ratio[0] ** (1 / 7) + i * (ratio[-1] ** (1 / 7) - ratio[0] ** (1 / 7))) ** 7
    torch.testing.assert_close(ratio, expected, rtol=1e-12, atol=0)
    assert times[0] == path.T and times[-1] == EPS


def test_callback_sees_every_step():
    seen = []
    path = LinearPath()
    sampling.flow_sample(
        paths.mixture_field(GAUSSIAN, path), path, _start(), 4, solver="euler", prediction="velocity", callback=seen.append
    )
    assert [s["i"] for s in seen] == [0, 1, 2, 3] and seen[-1]["t"] == EPS


def test_ddim_is_euler_on_the_linear_path_but_not_on_vp():
    """alpha = 1 - t and sigma = t are affine in t, so Euler's x + (s - t)(alpha_dot x0 + sigma_dot eps) is
    (1 - s) x0 + s eps, DDIM's step: the two samplers agree to round-off there, and differ on VP."""
    x = _start()
    for path, agree in ((LinearPath(), True), (VPSDE(), False)):
        field = paths.mixture_field(GAUSSIAN, path)
        ddim, euler = (sampling.flow_sample(field, path, x, 6, solver=s, prediction="velocity", eps=EPS) for s in ("ddim", "euler"))
        assert ((ddim - euler).abs().max() < 1e-12) == agree


def _karras_alg1(x_tilde, sigma_max, sigma_min, n, rho=7.0):
    """Karras et al. 2022, Alg. 1 with sigma(t) = t, s(t) = 1, written out from the paper for N(mu, s^2 I) data:
    nodes t_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho for i < N, t_N = 0
    (Eq. 5); d_i = (x_i - D(x_i; t_i)) / t_i; Euler to t_{i+1}, then the trapezoidal correction unless t_{i+1} = 0.
    D is the exact denoiser of the Gaussian, mu + s^2 / (s^2 + t^2) (x - mu)."""
    nodes = [(sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho for i in range(n)]
    nodes.append(0.0)
    denoise = lambda x, t: MU + S2 / (S2 + t**2) * (x - MU)  # noqa: E731
    x = x_tilde
    for t, t_next in zip(nodes[:-1], nodes[1:]):
        d = (x - denoise(x, t)) / t
        x_next = x + (t_next - t) * d
        if t_next != 0:
            x_next = x + (t_next - t) * (0.5 * d + 0.5 * (x_next - denoise(x_next, t_next)) / t_next)
        x = x_next
    return x


@pytest.mark.parametrize("path, t_max", [(VPSDE(), None), (LinearPath(), 0.99), (VESDE(), None)], ids=repr)
@pytest.mark.parametrize("n", [2, 4, 9])
def test_edm_is_karras_alg1_as_published(path, t_max, n):
    """flow_sample(solver="edm") with N steps is Alg. 1 with N nodes and the uncorrected Euler step to sigma = 0: the
    same samples as the hand-written Alg. 1 above (in x~ = x / alpha, from sigma / alpha at t_max to that at eps) to
    round-off, with 2N - 1 evaluations."""
    x = _start()
    t_max_ = t_max or path.T
    (a0, s0), (a1, s1) = ([c.item() for c in path.marginal_coeffs(torch.tensor(t, dtype=torch.float64))] for t in (t_max_, EPS))
    by_hand = _karras_alg1(x / a0, s0 / a0, s1 / a1, n)
    field = paths.mixture_field(GAUSSIAN, path, "x0")
    out, nfe = sampling.flow_sample(field, path, x, n, solver="edm", prediction="x0", eps=EPS, t_max=t_max, return_nfe=True)
    torch.testing.assert_close(out, by_hand, rtol=1e-10, atol=1e-10)
    assert nfe == 2 * n - 1
    # the library's Heun in t on N + 1 nodes is another method: it differs from Alg. 1 at these N
    heun = sampling.flow_sample(field, path, x, n, solver="heun", prediction="x0", eps=EPS, t_max=t_max)
    assert (heun - by_hand).abs().max() > 1e-3
