r"""Samplers driven by a score: Langevin dynamics, MALA and annealed Langevin dynamics.

All share one shape of signature, `(score, x, schedule..., *, generator=None, callback=None)`:
`x` is the starting batch `(n, *dims)` (returned samples have its shape), `generator` is a
`torch.Generator` or an int seed, and `callback`, if given, receives a dict per step with
at least `x`, `i` (global step) and the step size. Every sampler checks its particles every
`CHECK_EVERY` steps (each check is a host sync), after the last step and at every step a callback
sees, and raises `DivergenceError` (a `ValueError`) naming the steps and the step size (and level)
when any became non-finite, instead of returning NaN.

Step-size convention. Here one Langevin step is

    x <- x + eps * s(x) + sqrt(2 eps) * z,

the Euler-Maruyama step of dX = grad log p(X) dt + sqrt(2) dB with time step eps (as in
Song & Ermon 2020, "Improved techniques", Alg. 1). Song & Ermon 2019, Alg. 1 write
x <- x + (alpha/2) s + sqrt(alpha) z: the same chain with alpha = 2 eps.

The reverse-time SDE samplers (`pc_sample`) and the probability-flow ODE (`ode_sample`) follow
Song et al. 2021; their callbacks carry the forward time `t` instead of `sigma`, as does
`exponential_integrator`, the discretisation of the reverse OU SDE that Chen et al. 2023 analyse.

Introduced in lessons 03 (`langevin`, `mala`), 04 (`annealed_langevin`, `score_on_unknown`), 05 (`pc_sample`,
`ode_sample`), 06 (`exponential_integrator`) and 10 (`flow_sample`: Euler, Heun, DDIM and DPM-Solver-2 on any
Gaussian path at a fixed number of field evaluations).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

from ._checks import (
    append_dims,
    as_generator,
    check_callable,
    check_choice,
    check_int,
    check_nonnegative,
    check_output,
    check_positive,
    check_sde,
    check_tensor,
    checked_score,
    values_checked_by_caller,
)
from .noise import check_sigmas
from .paths import PREDICTIONS, from_x0_eps, to_x0_eps
from .sde import check_gaussian_path, probability_flow_drift, reverse_drift, transition_from_marginals
from .threads import adapt as adapt_threads


class DivergenceError(FloatingPointError, ValueError):
    """A sampler's or an ODE's state stopped being finite; the message says where and which argument to change.
    (A ValueError too, as the samplers' bad-argument errors are.)"""


#: the step-by-step samplers check their particles for NaN/inf every this many steps, after the last step, and at every
#: step a callback sees: each check is a host sync, which on a GPU stalls the queue of kernels (a non-finite particle
#: stays non-finite, so a later check still catches it)
CHECK_EVERY = 10


class _FiniteGuard:
    """Finiteness checks of a sampler's particles at due steps: `check` raises `error(steps)` (steps: "at step 7" or
    "at one of steps 0-9") when they stopped being finite; `step` wraps one step so that a `ValueError` a score raises
    because its input is already non-finite (a score that checks its input) is reported the same way. Inside a step,
    library scores skip their own NaN scan of the particles (`values_checked_by_caller`): these checks stand in for it."""

    def __init__(self, n_steps: int, callback):
        self.n_steps, self.every_step, self.checked = n_steps, callback is not None, -1

    def _steps(self, last: int) -> str:
        first = self.checked + 1
        return f"at step {last}" if first >= last else f"at one of steps {first}-{last}"

    def check(self, x: torch.Tensor, i: int, error) -> None:
        if self.every_step or (i + 1) % CHECK_EVERY == 0 or i + 1 == self.n_steps:
            if not torch.isfinite(x).all():
                raise error(self._steps(i))
            self.checked = i

    def step(self, x: torch.Tensor, i: int, error) -> _GuardedStep:
        return _GuardedStep(self, x, i, error)


class _GuardedStep:
    """The context of one step (`_FiniteGuard.step`): a class rather than a generator, as it is entered at every
    step and a generator-based context manager costs several times more."""

    __slots__ = ("guard", "x", "i", "error", "skipping")

    def __init__(self, guard: _FiniteGuard, x: torch.Tensor, i: int, error):
        self.guard, self.x, self.i, self.error = guard, x, i, error

    def __enter__(self):
        adapt_threads()  # a clock read unless it is time to look at the machine's load (scorelab.threads)
        self.skipping = values_checked_by_caller()  # these checks stand in for the scores' own scans of their input
        self.skipping.__enter__()

    def __exit__(self, kind, err, traceback) -> bool:
        self.skipping.__exit__(kind, err, traceback)
        if kind is None or not issubclass(kind, ValueError) or isinstance(err, DivergenceError) or torch.isfinite(self.x).all():
            return False
        raise self.error(self.guard._steps(self.i)) from None


def _divergence(where: str):
    return lambda steps: DivergenceError(
        f"Langevin particles became non-finite {steps} ({where}): the step is too large for this score; reduce step_size"
    )


def _randn_like(x: torch.Tensor, generator) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def _start(score, x, step_size, n_steps, generator, names=("score", "n_steps")):
    check_callable(names[0], score)
    check_tensor("x", x, min_dim=2)
    step_size = check_positive("step_size", step_size, allow_tensor=False)
    if 2 * step_size > torch.finfo(x.dtype).max:  # torch would refuse to turn it into x's dtype, in its own words
        raise ValueError(f"step_size={step_size:.3g} overflows {x.dtype} (largest {torch.finfo(x.dtype).max:.3g}): reduce it")
    check_int(names[1], n_steps, minimum=0)
    return x.detach().clone(), step_size, as_generator(generator, x.device)


def _check_callback(callback) -> None:
    if callback is not None:
        check_callable("callback", callback)


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
    _check_callback(callback)
    score = checked_score(score)
    noise_scale = math.sqrt(2 * step_size)
    guard, error = _FiniteGuard(n_steps, callback), _divergence(f"step_size={step_size:.3g}")
    for i in range(n_steps):
        with guard.step(x, i, error), torch.no_grad():
            x = torch.add(x, score(x), alpha=step_size).add_(_randn_like(x, generator), alpha=noise_scale)
        guard.check(x, i, error)
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
    _check_callback(callback)

    def log_prob_and_score(v):
        with torch.enable_grad():
            v = v.detach().requires_grad_(True)
            lp = check_output("log_prob", log_prob(v), v.shape[:1])  # one log-density per particle
            (grad,) = torch.autograd.grad(lp.sum(), v)
        return lp.detach(), grad

    def log_q(to, frm, grad_frm):  # log N(to; frm + eps grad, 2 eps I) up to a constant
        return -((to - frm - step_size * grad_frm) ** 2).reshape(len(to), -1).sum(1) / (4 * step_size)

    lp_x, grad_x = log_prob_and_score(x)
    n_accepted = torch.zeros((), dtype=torch.int64, device=x.device)  # summed on the device: no host sync per step
    guard, error = _FiniteGuard(n_steps, callback), _divergence(f"step_size={step_size:.3g}")
    for i in range(n_steps):
        y = x + step_size * grad_x + math.sqrt(2 * step_size) * _randn_like(x, generator)
        with guard.step(x, i, error):
            lp_y, grad_y = log_prob_and_score(y)
        log_alpha = lp_y - lp_x + log_q(x, y, grad_y) - log_q(y, x, grad_x)
        u = torch.rand(len(x), generator=generator, dtype=x.dtype, device=x.device)
        accepted = torch.isfinite(log_alpha) & (u.log() < log_alpha)
        keep = append_dims(accepted, x.ndim)
        x, grad_x, lp_x = torch.where(keep, y, x), torch.where(keep, grad_y, grad_x), torch.where(accepted, lp_y, lp_x)
        n_accepted += accepted.sum()
        guard.check(x, i, error)
        if callback is not None:
            callback({"x": x, "i": i, "step_size": step_size, "accepted": accepted})
    n_accepted = int(n_accepted)
    if n_steps and not n_accepted:
        warnings.warn(
            f"mala accepted none of {n_steps * len(x)} proposals: the chain did not move; reduce step_size (now {step_size:.3g})",
            RuntimeWarning,
            stacklevel=2,
        )
    return x, n_accepted / max(1, n_steps * len(x))


def _inpainting(mask, known, x: torch.Tensor):
    """Check the inpainting pair: a bool `mask` (True = known) and the `known` values, both broadcastable to x."""
    if (mask is None) != (known is None):
        raise ValueError("mask and known must be given together (inpainting)")
    if mask is None:
        return None, None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = known), got {getattr(mask, 'dtype', type(mask).__name__)}")
    known = check_tensor("known", known)
    for name, value in (("mask", mask), ("known", known)):
        try:
            torch.broadcast_shapes(value.shape, x.shape)
        except RuntimeError:
            raise ValueError(f"{name} must broadcast to x's shape {tuple(x.shape)}, got {tuple(value.shape)}") from None
        if value.ndim > x.ndim or torch.broadcast_shapes(value.shape, x.shape) != x.shape:
            raise ValueError(f"{name} must broadcast to x's shape {tuple(x.shape)}, got {tuple(value.shape)}")
    if not mask.any():  # nothing known: plain sampling, with the same random numbers
        return None, None
    return mask.expand_as(x), known.to(x.dtype).expand_as(x)


def score_on_unknown(score: Callable, mask: torch.Tensor) -> Callable:
    r"""A score of the unknown coordinates alone, as a score of all of x that leaves the known coordinates still.

    `score(u, sigma)` takes the unknown coordinates u = x[:, ~mask], shape `(n, D_u)`; the returned
    `(x, sigma) -> s` takes x `(n, D)` and returns s of x's shape: `score(u, sigma)` in the unknown
    coordinates, 0 in the known ones. Given to `annealed_langevin` with the same `mask`, `known` and
    generator as a replacement-inpainting run, it runs annealed Langevin on a conditional law (e.g.
    `GaussianMixture.condition(mask, values).noisy_score`) fed the same random numbers step for step:
    the paired control that separates the replacement's bias from the annealing's own.

    Args:
        score: `(u, sigma) -> grad_u log p_sigma(u)`, `(n, D_u)` in and out.
        mask: `(D,)` bool tensor, True = known; at least one coordinate unknown.
    Returns:
        the score `(x, sigma) -> s` of x's shape. Introduced in lesson 04.
    """
    check_callable("score", score)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.ndim != 1:
        raise TypeError(f"mask must be a 1-D bool tensor (True = known), got {getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.all():
        raise ValueError("mask must leave at least one coordinate unknown (False)")
    unknown = ~mask
    score = checked_score(score)

    def full(x: torch.Tensor, sigma) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != len(mask):
            raise ValueError(f"x must have shape (n, {len(mask)}) to match mask, got {tuple(x.shape)}")
        s = torch.zeros_like(x)
        s[:, unknown.to(x.device)] = score(x[:, unknown.to(x.device)], sigma)
        return s

    return full


#: when annealed_langevin's inpainting draws the known part's noise: before every step, or once per noise level
RENOISE = ("step", "level")


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
    renoise: str = "step",
    generator=None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    r"""Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1, in this module's step convention).

    For each level sigma_i (largest first): alpha_i = eps sigma_i^2 / sigma_L^2, then `n_steps_each` times
    x <- x + alpha_i s(x, sigma_i) + sqrt(2 alpha_i) z. With `denoise`, a final Tweedie step
    x <- x + sigma_L^2 s(x, sigma_L) removes the last level's noise (Jolicoeur-Martineau et al. 2021).

    Inpainting: with a boolean `mask` (True = known, broadcastable to x) and `known` values, the
    known entries are overwritten by a noisy copy y = known + sigma_i z before every step, all entries
    take the step, and at the end the known entries are set to `known`. `renoise` says when y is drawn:
      - "level": once per level, held for its `n_steps_each` steps. This is Song & Ermon 2019,
        App. B.3, Alg. 2 (transcribed in Khungurn's notes, Sec. 5.2) as the authors' code runs it
        (ermongroup/ncsn, `anneal_Langevin_dynamics_inpainting`, which also writes y_i in at the
        start of level i; the printed algorithm writes it only after each step, so there a level's
        first step still sees y_{i-1}: tests/test_sampling.py finds no difference in lesson 04's case).
      - "step" (default): a fresh y before every step, as the NCSNv2 code does
        (ermongroup/ncsnv2, `anneal_Langevin_dynamics_inpainting`) and as score_sde's PC inpainter
        does after every predictor and corrector update (Song et al. 2021, `get_pc_inpainter`).
    Either way this is an approximation, not a sampler of p(unknown | known): the unknown entries
    are driven by the score of p_sigma_i at a *noisy* known part, and nothing makes the result the
    conditional given the clean one. Lesson 04 measures the bias of both variants: in the mode
    weights of a bimodal conditional ("level"'s own part, each run minus the exact conditional's
    chain with the same random numbers, is larger than the default's, by 2 to 4 times over eight
    seed sets, about 2.7 pooled; measured against the exact weight the annealing's own error is
    added), and in the mean and the
    variance of a correlated Gaussian's conditional (both alike; none when the correlation is 0,
    where the unknown part's score does not depend on the known part). Known fixes:
    resampling (Lugmayr et al. 2022, RePaint), a likelihood-gradient term (Chung et al. 2022), or
    sequential Monte Carlo, which is asymptotically exact (Trippe et al. 2023; Wu et al. 2023).
    When the conditional is a known mixture, sample it exactly with its own noisy score instead.

    Args:
        score: `(x, sigma) -> s(x, sigma)`, `sigma` a `(batch,)` tensor.
        sigmas: strictly decreasing positive levels. step_size: eps > 0 (see `noise.langevin_step_size`).
        renoise: "step" or "level", when the known part's noise is drawn (inpainting only).
    Returns:
        the particles. `callback` gets `{"x", "i", "level", "sigma", "step_size"}` with `step_size` = alpha_i.
    Introduced in lesson 04.
    """
    x, step_size, generator = _start(score, x, step_size, n_steps_each, generator, names=("score", "n_steps_each"))
    _check_callback(callback)
    score = checked_score(score)
    sigmas = check_sigmas(sigmas)
    mask, known = _inpainting(mask, known, x)
    check_choice("renoise", renoise, RENOISE)
    sigma_l = sigmas[-1].item()
    i = 0
    guard = _FiniteGuard(len(sigmas) * n_steps_each, callback)
    for level, sigma in enumerate(sigmas.tolist()):
        alpha = step_size * sigma**2 / sigma_l**2
        noise_scale = math.sqrt(2 * alpha)
        # one value expanded to the batch (stride 0): a score can see that it is shared without scanning it
        sigma_batch = torch.full((1,), sigma, dtype=x.dtype, device=x.device).expand(len(x))
        error = _divergence(f"by level {level}, sigma={sigma:.3g}, alpha_i={alpha:.3g} from step_size={step_size:.3g}")
        for step in range(n_steps_each):
            with guard.step(x, i, error), torch.no_grad():
                if mask is not None:  # the known part, noised to this level
                    if renoise == "step" or step == 0:
                        noisy_known = known + sigma * _randn_like(x, generator)
                    x = torch.where(mask, noisy_known, x)
                x = torch.add(x, score(x, sigma_batch), alpha=alpha).add_(_randn_like(x, generator), alpha=noise_scale)
            guard.check(x, i, error)
            if callback is not None:
                callback({"x": x, "i": i, "level": level, "sigma": sigma, "step_size": alpha})
            i += 1
    with torch.no_grad():
        if denoise:
            x = x + sigma_l**2 * score(x, torch.full((len(x),), sigma_l, dtype=x.dtype, device=x.device))
        if mask is not None:
            x = torch.where(mask, known, x)
    return x


# --- reverse-time SDE: predictor-corrector samplers (Song et al. 2021, Sec. 4.2, App. G) -----------------------
# A predictor moves x from time t to t_next < t and returns (x, x_mean); z is the step's standard noise.


class _Schedule:
    """m(t) and sigma(t) of a linear SDE at a sampler's grid of times, worked out in one vectorised call and kept as
    floats: the predictors ask for them at every step (each ask was a dozen operations on 0-d tensors)."""

    def __init__(self, sde, times: list[float]):
        self.sde = sde
        m, std = sde.marginal_coeffs(torch.tensor(times, dtype=torch.float64))
        self._coeffs = dict(zip(times, zip(m.tolist(), std.tolist())))

    def marginal(self, t: float) -> tuple[float, float]:
        """(m(t), sigma(t))."""
        coeffs = self._coeffs.get(t)
        return coeffs if coeffs is not None else tuple(c.item() for c in self.sde.marginal_coeffs(t))

    def transition(self, s: float, t: float) -> tuple[float, float]:
        """(a, b) with x_t = a x_s + b z for s < t, as `SDE.transition_coeffs`."""
        return transition_from_marginals(*self.marginal(s), *self.marginal(t))


def _precompute(score, times: list[float], x: torch.Tensor) -> None:
    """Tell a score with a `precompute(times)` method (`GaussianMixture.marginal_score`'s) every time a sampler will
    ask for, as `_time_batch` will pass them: it then works out what depends on t alone in one vectorised call."""
    precompute = getattr(score, "precompute", None)
    if precompute is not None:
        precompute(torch.tensor(times, dtype=x.dtype, device=x.device))


def _time_batch(t: float, x: torch.Tensor) -> torch.Tensor:
    """One time for the whole batch, expanded (stride 0) so that a score can see it is shared without a scan."""
    return torch.full((1,), t, dtype=x.dtype, device=x.device).expand(len(x))


def _euler_maruyama(sde, schedule, score, x, t, t_next, z):
    """x <- x - [f(t) x - g(t)^2 s(x, t)] |dt| + g(t) sqrt(|dt|) z."""
    dt = t - t_next
    mean = x - reverse_drift(sde, score, x, _time_batch(t, x)) * dt
    return mean + append_dims(sde.diffusion(_time_batch(t, x)).to(x.dtype), x.ndim) * math.sqrt(dt) * z, mean


def _reverse_diffusion(sde, schedule, score, x, t, t_next, z):
    """Song et al. 2021, Eq. 46: the forward step x_t = a x_next + b z, its drift (a - 1) x and noise b reused backwards
    with the drift's sign flipped and a score term added, x <- x - (a - 1) x + b^2 s(x, t) + b z (not an inverse)."""
    a, b = schedule.transition(t_next, t)
    mean = torch.mul(x, 2 - a).add_(score(x, _time_batch(t, x)), alpha=b * b)
    return torch.add(mean, z, alpha=b), mean


def _ancestral(sde, schedule, score, x, t, t_next, z):
    """The SMLD (VE) or DDPM (VP) ancestral step that the SDE defines: x <- a x + b s(x, t) + c z."""
    a, b, c = (v.item() for v in sde.ancestral_coeffs(t, t_next))
    mean = a * x + b * score(x, _time_batch(t, x))
    return mean + c * z, mean


def _mean_norm(v: torch.Tensor) -> torch.Tensor:
    """The batch mean of the per-sample norms, as a sum of squares: `norm(dim=1)` of a transposed score (the mixtures'
    layout, `_separable_score`) costs a CPU seven times more (130 against 18 microseconds at 1000 x 2)."""
    return v.reshape(len(v), -1).square().sum(1).sqrt_().mean()


def _langevin_corrector(sde, schedule, score, x, t, t_prev, z, snr):
    """One Langevin step at time t with eps = 2 alpha (snr ||z|| / ||s||)^2 (Song et al. 2021, Alg. 5).

    alpha = (m(t_prev) / m(t))^2 with t_prev > t the step's start: 1 for VE, 1 - beta_i for VP and sub-VP
    (the official code's `alphas`).
    The norms are batch means of per-sample norms, as in the official code.
    """
    s = score(x, _time_batch(t, x))
    alpha = schedule.transition(t, t_prev)[0] ** 2
    grad_norm, noise_norm = _mean_norm(s), _mean_norm(z)
    step = (noise_norm / grad_norm.clamp_min(1e-12)).square_().mul_(2 * alpha * snr**2)  # a 0-d tensor: no host sync
    mean = torch.addcmul(x, step, s)
    return torch.addcmul(mean, step.sqrt(), z, value=math.sqrt(2)), mean


#: predictors and correctors of `pc_sample`, by name (None: skip that half)
PREDICTORS = {"euler_maruyama": _euler_maruyama, "reverse_diffusion": _reverse_diffusion, "ancestral": _ancestral, None: None}
CORRECTORS = {"langevin": _langevin_corrector, None: None}


def _tweedie(schedule, score, x, t: float) -> torch.Tensor:
    """E[x_0 | x_t] = (x + sigma(t)^2 grad log p_t(x)) / m(t) for a linear SDE."""
    mean_scale, std = schedule.marginal(t)
    return (x + std**2 * score(x, _time_batch(t, x))) / mean_scale


def pc_sample(
    score: Callable,
    sde,
    x: torch.Tensor,
    n_steps: int,
    *,
    predictor: str | None = "reverse_diffusion",
    corrector: str | None = "langevin",
    snr: float = 0.16,
    n_corrector_steps: int = 1,
    eps: float = 1e-3,
    denoise: bool = True,
    mask: torch.Tensor | None = None,
    known: torch.Tensor | None = None,
    generator=None,
    callback: Callable[[dict], None] | None = None,
    t_start: float | None = None,
) -> torch.Tensor:
    r"""Predictor-corrector sampling of the reverse-time SDE (Song et al. 2021, Alg. 1-3).

    From x_T (the prior sample `x`, supplied by the caller) over `n_steps` equal steps down to t = eps. With
    `t_start` < T, `x` is a sample of p_{t_start} instead (e.g. data pushed forward by `sde.marginal_coeffs`) and the
    steps run from t_start: SDEdit (Meng et al. 2022) edits images this way, and `bench/mnist_cpu.py` uses it to find
    at which noise levels a trained model loses what the data had.
    Each step runs the predictor from t_k to t_{k+1} and then `n_corrector_steps` Langevin corrector
    steps at t_{k+1}, as in Algorithms 2-3 of the paper. (The official PyTorch code runs the corrector
    first, at t_k, then the predictor: the same chain except that it corrects at T, where x is already a
    prior sample, and never at eps. Correcting after predicting spends every correction on the
    distribution the predictor has just produced, ending with one at t = eps.)

    A score with a `precompute(times)` method (`GaussianMixture.marginal_score`) is told every time of the grid
    before the first step, so it works out what depends on t alone in one vectorised call.

    Predictors: "euler_maruyama", "reverse_diffusion", "ancestral" (VE and VP only), or None.
    Correctors: "langevin" (step from the signal-to-noise ratio `snr`), or None.
    With `denoise`, a final Tweedie step returns E[x_0 | x_eps] instead of x_eps.

    Inpainting (Song et al. 2021, App. I.2), with the mask convention of `annealed_langevin`: a bool `mask`
    (True = known) and clean `known` values. The known entries start as, and after every step are replaced by,
    a fresh forward sample m(t) known + sigma(t) z at the step's time; only the unknown ones follow the reverse
    SDE; the result holds `known` exactly. The same approximation as there (the unknown part is guided by a noisy
    known part, not the clean one).

    Args:
        score: `(x, t) -> s(x, t)`, `t` a `(batch,)` tensor of forward times.
        sde: a `scorelab.sde.SDE`. x: `(batch, *dims)`, e.g. `sde.prior_sample(shape)`.
        t_start: the time `x` is a sample of (default T); the grid runs from it to eps.
    Returns:
        samples of x's shape. `callback` gets `{"x", "x_mean", "i", "t"}` after every step.
    Introduced in lesson 05.
    """
    check_callable("score", score)
    check_tensor("x", x, min_dim=2)
    _check_callback(callback)
    score = checked_score(score)
    check_int("n_steps", n_steps, minimum=1)
    check_int("n_corrector_steps", n_corrector_steps, minimum=0)
    check_choice("predictor", predictor, PREDICTORS)
    check_choice("corrector", corrector, CORRECTORS)
    snr = check_nonnegative("snr", snr)
    if predictor is None and (corrector is None or n_corrector_steps == 0):
        raise ValueError("predictor and corrector cannot both be None: nothing would move")
    check_sde("sde", sde)
    eps = sde.check_eps(eps)
    generator = as_generator(generator, x.device)
    start = sde.T if t_start is None else check_positive("t_start", t_start, allow_tensor=False)
    if not eps < start <= sde.T * (1 + 1e-6):
        raise ValueError(f"t_start must lie in (eps, T] = ({eps:.3g}, {sde.T:.3g}], got {t_start!r}")
    times = torch.linspace(start, eps, n_steps + 1, dtype=torch.float64).tolist()
    schedule = _Schedule(sde, times)
    _precompute(score, times, x)
    predict, correct = PREDICTORS[predictor], CORRECTORS[corrector]
    mask, known = _inpainting(mask, known, x)
    x = x.detach().clone()

    def impose_known(x, t):  # the known entries: a forward sample of them at time t
        if mask is None:
            return x
        mean_scale, std = schedule.marginal(t)
        return torch.where(mask, mean_scale * known + std * _randn_like(x, generator), x)

    x = impose_known(x, times[0])
    x_mean = x
    guard = _FiniteGuard(n_steps, callback)
    with torch.no_grad():
        for i, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
            error = lambda steps, t_next=t_next: DivergenceError(  # noqa: E731
                f"pc_sample's particles became non-finite {steps} (by t={t_next:.4g}, predictor={predictor}, "
                f"corrector={corrector}, snr={snr}): lower snr or take more steps (n_steps={n_steps})"
            )
            with guard.step(x, i, error):
                if predict is not None:
                    x, x_mean = predict(sde, schedule, score, x, t, t_next, _randn_like(x, generator))
                if correct is not None:
                    for _ in range(n_corrector_steps):
                        x, x_mean = correct(sde, schedule, score, x, t_next, t, _randn_like(x, generator), snr)
            x = impose_known(x, t_next)
            guard.check(x, i, error)
            if callback is not None:
                callback({"x": x, "x_mean": x_mean, "i": i, "t": t_next})
        if denoise:
            x = _tweedie(schedule, score, x, eps)
            if not torch.isfinite(x).all():
                raise DivergenceError(
                    f"the final denoising step (Tweedie at eps={eps:.3g}) gave non-finite values: the score is not finite "
                    "near t = eps; raise eps or pass denoise=False"
                )
    return x if mask is None else torch.where(mask, known, x)


def _steps_of(T, h) -> int:
    """The number of steps N = T / h, which must be a whole number (to a relative 1e-6)."""
    T = check_positive("T", T, allow_tensor=False)
    h = check_positive("h", h, allow_tensor=False)
    if h > T:
        raise ValueError(f"h must be at most T, got h={h} > T={T}")
    n = round(T / h)
    if abs(T / h - n) > 1e-6 * n:
        raise ValueError(f"T / h must be a whole number of steps, got T={T}, h={h} (T / h = {T / h:.6g}): choose h = T / N")
    return n


def exponential_integrator(
    score: Callable,
    x: torch.Tensor,
    T: float,
    h: float,
    *,
    generator=None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    r"""The exponential-integrator discretisation of the reverse OU SDE, the scheme Chen et al. 2023 analyse.

    Chen, Chewi, Li, Li, Salim & Zhang (2023), "Sampling is as easy as learning the score: theory for diffusion
    models with minimal data assumptions" (ICLR 2023, arXiv:2209.11215): the discretisation is set up in their
    Sec. 2 (background on SGMs: the OU forward process, its reversal, the score frozen at the grid times) and
    bounded by their DDPM theorem; Zhang's lecture 19 (the course notes) transcribes both, with this step.

    The forward process is dX = -X dt + sqrt(2) dB (`sde.OUSDE`), so the reverse one is
    dY = [Y + 2 \nabla log q_{T-s}(Y)] ds + sqrt(2) dB. On each step [kh, (k+1)h] the score is frozen at
    s_{T-kh}(Y_{kh}) and the linear part is integrated exactly:

        Y <- e^h Y + 2 (e^h - 1) s + sqrt(e^{2h} - 1) z,   z ~ N(0, I),

    N = T / h steps from Y_0 = `x`, which should be a sample of the OU prior N(0, I). The score is called at
    forward times T, T - h, ..., h, never at 0.

    Args:
        score: `(x, t) -> s(x, t)` with `t` a `(batch,)` tensor of forward times, e.g.
            `GaussianMixture.marginal_score(OUSDE(T))`.
        x: `(batch, *dims)` start samples. T: the horizon, > 0. h: the step, 0 < h <= T with T / h whole.
    Returns:
        Y_T, of x's shape. `callback` gets `{"x", "i", "t"}` after every step, `t` = T - (i + 1) h.
    Introduced in lesson 06.
    """
    check_callable("score", score)
    check_tensor("x", x, min_dim=2)
    _check_callback(callback)
    n_steps = _steps_of(T, h)
    score = checked_score(score)
    generator = as_generator(generator, x.device)
    growth, drift_scale, noise_scale = math.exp(h), 2 * math.expm1(h), math.sqrt(math.expm1(2 * h))
    x = x.detach().clone()
    guard = _FiniteGuard(n_steps, callback)
    with torch.no_grad():
        for i in range(n_steps):
            t = T - i * h
            error = lambda steps, t=t: DivergenceError(  # noqa: E731
                f"exponential_integrator's particles became non-finite {steps} (by t={t:.4g}): "
                f"the score is not finite or too large there; take smaller steps (h={h})"
            )
            with guard.step(x, i, error):
                x = growth * x + drift_scale * score(x, _time_batch(t, x)) + noise_scale * _randn_like(x, generator)
            guard.check(x, i, error)
            if callback is not None:
                callback({"x": x, "i": i, "t": T - (i + 1) * h})
    return x


# --- probability-flow ODE -----------------------------------------------------------------------------------

#: methods accepted by `ode_sample` and `likelihood.log_prob`: torchdiffeq's adaptive ones, and fixed-step ones (need
#: n_steps), which scorelab steps itself (`fixed_step_times`)
ODE_METHODS = {
    "dopri5": "adaptive",
    "bosh3": "adaptive",
    "adaptive_heun": "adaptive",
    "euler": "fixed",
    "midpoint": "fixed",
    "rk4": "fixed",
}

#: the fixed-step methods as Butcher tableaus: each stage's offset c within the step, its weights a of the earlier
#: stages' slopes, and the step's weights b. "rk4" is Kutta's 3/8 rule, the fourth-order method torchdiffeq's "rk4" is
_TABLEAUS = {
    "euler": ((0.0,), ((),), (1.0,)),
    "midpoint": ((0.0, 0.5), ((), (0.5,)), (0.0, 1.0)),
    "rk4": ((0.0, 1 / 3, 2 / 3, 1.0), ((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)), (1 / 8, 3 / 8, 3 / 8, 1 / 8)),
}


def fixed_step_times(t_start: float, t_end: float, method: str, n_steps: int) -> list[list[float]]:
    """The times at which a fixed-step `method` evaluates the field over `n_steps` equal steps from t_start to
    t_end: one list of its stage times per step, known before the first step (so a field can work out what depends
    on t alone for all of them at once: `ode_sample`). Stage times stay within [t_start, t_end]."""
    lo, hi = min(t_start, t_end), max(t_start, t_end)
    grid = [t_start + i * (t_end - t_start) / n_steps for i in range(n_steps)] + [t_end]
    # between a step's ends: a last stage at its end (rk4's) is exactly the next step's first time
    return [[min(max((1 - c) * s + c * t, lo), hi) for c in _TABLEAUS[method][0]] for s, t in zip(grid, grid[1:])]


def _fixed_step_solve(func, y0: tuple, t_start: float, t_end: float, method: str, steps: list[list[float]], n_saved: int) -> list[tuple]:
    """The steps of `method` (`_TABLEAUS`) at the stage times `steps` (`fixed_step_times`) for the tuple state y0,
    calling func(t, y) with t a Python float. Returns the states at `n_saved` equally spaced times from t_start to
    t_end, linear between steps (as torchdiffeq's fixed-grid solvers), keeping only what it returns."""
    _, a, b = _TABLEAUS[method]
    h = (t_end - t_start) / len(steps)
    saved_at = [(t - t_start) / h for t in torch.linspace(t_start, t_end, n_saved, dtype=torch.float64).tolist()]
    y, saved = y0, [y0]
    for i, times in enumerate(steps):
        slopes = []
        for t, weights in zip(times, a):
            stage = y
            for weight, slope in zip(weights, slopes):
                stage = tuple(torch.add(u, k, alpha=weight * h) for u, k in zip(stage, slope))
            slope = func(t, stage)
            slopes.append(slope if isinstance(slope, tuple) else (slope,))
        y_next = y
        for weight, slope in zip(b, slopes):
            if weight:
                y_next = tuple(torch.add(u, k, alpha=weight * h) for u, k in zip(y_next, slope))
        while len(saved) < n_saved - 1 and saved_at[len(saved)] <= i + 1:  # an output time within this step
            fraction = saved_at[len(saved)] - i
            saved.append(tuple(torch.lerp(u, v, fraction) for u, v in zip(y, y_next)))
        y = y_next
    return saved + [y]


def integrate_ode(
    func,
    y0,
    t_start: float,
    t_end: float,
    *,
    method: str,
    rtol: float,
    atol: float,
    n_steps: int | None,
    interval,
    n_saved: int = 2,
    prepare: Callable[[list[float]], None] | None = None,
):
    """Integrate dy/dt = func(t, y) from t_start to t_end, never evaluating func outside `interval`.

    Adaptive methods run through torchdiffeq and pass t as a 0-d tensor; fixed-step ones are stepped here and pass
    t as a Python float, one of `fixed_step_times` (a field turns it into a batch of times without a host sync), and
    first call `prepare` (if given) with every one of those times, once each, so that the field can work out what
    depends on t alone for all of them at once.
    Returns the state at t_end, or with `n_saved > 2` the states at `n_saved` equally spaced times
    (first dim). Adaptive solvers may step past the end point and evaluate the field there; stepping to
    the end point exactly (`step_t`) prevents it, and clamping t into `interval` absorbs the last ulp.
    """
    check_choice("method", method, ODE_METHODS)
    check_positive("rtol", rtol, allow_tensor=False)
    check_positive("atol", atol, allow_tensor=False)
    check_int("n_saved", n_saved, minimum=2)
    lo, hi = interval
    fixed = ODE_METHODS[method] == "fixed"
    if fixed and n_steps is None:
        raise ValueError(f"method={method!r} is fixed-step: give n_steps")
    hint = f"tighten rtol/atol (now {rtol:g}/{atol:g})" if n_steps is None else f"take more steps (n_steps={n_steps})"
    is_tuple = isinstance(y0, tuple)
    if fixed:
        field = func if is_tuple else lambda t, y: func(t, y[0])  # stepped as a tuple of one tensor
        steps = fixed_step_times(t_start, t_end, method, check_int("n_steps", n_steps, minimum=1))
        if prepare is not None:
            prepare(list(dict.fromkeys(t for times in steps for t in times)))  # in order, each once
        states = _fixed_step_solve(field, y0 if is_tuple else (y0,), t_start, t_end, method, steps, n_saved)
        solution = tuple(torch.stack(parts) for parts in zip(*states))
    else:
        solution = _adaptive_solve(func, y0, t_start, t_end, method, rtol, atol, n_saved, (lo, hi), hint)
        solution = solution if is_tuple else (solution,)
    if not all(torch.isfinite(s).all() for s in solution):
        raise DivergenceError(f"the ODE solution ({method}) became non-finite: {hint}, raise eps, or check the score")
    if n_saved == 2:
        solution = tuple(s[-1] for s in solution)
    return solution if is_tuple else solution[0]


def _adaptive_solve(func, y0, t_start: float, t_end: float, method: str, rtol: float, atol: float, n_saved: int, interval, hint: str):
    """torchdiffeq's adaptive `method`, stepping to t_end exactly; the states at `n_saved` equally spaced times."""
    from torchdiffeq import odeint  # imported here: only the adaptive paths need it

    lo, hi = interval

    def guarded(t, y):
        if not torch.isfinite(t):  # an adaptive solver whose error estimate went NaN proposes a NaN time
            raise DivergenceError(f"the ODE solver ({method}) proposed t = {t.item()}: the field became non-finite; {hint}, or raise eps")
        return func(t.clamp(lo, hi), y)

    ref = y0[0] if isinstance(y0, tuple) else y0
    times = torch.linspace(t_start, t_end, n_saved, dtype=ref.dtype, device=ref.device)
    options = {"step_t": torch.tensor([t_end], dtype=torch.float64)}
    try:
        return odeint(guarded, y0, times, method=method, rtol=rtol, atol=atol, options=options)
    except AssertionError as err:  # torchdiffeq's "underflow in dt": the adaptive step shrank to nothing
        raise DivergenceError(
            f"the ODE solver ({method}) gave up: {err}. The field is not finite or too stiff near t = {lo:.3g}; "
            "raise eps, or use a fixed-step method with n_steps"
        ) from None


def _batch_time(t, x: torch.Tensor) -> torch.Tensor:
    """The time `integrate_ode` passes a field (a float from a fixed-step method, a 0-d tensor from an adaptive
    one) as a `(batch,)` tensor of x's dtype, expanded from one value."""
    return _time_batch(t, x) if isinstance(t, float) else t.to(x.dtype).expand(len(x))


def ode_sample(
    score: Callable,
    sde,
    x: torch.Tensor,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-3,
    n_steps: int | None = None,
    return_nfe: bool = False,
    n_saved: int = 2,
):
    r"""Sample by integrating the probability-flow ODE dx/dt = f(t) x - g(t)^2 s(x, t) / 2 from T down to eps.

    Deterministic given x_T, with the same marginals p_t as the SDE (Song et al. 2021, Sec. 4.3). Runs on
    x's device, no numpy round trips. The score is never called outside [eps, T].

    Args:
        method: an adaptive torchdiffeq solver ("dopri5", "bosh3", "adaptive_heun") with `rtol`, `atol`,
            or a fixed-step one ("euler", "midpoint", "rk4": torchdiffeq's methods, stepped by scorelab, which
            knows their times in advance) with `n_steps`. Fixed steps work out f(t), g(t)^2 for all their times
            at once, and tell a score with a `precompute(times)` method (`GaussianMixture.marginal_score`) all of
            them, as `pc_sample` does.
        n_saved: with n_saved > 2, return the whole path: `n_saved` states at equally spaced times from T
            to eps, shape `(n_saved, *x.shape)` (trajectory plots).
    Returns:
        x_eps (or the path), or `(x_eps, nfe)` with the number of score evaluations when `return_nfe`.
    Introduced in lesson 05.
    """
    check_callable("score", score)
    check_tensor("x", x, min_dim=2)
    score = checked_score(score)
    check_sde("sde", sde)
    eps = sde.check_eps(eps)
    nfe, known = 0, {}  # known: a fixed-step method's time -> (f(t), g(t)^2), worked out for all of them at once

    def prepare(times):
        grid = torch.tensor(times, dtype=torch.float64)
        known.update(zip(times, zip(sde.drift_coeff(grid).tolist(), sde.diffusion(grid).square().tolist())))
        _precompute(score, times, x)

    def flow(t, y):
        nonlocal nfe
        nfe += 1
        return probability_flow_drift(sde, score, y, _batch_time(t, y), coefficients=known.get(t))

    with torch.no_grad():
        out = integrate_ode(
            flow, x.detach(), sde.T, eps, method=method, rtol=rtol, atol=atol, n_steps=n_steps, interval=(eps, sde.T),
            n_saved=n_saved, prepare=prepare,
        )  # fmt: skip
    return (out, nfe) if return_nfe else out


# --- fixed-NFE ODE samplers on a Gaussian path (lesson 10) -----------------------------------------------------

#: the time grids of `flow_sample`: uniform in t; Karras et al. 2022's (Eq. 5, rho-spaced in sigma / alpha); uniform
#: in the half log-SNR lambda = log(alpha / sigma) (Lu et al. 2022, Sec. 3.3, "logSNR")
FLOW_SCHEDULES = ("uniform", "edm", "logsnr")


def flow_time_grid(
    path, n_steps: int, *, schedule: str = "uniform", eps: float = 1e-3, t_max: float | None = None, rho: float = 7.0
) -> list[float]:
    r"""The `n_steps + 1` times t_max = t_0 > t_1 > ... > t_N = eps that `flow_sample` steps through.

    "uniform": equal steps in t. "edm": the EDM noise levels (Karras et al. 2022, Eq. 5)
    s_i = (s_max^{1/rho} + i/N (s_min^{1/rho} - s_max^{1/rho}))^rho with s = sigma(t) / alpha(t) = e^{-lambda},
    mapped back to t (their t_i = sigma^{-1}(sigma_i)); as their N + 1 nodes without the final sigma = 0 (here the
    last node is eps). "logsnr": equal steps in lambda = log(alpha / sigma) (Lu et al. 2022, Sec. 3.3).
    The last two need a finite lambda at t_max: on a path with alpha(T) = 0 (`LinearPath`) pass t_max < T.
    Introduced in lesson 10.
    """
    check_gaussian_path("path", path)
    check_int("n_steps", n_steps, minimum=1)
    check_choice("schedule", schedule, FLOW_SCHEDULES)
    eps = path.check_eps(eps)
    t_max = path.T if t_max is None else path.check_time(check_positive("t_max", t_max, allow_tensor=False), "t_max").item()
    if t_max <= eps:
        raise ValueError(f"t_max must exceed eps = {eps}, got {t_max}")
    rho = check_positive("rho", rho, allow_tensor=False)
    i = torch.arange(n_steps + 1, dtype=torch.float64) / n_steps
    if schedule == "uniform":
        times = t_max + i * (eps - t_max)
    else:
        lam_max, lam_min = path.half_log_snr(torch.tensor([t_max, eps], dtype=torch.float64)).tolist()
        if not (math.isfinite(lam_max) and math.isfinite(lam_min)):
            raise ValueError(
                f"schedule={schedule!r} needs a finite log-SNR at t_max and eps, and {path!r} has none at t_max={t_max}: "
                "pass t_max < T, or schedule='uniform'"
            )
        if schedule == "edm":  # s = sigma / alpha = exp(-lambda)
            s_max, s_min = math.exp(-lam_max), math.exp(-lam_min)
            lam = -rho * torch.log(s_max ** (1 / rho) + i * (s_min ** (1 / rho) - s_max ** (1 / rho)))
        else:
            lam = lam_max + i * (lam_min - lam_max)
        times = path.time_of_half_log_snr(lam)
    times[0], times[-1] = t_max, eps  # the ends exactly, not to round-off
    return times.tolist()


class _PathCoefficients:
    """(alpha, sigma, alpha_dot, sigma_dot, lambda) of a path at a sampler's times, as floats, worked out once each."""

    def __init__(self, path):
        self.path, self.known = path, {}

    def __call__(self, t: float) -> tuple[float, ...]:
        if t not in self.known:
            time = torch.tensor([t], dtype=torch.float64)
            values = [c.item() for c in (*self.path.marginal_coeffs(time), *self.path.marginal_coeffs_dot(time))]
            self.known[t] = (*values, math.log(values[0]) - math.log(values[1]) if values[0] > 0 and values[1] > 0 else math.nan)
        return self.known[t]


def _euler_flow(predict, coeffs, x, t, t_next):
    """x <- x + (t_next - t) u(x, t)."""
    return x + (t_next - t) * predict(x, t, "velocity")


def _heun_flow(predict, coeffs, x, t, t_next):
    """Heun's method in the path's own time t on x, corrected at every step (the last one too, ending at eps > 0).
    It integrates the same ODE as Karras et al. 2022's Alg. 1 with the path's own sigma(t) and s(t) (Alg. 1 is Heun
    in t for any sigma(t), s(t)), but not with Alg. 1's step pattern: N + 1 nodes spaced i/N and no uncorrected
    Euler step to sigma = 0 (Alg. 1: N nodes spaced i/(N - 1), then sigma_N = 0; that pattern is `_edm_flow`'s)."""
    h = t_next - t
    slope = predict(x, t, "velocity")
    x_euler = x + h * slope
    return x + 0.5 * h * (slope + predict(x_euler, t_next, "velocity"))


def _edm_flow(predict, coeffs, x, t, t_next):
    """One step of EDM's deterministic sampler (Karras et al. 2022, Alg. 1 with their sigma(t) = t, s(t) = 1, Eq. 4):
    Heun in the noise level s~ = sigma / alpha on the rescaled x~ = x / alpha, dx~/ds~ = (x~ - D(x~; s~)) / s~ with
    the denoiser D = x0_hat, i.e. dx~/ds~ = eps_hat(x, t); x = alpha x~ on return. As in Alg. 1 (lines 7-8) the
    correction is skipped when the step ends at sigma = 0: that last step is Euler's, x~ <- D (one evaluation)."""
    alpha, sigma = coeffs(t)[:2]
    alpha_next, sigma_next = coeffs(t_next)[:2]
    h, x_tilde = sigma_next / alpha_next - sigma / alpha, x / alpha
    slope = predict(x, t, "eps")
    x_euler = x_tilde + h * slope
    if sigma_next == 0:
        return alpha_next * x_euler
    return alpha_next * (x_tilde + 0.5 * h * (slope + predict(alpha_next * x_euler, t_next, "eps")))


def _ddim_flow(predict, coeffs, x, t, t_next):
    """DDIM with eta = 0 (Song, Meng & Ermon 2021, Eq. 12): x <- alpha_next x0 + sigma_next eps, both predicted at
    (x, t); the exponential integrator of the probability-flow ODE with the prediction frozen over the step (Lu et
    al. 2022, Eq. 3.7, DPM-Solver-1)."""
    x0, eps = predict(x, t, "pair")
    alpha_next, sigma_next = coeffs(t_next)[:2]
    return alpha_next * x0 + sigma_next * eps


def _dpm_solver_2_flow(predict, coeffs, x, t, t_next):
    """DPM-Solver-2 (Lu et al. 2022, Alg. 1, r1 = 1/2): an intermediate time s at the midpoint in lambda,
    u = (alpha_s / alpha_t) x - sigma_s (e^{h/2} - 1) eps(x, t), x <- (alpha_next / alpha_t) x - sigma_next (e^h - 1) eps(u, s)."""
    alpha_t, _, _, _, lam_t = coeffs(t)
    alpha_next, sigma_next, _, _, lam_next = coeffs(t_next)
    h = lam_next - lam_t
    s = coeffs.path.time_of_half_log_snr(torch.tensor(lam_t + 0.5 * h, dtype=torch.float64)).item()
    alpha_s, sigma_s = coeffs(s)[:2]
    u = (alpha_s / alpha_t) * x - sigma_s * math.expm1(0.5 * h) * predict(x, t, "eps")
    return (alpha_next / alpha_t) * x - sigma_next * math.expm1(h) * predict(u, s, "eps")


#: the solvers of `flow_sample`: (step, field evaluations per step, default time grid); "edm" takes one evaluation
#: fewer in all (2N - 1: its last step, to sigma = 0, is uncorrected, as in Karras et al.'s Alg. 1)
FLOW_SOLVERS = {
    "euler": (_euler_flow, 1, "uniform"),
    "heun": (_heun_flow, 2, "edm"),
    "edm": (_edm_flow, 2, "edm"),
    "ddim": (_ddim_flow, 1, "uniform"),
    "dpm_solver_2": (_dpm_solver_2_flow, 2, "logsnr"),
}


def flow_sample(
    field: Callable,
    path,
    x: torch.Tensor,
    n_steps: int,
    *,
    solver: str = "heun",
    prediction: str = "score",
    schedule: str | None = None,
    eps: float = 1e-3,
    t_max: float | None = None,
    rho: float = 7.0,
    return_nfe: bool = False,
    callback: Callable[[dict], None] | None = None,
):
    r"""Integrate the probability-flow ODE dx/dt = u_t(x) of a Gaussian path from t_max (default T) down to eps
    with a fixed number of field evaluations.

    u_t is the marginal velocity E[alpha_dot x_0 + sigma_dot eps | x_t = x] (Lipman et al. 2023), which for an SDE
    path is its probability-flow drift f x - g^2 s / 2 (Song et al. 2021, Eq. 13): one ODE, whatever the field was
    trained to predict (`prediction`, turned into what each solver needs by `paths.convert`). Solvers (`FLOW_SOLVERS`):

        "euler"         x <- x + h u(x, t)                                            1 evaluation per step, order 1
        "heun"          Heun / trapezoidal predictor-corrector in t on x                2 per step, order 2
        "edm"           Karras et al. 2022's Alg. 1: Heun in s~ = sigma / alpha on x~     2 per step but the last, order 2
        "ddim"          x <- alpha' x0_hat + sigma' eps_hat (Song, Meng & Ermon 2021)  1 per step, order 1
        "dpm_solver_2"  exponential integrator with a midpoint in lambda (Lu et al. 2022, Alg. 1)  2 per step, order 2

    DDIM and DPM-Solver-2 integrate the linear part of the ODE exactly in lambda = log(alpha / sigma): for data at
    a single point DDIM is exact (x0_hat is constant). "edm" is Karras et al. 2022's Alg. 1 as published, with their
    sigma(t) = t, s(t) = 1 (Eq. 4: Heun in s~ = sigma / alpha on x / alpha, dx~/ds~ = (x~ - D) / s~ with
    D = x0_hat; on VE, alpha = 1, Heun in sigma) and their step pattern: N nodes t_0 = t_max, ..., t_{N-1} = eps
    spaced i/(N - 1) on the `schedule` (Eq. 5 for "edm"), then t_N = 0 (sigma = 0), reached by an uncorrected
    Euler step, x~ <- D: 2N - 1 evaluations, and x is returned at t = 0, not at eps. EDM's published range
    s~ = 80 -> 0.002 is t_max and eps with sigma / alpha = 80 and 0.002 (`path.time_of_half_log_snr(-log 80)`),
    and its prior x~ ~ N(0, 80^2 I) is x = sigma(t_max) z. "heun" is Heun in the path's own time t (the ODE of
    Alg. 1 with the path's own sigma(t), s(t)), but on N + 1 nodes t_max -> eps spaced i/N, every step corrected:
    not Alg. 1's step pattern. The time grid is `flow_time_grid`'s `schedule` (default: the solver's, uniform for
    Euler and DDIM, "edm" with `rho` for Heun and EDM, "logsnr" for DPM-Solver-2).

    Args:
        field: `(x, t) -> prediction` with t a `(batch,)` tensor of times: a network, or `paths.mixture_field`, or
            a mixture's `marginal_score(sde)`. path: a `sde.GaussianPath` (`LinearPath`, `VPSDE`, ...).
        x: `(batch, *dims)` samples of the prior at t_max, e.g. `path.prior_sample(shape)`.
        n_steps: N >= 1; the number of field evaluations (NFE) is N for euler and ddim, 2N for heun and
            dpm_solver_2, 2N - 1 for edm.
        prediction: what `field` returns, "score", "velocity", "x0" or "eps".
        return_nfe: also return the number of field evaluations.
    Returns:
        x at eps (at t = 0 for edm), of x's shape (and the NFE). `callback` gets `{"x", "i", "t"}` after every
        step.
    Introduced in lesson 10.
    """
    check_callable("field", field)
    check_tensor("x", x, min_dim=2)
    _check_callback(callback)
    check_choice("solver", solver, FLOW_SOLVERS)
    check_choice("prediction", prediction, PREDICTIONS)
    check_int("n_steps", n_steps, minimum=1)
    step, _, default_schedule = FLOW_SOLVERS[solver]
    grid = dict(schedule=schedule or default_schedule, eps=eps, t_max=t_max, rho=rho)
    if solver == "edm":  # Alg. 1: N nodes spaced i/(N - 1), then sigma = 0 at t = 0
        times = flow_time_grid(path, max(n_steps - 1, 1), **grid)[:n_steps] + [0.0]
    else:
        times = flow_time_grid(path, n_steps, **grid)
    coeffs, nfe = _PathCoefficients(path), 0
    field = checked_score(field, "field")

    def predict(y, t, target):
        nonlocal nfe
        nfe += 1
        c = coeffs(t)[:4]
        pair = to_x0_eps(field(y, _time_batch(t, y)), y, c, prediction)
        return pair if target == "pair" else from_x0_eps(*pair, c, target)

    x = x.detach().clone()
    guard = _FiniteGuard(n_steps, callback)
    with torch.no_grad():
        for i, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
            error = lambda steps, t_next=t_next: DivergenceError(  # noqa: E731
                f"flow_sample's particles became non-finite {steps} (by t={t_next:.4g}, solver={solver}): the field is not "
                f"finite there; raise eps, lower t_max, or take more steps (n_steps={n_steps})"
            )
            with guard.step(x, i, error):
                x = step(predict, coeffs, x, t, t_next)
            guard.check(x, i, error)
            if callback is not None:
                callback({"x": x, "i": i, "t": t_next})
    return (x, nfe) if return_nfe else x
