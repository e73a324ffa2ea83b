r"""Samplers driven by a score: Langevin dynamics, MALA and annealed Langevin dynamics.

All share one shape of signature, `(score, x, schedule..., *, generator=None, callback=None)`:
`x` is the starting batch `(n, *dims)` (returned samples have its shape), `generator` is a
`torch.Generator` or an int seed, and `callback`, if given, receives a dict per step with
at least `x`, `i` (global step) and the step size. Every sampler checks its particles after
each step and raises `ValueError` naming the step size (and level) when any becomes
non-finite, instead of returning NaN.

Step-size convention. Here one Langevin step is

    x <- x + eps * s(x) + sqrt(2 eps) * z,

the Euler-Maruyama step of dX = grad log p(X) dt + sqrt(2) dB with time step eps (as in
Song & Ermon 2020, "Improved techniques", Alg. 1). Song & Ermon 2019, Alg. 1 write
x <- x + (alpha/2) s + sqrt(alpha) z: the same chain with alpha = 2 eps.

Introduced in lessons 03 (`langevin`, `mala`) and 04 (`annealed_langevin`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._checks import append_dims, as_generator, check_callable, check_int, check_positive, check_tensor
from .noise import check_sigmas


def _divergence(i: int, where: str) -> ValueError:
    return ValueError(f"Langevin particles became non-finite at step {i} ({where}): the step is too large for this score; reduce step_size")


def _randn_like(x: torch.Tensor, generator) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def _start(score, x, step_size, n_steps, generator, names=("score", "n_steps")):
    check_callable(names[0], score)
    check_tensor("x", x, min_dim=2)
    step_size = check_positive("step_size", step_size, allow_tensor=False)
    check_int(names[1], n_steps, minimum=0)
    return x.detach().clone(), step_size, as_generator(generator, x.device)


def langevin(
    score: Callable,
    x: torch.Tensor,
    step_size: float,
    n_steps: int,
    *,
    generator=None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    r"""Unadjusted Langevin algorithm (ULA): x <- x + eps s(x) + sqrt(2 eps) z, `n_steps` times.

    For a Gaussian N(mu, s^2 I) and its exact score the chain's stationary variance is
    s^2 * 2 / (2 - eps / s^2), not s^2: the discretisation bias that MALA removes (lesson 03).

    Args:
        score: `x -> grad log p(x)`, same shape as `x`.
        x: starting particles `(n, *dims)`.
        step_size: eps > 0. n_steps: >= 0.
    Returns:
        the particles after `n_steps` steps. `callback` gets `{"x", "i", "step_size"}`.
    """
    x, step_size, generator = _start(score, x, step_size, n_steps, generator)
    noise_scale = math.sqrt(2 * step_size)
    for i in range(n_steps):
        with torch.no_grad():
            x = x + step_size * score(x) + noise_scale * _randn_like(x, generator)
        if not torch.isfinite(x).all():
            raise _divergence(i, f"step_size={step_size:.3g}")
        if callback is not None:
            callback({"x": x, "i": i, "step_size": step_size})
    return x


def mala(
    log_prob: Callable,
    x: torch.Tensor,
    step_size: float,
    n_steps: int,
    *,
    generator=None,
    callback: Callable[[dict], None] | None = None,
) -> tuple[torch.Tensor, float]:
    r"""Metropolis-adjusted Langevin (Roberts & Tweedie 1996): ULA proposals, accepted with Metropolis-Hastings.

    Proposal y = x + eps grad log p(x) + sqrt(2 eps) z, i.e. q(y | x) = N(x + eps grad log p(x), 2 eps I),
    accepted with probability min(1, p(y) q(x | y) / (p(x) q(y | x))). The chain leaves p exactly
    invariant for every eps; only the acceptance rate pays for a large step (lesson 03).

    Args:
        log_prob: `x -> log p(x)` of shape `(n,)`, up to a constant; its gradient is taken by autograd.
    Returns:
        `(samples, acceptance_rate)`, the rate over all particles and steps. `callback` gets
        `{"x", "i", "step_size", "accepted"}` with `accepted` a `(n,)` bool tensor.
    """
    x, step_size, generator = _start(log_prob, x, step_size, n_steps, generator, names=("log_prob", "n_steps"))

    def log_prob_and_score(v):
        with torch.enable_grad():
            v = v.detach().requires_grad_(True)
            lp = log_prob(v)
            (grad,) = torch.autograd.grad(lp.sum(), v)
        return lp.detach(), grad

    def log_q(to, frm, grad_frm):  # log N(to; frm + eps grad, 2 eps I) up to a constant
        return -((to - frm - step_size * grad_frm) ** 2).reshape(len(to), -1).sum(1) / (4 * step_size)

    lp_x, grad_x = log_prob_and_score(x)
    n_accepted = 0
    for i in range(n_steps):
        y = x + step_size * grad_x + math.sqrt(2 * step_size) * _randn_like(x, generator)
        lp_y, grad_y = log_prob_and_score(y)
        log_alpha = lp_y - lp_x + log_q(x, y, grad_y) - log_q(y, x, grad_x)
        u = torch.rand(len(x), generator=generator, dtype=x.dtype, device=x.device)
        accepted = torch.isfinite(log_alpha) & (u.log() < log_alpha)
        keep = append_dims(accepted, x.ndim)
        x, grad_x, lp_x = torch.where(keep, y, x), torch.where(keep, grad_y, grad_x), torch.where(accepted, lp_y, lp_x)
        n_accepted += int(accepted.sum())
        if not torch.isfinite(x).all():
            raise _divergence(i, f"step_size={step_size:.3g}")
        if callback is not None:
            callback({"x": x, "i": i, "step_size": step_size, "accepted": accepted})
    return x, n_accepted / max(1, n_steps * len(x))


def annealed_langevin(
    score: Callable,
    x: torch.Tensor,
    sigmas,
    step_size: float,
    n_steps_each: int,
    *,
    denoise: bool = False,
    mask: torch.Tensor | None = None,
    known: torch.Tensor | None = None,
    generator=None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    r"""Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1, in this module's step convention).

    For each level sigma_i (largest first): alpha_i = eps sigma_i^2 / sigma_L^2, then `n_steps_each` times
    x <- x + alpha_i s(x, sigma_i) + sqrt(2 alpha_i) z. With `denoise`, a final Tweedie step
    x <- x + sigma_L^2 s(x, sigma_L) removes the last level's noise (Jolicoeur-Martineau et al. 2021).

    Inpainting (Song & Ermon 2019, App. B.3): with a boolean `mask` (True = known, broadcastable
    to x) and `known` values, the known entries are reset to known + sigma_i z at every step, so
    only the unknown ones are sampled, from the conditional given the known ones.

    Args:
        score: `(x, sigma) -> s(x, sigma)`, `sigma` a `(batch,)` tensor.
        sigmas: strictly decreasing positive levels. step_size: eps > 0 (see `noise.langevin_step_size`).
    Returns:
        the particles. `callback` gets `{"x", "i", "level", "sigma", "step_size"}` with `step_size` = alpha_i.
    """
    x, step_size, generator = _start(score, x, step_size, n_steps_each, generator, names=("score", "n_steps_each"))
    sigmas = check_sigmas(sigmas)
    if (mask is None) != (known is None):
        raise ValueError("mask and known must be given together (inpainting)")
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor, got dtype {mask.dtype}")
        known = check_tensor("known", known).to(x.dtype).expand_as(x)
        mask = mask.expand_as(x)
    sigma_l = sigmas[-1].item()
    i = 0
    for level, sigma in enumerate(sigmas.tolist()):
        alpha = step_size * sigma**2 / sigma_l**2
        noise_scale = math.sqrt(2 * alpha)
        sigma_batch = torch.full((len(x),), sigma, dtype=x.dtype, device=x.device)
        for _ in range(n_steps_each):
            with torch.no_grad():
                if mask is not None:
                    x = torch.where(mask, known + sigma * _randn_like(x, generator), x)
                x = x + alpha * score(x, sigma_batch) + noise_scale * _randn_like(x, generator)
            if not torch.isfinite(x).all():
                raise _divergence(i, f"level {level}, sigma={sigma:.3g}, alpha_i={alpha:.3g} from step_size={step_size:.3g}")
            if callback is not None:
                callback({"x": x, "i": i, "level": level, "sigma": sigma, "step_size": alpha})
            i += 1
    with torch.no_grad():
        if denoise:
            x = x + sigma_l**2 * score(x, torch.full((len(x),), sigma_l, dtype=x.dtype, device=x.device))
        if mask is not None:
            x = torch.where(mask, known, x)
    return x
