r"""Controllable generation by Bayes' rule for scores: guidance, inverse problems, colorization.

For a label or measurement y, p_t(x | y) \propto p_t(x) p_t(y | x), so

    \nabla_x log p_t(x | y) = \nabla_x log p_t(x) + \nabla_x log p_t(y | x):

the unconditional score plus the input gradient of a classifier (or likelihood) of *noisy* data. The guidance here
builds such a score as a plain function `(x, t) -> s` that the samplers of `scorelab.sampling` take unchanged
(`t` a `(batch,)` tensor of SDE times, or noise levels sigma for annealed Langevin). For y = A x + n, whose noisy
likelihood p_t(y | x_t) has no closed form, two approximate samplers: `linear_inverse_sample` (Song et al. 2021,
App. I.4) and `dps_sample` (Chung et al. 2023). Inpainting lives in the
samplers themselves (`pc_sample` / `annealed_langevin` with `mask`, `known`: True = known); colorization is
inpainting in an orthogonal colour basis. On labelled Gaussian mixtures every one of these has an exact answer
(`GaussianMixture.marginal_class_log_prob`, `class_mixture`, `posterior`, `tilted_log_prob`). Lesson 07.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ._checks import (
    append_dims,
    as_generator,
    check_bounds,
    check_callable,
    check_choice,
    check_int,
    check_label_type,
    check_labels,
    check_nonnegative,
    check_output,
    check_per_sample,
    check_positive,
    check_probability,
    check_sde,
    check_tensor,
)
from .distributions import check_measurement
from .losses import REDUCTIONS, _reduce, diffuse, sde_dsm
from .sampling import PREDICTORS, DivergenceError, _FiniteGuard, _randn_like, _Schedule, _time_batch, pc_sample

#: the label that means "no label" to a `ScoreMLP(..., n_classes=C)`: classifier-free guidance's null token
NULL_LABEL = -1

#: an orthonormal colour basis (rows): luminance (R + G + B) / sqrt(3) first, then two chroma directions
COLOR_BASIS = torch.tensor(
    [
        [1 / math.sqrt(3), 1 / math.sqrt(3), 1 / math.sqrt(3)],
        [1 / math.sqrt(2), -1 / math.sqrt(2), 0.0],
        [1 / math.sqrt(6), 1 / math.sqrt(6), -2 / math.sqrt(6)],
    ],
    dtype=torch.float64,
)


def _checked_logits(logits, n: int) -> torch.Tensor:
    """A classifier's answer must be `(n, C)` logits (or log-probabilities)."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or len(logits) != n:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"classifier must return (n, C) = ({n}, C) logits, got {got}")
    return logits


def classifier_gradient(classifier: Callable, y) -> Callable:
    r"""\nabla_x log p_t(y | x) by autograd, as `grad(x, t)`, from `classifier(x, t) -> (n, C)` logits or log-probabilities.

    `y` is an int class or a `(n,)` tensor of classes. Works inside the samplers' `torch.no_grad()`; the
    gradient is returned detached. The exact classifier of a labelled mixture is
    `GaussianMixture.marginal_class_log_prob(sde)`; a learned one is a `nets.ClassifierMLP` (lesson 07).
    """
    check_callable("classifier", classifier)
    check_label_type("y", y)

    def grad(x: torch.Tensor, t) -> torch.Tensor:
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            logits = _checked_logits(classifier(x_in, t), len(x))
            labels = check_labels("y", y, len(x), logits.shape[1]).to(x.device)
            log_p = torch.log_softmax(logits, dim=1).gather(1, labels[:, None]).sum()
            (g,) = torch.autograd.grad(log_p, x_in)
        return g.detach()

    return grad


def classifier_guided_score(score: Callable, log_likelihood_grad: Callable, scale: float, *, interval=None) -> Callable:
    r"""s(x, t) + gamma \nabla_x log p_t(y | x): classifier guidance with scale gamma (Dhariwal & Nichol 2021).

    With gamma = 1 and the exact noisy classifier this is the exact conditional score \nabla log p_t(x | y); with
    gamma != 1 it is *not* the score of the diffused tilted law p(x) p(y | x)^gamma / Z (lesson 07 measures the gap).
    With `interval=(t_lo, t_hi)` the scale is gamma only for t_lo <= t <= t_hi and 1 elsewhere (the conditional
    score there), as in guidance applied in a limited interval (Kynkaanniemi et al. 2024): lesson 07 moves the
    interval along t to find the times at which guidance moves mass between modes.

    Args:
        score: `(x, t) -> s(x, t)`. log_likelihood_grad: `(x, t) -> \nabla_x log p_t(y | x)`, e.g. from
            `classifier_gradient`. scale: gamma >= 0. interval: None (all t) or a pair t_lo < t_hi.
    Returns:
        `(x, t) -> s`, with `t` a `(batch,)` tensor when `interval` is given.
    Introduced in lesson 07.
    """
    check_callable("score", score)
    check_callable("log_likelihood_grad", log_likelihood_grad)
    scale = check_nonnegative("scale", scale, " (the guidance strength gamma)")
    if interval is not None:
        t_lo, t_hi = check_bounds(interval, "interval")

    def guided(x: torch.Tensor, t) -> torch.Tensor:
        grad = check_output("log_likelihood_grad", log_likelihood_grad(x, t), x.shape)
        if interval is None:
            return score(x, t) + scale * grad
        inside = check_per_sample("t", t, len(x), x)
        gamma = torch.where((inside >= t_lo) & (inside <= t_hi), scale, 1.0)
        return score(x, t) + append_dims(gamma, x.ndim) * grad

    return guided


def cfg_score(cond_score: Callable, uncond_score: Callable, scale: float) -> Callable:
    r"""gamma s(x, t | y) + (1 - gamma) s(x, t): classifier-free guidance (Ho & Salimans 2022).

    Equal to s(x, t) + gamma [s(x, t | y) - s(x, t)], classifier guidance with the classifier implied by the two
    scores; gamma = 1 is the conditional score. Both callables `(x, t) -> s`, e.g. `with_label(model, y)` and
    `with_label(model, NULL_LABEL)` of one network trained by `cfg_dsm`. Ho & Salimans write
    eps~ = (1 + w) eps(z, c) - w eps(z) for noise predictions eps = -sigma(t) s: the same combination with
    gamma = 1 + w (their w = 0 is gamma = 1, the conditional score; lesson 07 checks that this code matches it).
    """
    check_callable("cond_score", cond_score)
    check_callable("uncond_score", uncond_score)
    scale = check_nonnegative("scale", scale, " (the guidance strength gamma)")

    def guided(x: torch.Tensor, t) -> torch.Tensor:
        return scale * cond_score(x, t) + (1 - scale) * check_output("uncond_score", uncond_score(x, t), x.shape)

    return guided


def autoguided_score(score: Callable, guide_score: Callable, weight: float) -> Callable:
    r"""s_guide(x, t) + w [s(x, t) - s_guide(x, t)]: autoguidance (Karras et al. 2024, "Guiding a diffusion model
    with a bad version of itself"), their Eq. 1 in scores.

    `guide_score` is a worse version of the same model (smaller, or trained for fewer steps, as `scorelab train`'s
    `guide_step` keeps): where the two disagree, the good model's error is the smaller, so the combination with
    w > 1 extrapolates away from the errors both make, and draws fewer of the unlikely, in-between samples an
    underfit model makes, with no classes or labels. w = 1 is `score` itself, w = 0 the guide. The algebra is
    `cfg_score`'s, with the guide in the place of the unconditional score."""
    check_callable("score", score)
    check_callable("guide_score", guide_score)
    weight = check_nonnegative("weight", weight, " (the autoguidance weight w; 1 is no guidance)")
    return cfg_score(score, guide_score, weight)


def with_label(score: Callable, y) -> Callable:
    """`(x, t) -> score(x, t, y)`: a label-conditional score with its label bound (`NULL_LABEL` for "no label")."""
    check_callable("score", score)
    check_label_type("y", y)
    return lambda x, t: score(x, t, y)


def classifier_loss(
    classifier: Callable, x: torch.Tensor, labels, sde, eps: float = 1e-3, generator=None, *, reduction: str = "mean"
) -> torch.Tensor:
    r"""Cross-entropy of a noisy classifier on noised data: t ~ U(eps, T), x_t = m(t) x + sigma(t) z,
    -log softmax(classifier(x_t, t))[y]. Its minimiser is the Bayes classifier p_t(y | x_t) at every t, which is
    what guidance needs (Song et al. 2021, Sec. 5; lesson 07)."""
    check_callable("classifier", classifier)
    check_tensor("x", x, min_dim=2)
    check_choice("reduction", reduction, REDUCTIONS)
    check_sde("sde", sde)
    eps = sde.check_eps(eps)
    x_t, t, _, _ = diffuse(x, sde, eps, as_generator(generator, x.device))
    logits = _checked_logits(classifier(x_t, t), len(x))
    labels = check_labels("labels", labels, len(x), logits.shape[1]).to(x.device)
    return _reduce(F.cross_entropy(logits, labels, reduction="none"), reduction)


def drop_labels(labels: torch.Tensor, p_uncond: float, generator=None) -> torch.Tensor:
    """`labels` with each replaced by `NULL_LABEL` independently with probability `p_uncond` (label dropout)."""
    check_probability("p_uncond", p_uncond)
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.is_floating_point():
        raise TypeError(f"labels must be a 1-D integer tensor, got {getattr(labels, 'dtype', type(labels).__name__)}")
    drop = torch.rand(labels.shape, generator=as_generator(generator, labels.device), device=labels.device) < p_uncond
    return labels.masked_fill(drop, NULL_LABEL)


def cfg_dsm(
    score: Callable,
    x: torch.Tensor,
    labels: torch.Tensor,
    sde,
    p_uncond: float = 0.2,
    weighting: str = "sigma2",
    eps: float = 1e-5,
    generator=None,
    *,
    reduction: str = "mean",
) -> torch.Tensor:
    """`losses.sde_dsm` of a label-conditional `score(x, t, y)` with label dropout: each label is replaced by
    `NULL_LABEL` with probability `p_uncond`, so one network learns s(x, t | y) and s(x, t) (Ho & Salimans 2022)."""
    check_callable("score", score)
    generator = as_generator(generator, x.device if isinstance(x, torch.Tensor) else None)
    dropped = drop_labels(labels, p_uncond, generator)
    return sde_dsm(lambda v, t: score(v, t, dropped), x, sde, weighting, eps, generator, reduction=reduction)


#: how `linear_inverse_sample` draws y^_t along the path (see its docstring)
Y_PATHS = ("redraw", "forward", "fixed", "none")


def _inverse_problem(score, sde, x, n_steps, A, y, noise_std, eps, callback):
    """The checks and the time grid both inverse-problem samplers share: (noise_std, A, y, (U, S, Vh), times, schedule)."""
    check_callable("score", score)
    check_tensor("x", x, min_dim=2)
    check_int("n_steps", n_steps, minimum=1)
    noise_std = check_positive("noise_std", noise_std, allow_tensor=False)
    if callback is not None:
        check_callable("callback", callback)
    if x.ndim != 2:
        raise ValueError(f"x must be (n, D) points, got shape {tuple(x.shape)}")
    A, y = check_measurement(A, y, x.shape[1], x.dtype, x.device)
    U, S, Vh = torch.linalg.svd(A, full_matrices=False)  # A = U diag(S) Vh
    if len(A) > A.shape[1] or S.min() <= 1e-8 * S.max():
        raise ValueError(f"A must have full row rank (m <= D, its rows linearly independent), got shape {tuple(A.shape)}")
    check_sde("sde", sde)
    eps = sde.check_eps(eps)
    times = torch.linspace(sde.T, eps, n_steps + 1, dtype=torch.float64).tolist()
    return noise_std, A, y, (U, S, Vh), times, _Schedule(sde, times)


def linear_inverse_sample(
    score: Callable,
    sde,
    x: torch.Tensor,
    n_steps: int,
    A,
    y,
    noise_std: float,
    *,
    y_path: str = "redraw",
    eps: float = 1e-3,
    generator=None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    r"""Approximate posterior sampling for y = A x_0 + n, n ~ N(0, noise_std^2 I), by the reverse SDE (Song et al. 2021, App. I.4).

    Song et al. carry y along with the forward process, y_t, and approximate \nabla log p_t(x_t | y) by
    s(x_t, t) + \nabla log p_t(y^_t | x_t) with y^_t a sample of p(y_t | y) (their two assumptions: p(y_t | y)
    tractable, p_t(x_t | y_t, y) ~ p_t(x_t | y_t)). For a linear measurement, the forward SDE applied to y with the
    same noise gives y_t = A x_t + m(t) n, so p(y_t | x_t) = N(A x_t, m(t)^2 noise_std^2 I) and
    y^_t = m(t) y + sigma(t) A z. `y_path` says how y^_t's noise z is drawn along the path:
    "redraw" (the default): a fresh z for every particle at every step; "forward": a sample path of y_t's own forward
    process (consecutive z correlated as the forward SDE makes them, corr(z_s, z_t) = a sigma(s) / sigma(t) for
    x_t = a x_s + b w); "fixed": one z per particle for the whole path; "none": z = 0, y^_t = m(t) y. Lesson 07
    measures all four against `GaussianMixture.posterior`: redrawn at every step, the noise of y^_t averages out
    over the steps, and the samples come out as narrow along A as with "none" (at 20 steps, too few to average
    over, "redraw" is wider); "forward" removes that narrowing, "fixed" overshoots it; the mode weights and the
    mean along A's null space are wrong under every choice, and worse with "forward" than with "redraw".

    Discretisation (where this differs from the paper, whose score goes into a predictor as a whole): each step is
    the reverse-diffusion predictor with `score`, then the likelihood term's own flow
    dx/dtau = A^T (y^_t - A x) / (m^2 noise_std^2) over the step's score coefficient b^2, solved exactly. The explicit
    (Euler) step of that term is unstable: its stiffness b^2 / (m(t)^2 noise_std^2) reaches ~10^4 near t = T for the
    VP SDE, and chains diverge within 100 steps. The exact flow is unconditionally stable; where the term is stiff it
    projects A x onto y^_t (hard data consistency, Song et al. 2022), and for a selection matrix A with
    noise_std -> 0 it is `pc_sample`'s inpainting. What the split changes against the paper's unsplit step cannot
    be measured where the unsplit step diverges (as it does in lesson 07's problem); lesson 07 shows only that the
    split scheme's variance ratio is the same at 200 and 1000 steps.

    Args:
        score: `(x, t) -> s(x, t)` on `(n, D)` points. sde: a linear `SDE`. x: `(n, D)` start, e.g. `sde.prior_sample`.
        A: `(m, D)`, rank m. y: `(m,)`. noise_std: > 0. y_path: one of `Y_PATHS`. eps: the last time.
    Returns:
        `(n, D)` samples. `callback` gets `{"x", "i", "t"}` after every step.
    Introduced in lesson 07.
    """
    check_choice("y_path", y_path, Y_PATHS)
    noise_std, A, y, (U, S, Vh), times, schedule = _inverse_problem(score, sde, x, n_steps, A, y, noise_std, eps, callback)
    generator = as_generator(generator, x.device)
    x = x.detach().clone()
    z = None if y_path in ("redraw", "none") else _randn_like(x, generator)  # y^_T's noise, kept or carried along
    guard = _FiniteGuard(n_steps, callback)
    with torch.no_grad():
        for i, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
            error = lambda steps, t_next=t_next: DivergenceError(  # noqa: E731
                f"linear_inverse_sample's particles became non-finite {steps} (by t={t_next:.4g}): the prior score "
                f"is not finite there; take more steps (n_steps={n_steps})"
            )
            with guard.step(x, i, error):
                x, _ = PREDICTORS["reverse_diffusion"](sde, schedule, score, x, t, t_next, _randn_like(x, generator))
            mean_scale, std = schedule.marginal(t_next)
            a, b = schedule.transition(t_next, t)
            if y_path == "redraw":
                z = _randn_like(x, generator)
            elif y_path == "forward":  # the forward path read backwards: z_next given z (an AR(1) step, variance kept)
                rho = a * std / schedule.marginal(t)[1]
                z = rho * z + math.sqrt(max(1 - rho * rho, 0.0)) * _randn_like(x, generator)
            y_hat = mean_scale * y if y_path == "none" else mean_scale * y + std * (z @ A.T)  # a draw of p(y_t | y)
            gain = -torch.expm1(-(b * b) * S**2 / (mean_scale * noise_std) ** 2) / S  # exact flow, in A's row space
            x = x + ((y_hat - x @ A.T) @ U * gain) @ Vh
            guard.check(x, i, error)
            if callback is not None:
                callback({"x": x, "i": i, "t": t_next})
    return x


def dps_sample(
    score: Callable,
    sde,
    x: torch.Tensor,
    n_steps: int,
    A,
    y,
    noise_std: float,
    *,
    zeta: float | None = None,
    eps: float = 1e-3,
    generator=None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    r"""Diffusion posterior sampling (DPS, Chung et al. 2023, Alg. 1) for y = A x_0 + n, n ~ N(0, noise_std^2 I).

    DPS approximates p_t(y | x_t) = E[p(y | x_0) | x_t] by p(y | x^_0) at the posterior mean
    x^_0 = E[x_0 | x_t] = (x_t + sigma(t)^2 s(x_t, t)) / m(t) (Tweedie), so
    \nabla log p_t(x_t | y) ~ s(x_t, t) - \nabla_{x_t} ||y - A x^_0(x_t)||^2 / (2 noise_std^2), the gradient taken
    through the score by autograd. Each step: the reverse-diffusion predictor with `score` from x_i, then
    x <- x - zeta_i \nabla_{x_i} ||y - A x^_0(x_i)||^2. With `zeta=None`, zeta_i = b_i^2 / (2 noise_std^2) (b_i^2 the
    step's score coefficient): the step that the approximation itself gives, i.e. the guided score above in the
    same predictor. With a number zeta', zeta_i = zeta' / ||y - A x^_0(x_i)|| per particle: the step of the paper's
    experiments, whose zeta' is tuned per task and does not involve noise_std (lesson 07 measures both). DPS's
    public code steps by c \nabla ||r|| = c \nabla ||r||^2 / (2 ||r||) with the norm over the whole batch: for a
    batch of one, its scale c is this zeta' = c / 2.
    Differences from the paper's Algorithm 1: the reverse-diffusion predictor instead of the DDPM ancestral step (two
    discretisations of one reverse SDE), for any linear SDE; as there, the result is x^_0 at the last time `eps`.
    The step is explicit: it needs b_i^2 ||A J||^2 / noise_std^2 < 2 (J = dx^_0 / dx_t), so a small noise_std needs
    more steps; non-finite particles raise `DivergenceError`.

    Args:
        score: `(x, t) -> s(x, t)` on `(n, D)` points, differentiable in x. sde: a linear `SDE`. x: `(n, D)` start,
            e.g. `sde.prior_sample`. A: `(m, D)`, rank m. y: `(m,)`. noise_std: > 0. zeta: None or zeta' > 0.
            eps: the last time.
    Returns:
        `(n, D)` samples. `callback` gets `{"x", "i", "t"}` after every step.
    Introduced in lesson 07.
    """
    if zeta is not None:
        zeta = check_positive("zeta", zeta, allow_tensor=False)
    noise_std, A, y, _, times, schedule = _inverse_problem(score, sde, x, n_steps, A, y, noise_std, eps, callback)
    generator = as_generator(generator, x.device)
    x = x.detach().clone()
    guard = _FiniteGuard(n_steps, callback)

    def residual_and_grad(x, t):  # y - A x^_0(x), the score at x, and the gradient of ||y - A x^_0||^2 in x
        mean_scale, std = schedule.marginal(t)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            s = score(x_in, _time_batch(t, x))
            residual = y - ((x_in + std**2 * s) / mean_scale) @ A.T
            (grad,) = torch.autograd.grad(residual.square().sum(), x_in)
        return residual.detach(), s.detach(), grad

    with torch.no_grad():
        for i, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
            error = lambda steps, t_next=t_next: DivergenceError(  # noqa: E731
                f"dps_sample's particles became non-finite {steps} (by t={t_next:.4g}): the likelihood step is explicit; "
                f"take more steps (n_steps={n_steps}) or a smaller zeta"
            )
            with guard.step(x, i, error):
                residual, s, grad = residual_and_grad(x, t)
                x, _ = PREDICTORS["reverse_diffusion"](sde, schedule, lambda v, u, s=s: s, x, t, t_next, _randn_like(x, generator))
                b2 = schedule.transition(t_next, t)[1] ** 2
                if zeta is None:
                    x = x - b2 / (2 * noise_std**2) * grad
                else:
                    x = x - zeta / residual.norm(dim=1, keepdim=True).clamp_min(1e-12) * grad
            guard.check(x, i, error)
            if callback is not None:
                callback({"x": x, "i": i, "t": t_next})
        mean_scale, std = schedule.marginal(times[-1])
        x = (x + std**2 * score(x, _time_batch(times[-1], x))) / mean_scale  # x^_0 at eps
        guard.check(x, n_steps - 1, lambda steps: DivergenceError(f"dps_sample's final x^_0 is not finite {steps}"))
    return x


def to_basis(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Apply the orthonormal `basis` `(C, C)` (rows) along dim 1 of `x` `(n, C, ...)`: the channels of an image,
    the coordinates of a point. Its inverse is `to_basis(u, basis.T)`."""
    check_tensor("x", x, min_dim=2)
    basis = _check_basis(basis, x.shape[1])
    return torch.einsum("cd,nd...->nc...", basis.to(x.dtype), x)


def _check_basis(basis, channels: int) -> torch.Tensor:
    if not isinstance(basis, torch.Tensor) or basis.shape != (channels, channels):
        got = tuple(basis.shape) if isinstance(basis, torch.Tensor) else type(basis).__name__
        raise ValueError(f"basis must be an orthonormal ({channels}, {channels}) tensor for x's dim 1, got {got}")
    eye = torch.eye(channels, dtype=basis.dtype)
    if not torch.allclose(basis @ basis.T, eye, atol=1e-6):
        raise ValueError("basis must be orthonormal (basis @ basis.T = I)")
    return basis


def in_basis(score: Callable, basis: torch.Tensor) -> Callable:
    """The score of u = basis x, as `(u, t) -> basis s(basis^T u, t)` (an orthogonal change of variables)."""
    check_callable("score", score)
    return lambda u, t: to_basis(score(to_basis(u, basis.T), t), basis)


def colorize(score: Callable, sde, gray: torch.Tensor, n_steps: int, *, generator=None, **pc_kwargs) -> torch.Tensor:
    r"""Colour images (or 3-channel points) from their grey level by inpainting in `COLOR_BASIS` (Song et al. 2021, App. I.3).

    The grey level g = (R + G + B) / 3 fixes the first coordinate of u = Q x, sqrt(3) g; the two chroma coordinates
    are unknown. `pc_sample` inpaints them with the score of u (`in_basis`), and the result is mapped back.

    Args:
        score: `(x, t) -> s(x, t)` for x `(n, 3, ...)`. gray: `(n, 1, ...)` grey levels (channel mean).
        n_steps, generator and further keyword arguments (predictor, corrector, snr, eps): as `pc_sample`.
    Returns:
        `(n, 3, ...)` colour samples whose channel mean equals `gray`.
    """
    check_tensor("gray", gray, min_dim=2)
    if gray.shape[1] != 1:
        raise ValueError(f"gray must have one channel (n, 1, ...), got shape {tuple(gray.shape)}")
    check_int("n_steps", n_steps, minimum=1)
    shape = (gray.shape[0], 3, *gray.shape[2:])
    generator = as_generator(generator, gray.device)
    known = torch.cat([math.sqrt(3) * gray, gray.new_zeros(shape[0], 2, *shape[2:])], dim=1)
    mask = torch.zeros((1, 3) + (1,) * (gray.ndim - 2), dtype=torch.bool, device=gray.device)
    mask[:, 0] = True
    u_T = sde.prior_sample(shape, generator=generator, dtype=gray.dtype, device=gray.device)
    u = pc_sample(in_basis(score, COLOR_BASIS), sde, u_T, n_steps, mask=mask, known=known, generator=generator, **pc_kwargs)
    return to_basis(u, COLOR_BASIS.T)
