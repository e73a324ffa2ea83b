r"""Exact log-likelihoods through the probability-flow ODE (instantaneous change of variables).

Along dx/dt = F(x, t) = f(t) x - g(t)^2 s(x, t) / 2, d log p_t(x(t)) / dt = -div F, so

    log p_eps(x) = log p_T(x(T)) + int_eps^T div_x F(x(t), t) dt,

integrated from t = eps up to T together with x(t) (Chen et al. 2018; Song et al. 2021, App. D.2). The
divergence is exact (one backward pass per dimension: small D) or Hutchinson's estimate with fixed
probes v: E[v^T (dF/dx) v] (Grathwohl et al. 2019). Introduced in lesson 05.
"""

from __future__ import annotations

import math

import torch

from ._checks import (
    as_generator,
    check_bounds,
    check_callable,
    check_choice,
    check_int,
    check_output,
    check_sde,
    check_tensor,
    checked_score,
)
from .datasets import to_model_range
from .losses import PROJECTIONS
from .sampling import DivergenceError, _batch_time, integrate_ode
from .sde import probability_flow_drift

DIVERGENCES = ("exact", "hutchinson")


def _exact_divergence(field: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    flat = field.reshape(len(field), -1)
    div = torch.zeros(len(x), dtype=x.dtype, device=x.device)
    for d in range(flat.shape[1]):
        (grad,) = torch.autograd.grad(flat[:, d].sum(), x, retain_graph=True)
        div = div + grad.reshape(len(x), -1)[:, d]
    return div


def _hutchinson_divergence(field: torch.Tensor, x: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
    # probes: (n_probes, *x.shape); v^T (dF/dx) v averaged over probes
    total = torch.zeros(len(x), dtype=x.dtype, device=x.device)
    for v in probes:
        (vjp,) = torch.autograd.grad(field, x, grad_outputs=v, retain_graph=True)
        total = total + (vjp * v).reshape(len(x), -1).sum(1)
    return total / len(probes)


def log_prob(
    score,
    sde,
    x: torch.Tensor,
    *,
    divergence: str = "exact",
    n_probes: int = 1,
    probe: str = "gaussian",
    eps: float = 1e-5,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    n_steps: int | None = None,
    prior_log_prob=None,
    generator=None,
    return_nfe: bool = False,
):
    r"""log p_eps(x) (approximately log p_0(x)) by the probability-flow ODE, shape `(n,)`.

    Args:
        score: `(x, t) -> s(x, t)`. sde: a `scorelab.sde.SDE`. x: `(n, *dims)`.
        divergence: "exact" (D backward passes per evaluation) or "hutchinson" (`n_probes` fixed
            probes of kind `probe`, "gaussian" or "rademacher"; unbiased, noisier, O(n_probes) cost).
        prior_log_prob: log-density of x(T); defaults to `sde.prior_log_prob`. Passing the exact
            p_T (e.g. `mixture.marginal(sde, sde.T).log_prob`) removes the prior-mismatch error.
        method, rtol, atol, n_steps: as in `scorelab.sampling.ode_sample`.
    Returns:
        `(n,)` log-densities, or `(log_prob, nfe)` when `return_nfe`.
    """
    check_callable("score", score)
    check_tensor("x", x, min_dim=2)
    score = checked_score(score)
    check_choice("divergence", divergence, DIVERGENCES)
    check_int("n_probes", n_probes, minimum=1)
    check_choice("probe", probe, PROJECTIONS)
    check_sde("sde", sde)
    eps = sde.check_eps(eps)
    prior_log_prob = prior_log_prob or sde.prior_log_prob
    check_callable("prior_log_prob", prior_log_prob)
    generator = as_generator(generator, x.device)
    probes = None
    if divergence == "hutchinson":
        probes = PROJECTIONS[probe]((n_probes, *x.shape), generator, x.dtype, x.device)
    nfe = 0

    def augmented(t, state):
        nonlocal nfe
        nfe += 1
        y, _ = state
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            field = probability_flow_drift(sde, score, y, _batch_time(t, y))
            div = _exact_divergence(field, y) if probes is None else _hutchinson_divergence(field, y, probes)
        return field.detach(), div.detach()

    zero = torch.zeros(len(x), dtype=x.dtype, device=x.device)
    x_T, integral = integrate_ode(
        augmented, (x.detach(), zero), eps, sde.T, method=method, rtol=rtol, atol=atol, n_steps=n_steps, interval=(eps, sde.T)
    )
    prior = check_output("prior_log_prob", prior_log_prob(x_T), x.shape[:1])
    out = prior + integral
    if not torch.isfinite(out).all():
        raise DivergenceError(
            f"log_prob became non-finite: the prior gave {prior.min().item():.3g} at x(T); pass the exact "
            "prior_log_prob, or check that x lies where the model has mass"
        )
    return (out, nfe) if return_nfe else out


def bits_per_dim(
    score, sde, images: torch.Tensor, *, n_bins: int = 256, data_range=(-1.0, 1.0), generator=None, **ode_options
) -> torch.Tensor:
    r"""Bits per dimension of integer images under the model, with explicit uniform dequantisation.

    Pixels k in {0, ..., n_bins - 1} become y = (k + u) / n_bins, u ~ U[0, 1), mapped linearly to the model's
    `data_range` as x (`datasets.to_model_range(..., dequantize=True)`). Then log p(y) = log p(x) + D log(hi - lo),
    the discrete probability is bounded by log P(k) >= E_u log p(y) - D log n_bins, and bits/dim = -(log p(y) - D log n_bins) / (D ln 2)
    (Theis et al. 2016; Ho et al. 2020, App. B). Returns the `(n,)` per-image values for one draw of u.
    """
    lo, hi = check_bounds(data_range, "data_range")
    generator = as_generator(generator, getattr(images, "device", None))  # one stream for the dequantisation and the probes
    x = to_model_range(images, n_bins, (lo, hi), dequantize=True, generator=generator)
    D = x[0].numel()
    log_p_y = log_prob(score, sde, x, generator=generator, **ode_options) + D * math.log(hi - lo)
    return -(log_p_y - D * math.log(n_bins)) / (D * math.log(2))
