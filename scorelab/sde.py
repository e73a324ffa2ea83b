r"""Forward SDEs dX = f(t) X dt + g(t) dB, their Gaussian transition kernels, and the reverse-time drifts.

Every SDE here is linear in x, so p_{0t}(x_t | x_0) = N(m(t) x_0, sigma(t)^2 I) with `marginal_coeffs(t) = (m(t), sigma(t))`,
and a Gaussian mixture stays a Gaussian mixture (`GaussianMixture.marginal`): the exact score of every
marginal p_t is available, for every SDE (Song et al. 2021, *Score-based generative modeling through
SDEs*, Sec. 3 and App. B). Samplers, losses and likelihoods are written once against this interface.

    VESDE(sigma_min, sigma_max)          f = 0,           g = sigma(t) sqrt(2 log(sigma_max / sigma_min))
    VPSDE(beta_min, beta_max)            f = -beta(t)/2,  g = sqrt(beta(t)),          beta linear on [0, 1]
    SubVPSDE(beta_min, beta_max)         f = -beta(t)/2,  g = sqrt(beta(t) (1 - exp(-2 int_0^t beta)))
    OUSDE(T)                             f = -1,          g = sqrt(2)                 (Chen et al. 2023)

Each SDE is a `GaussianPath` x_t = alpha(t) x_0 + sigma(t) eps (alpha = m): the one notion of a noising path, with
alpha_dot, sigma_dot worked out from f and g. `LinearPath` (alpha = 1 - t, sigma = t, flow matching) and `CosinePath`
(alpha = cos(pi t / 2), sigma = sin(pi t / 2)) are paths without an SDE class; the samplers and the losses of lesson 10
take any path.

`t` is a float or a `(batch,)` tensor; coefficients come back as tensors of t's shape (float64 for
floats). Introduced in lesson 05 (paths: lesson 10).
"""

from __future__ import annotations

import math

import torch

from ._checks import (
    append_dims,
    as_generator,
    check_batch_size,
    check_float_dtype,
    check_int,
    check_memory,
    check_positive,
    check_sde,
    check_shape,
    check_tensor,
    holds_everywhere,
)


def _as_time(t, like: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        if not t.is_floating_point():
            raise TypeError(f"t must be a float or a floating tensor, got dtype {t.dtype}")
        return t
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"t must be a float or a (batch,) tensor, got {type(t).__name__}")
    if like is not None:
        return torch.full((len(like),), float(t), dtype=like.dtype, device=like.device)
    return torch.tensor(float(t), dtype=torch.float64)


class GaussianPath:
    r"""A Gaussian conditional probability path x_t = alpha(t) x_0 + sigma(t) eps, eps ~ N(0, I), on [0, T].

    What every path-level computation reads: `marginal_coeffs(t) = (alpha(t), sigma(t))` and their time derivatives
    `marginal_coeffs_dot(t) = (alpha_dot(t), sigma_dot(t))` (Lipman et al. 2023, Sec. 4; Kingma et al. 2021, Sec. 2).
    The SDEs below are paths too (`SDE` subclasses this): for a linear SDE, alpha and sigma are its transition
    kernel's mean scale and std, and it adds the drift and diffusion that generate them. `LinearPath` is a path with
    no SDE class of its own. The exact velocity, score, x0- and eps-predictions of a mixture under any path, and the
    conversions between them, are in `scorelab.paths`. Introduced in lesson 10 (the SDEs in lesson 05).
    """

    T: float = 1.0

    def marginal_coeffs(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha(t), sigma(t)): p_0t(x_t | x_0) = N(alpha(t) x_0, sigma(t)^2 I)."""
        raise NotImplementedError

    def marginal_coeffs_dot(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(d alpha / dt, d sigma / dt) at t."""
        raise NotImplementedError

    def prior_std(self) -> float:
        """Standard deviation of the prior N(0, prior_std^2 I) that stands in for p_T."""
        return 1.0

    # -- derived, shared by every path --------------------------------------------------------
    def check_time(self, t, name: str = "t") -> torch.Tensor:
        """`t` as a tensor, with every entry in [0, T] (T up to float32 rounding)."""
        t = _as_time(t)
        top = self.T * (1 + 1e-6)
        if not holds_everywhere(t, lambda u: (u >= 0) & (u <= top)):  # NaN fails both
            raise ValueError(f"{name} must lie in [0, T] = [0, {self.T}], got {t.min().item():.4g}..{t.max().item():.4g}")
        return t

    def _time(self, t) -> torch.Tensor:
        """`t` for the schedule's formulas (outside [0, T] they give NaN or nonsense): checked on the CPU; on an
        accelerator the check would cost a host sync per call, and the samplers and losses only pass times they
        made inside [0, T]."""
        t = _as_time(t)
        return self.check_time(t) if t.device.type == "cpu" else t

    def check_eps(self, eps) -> float:
        """The smallest time a sampler, loss or likelihood may reach: a float in (0, T)."""
        eps = check_positive("eps", eps, allow_tensor=False)
        if eps >= self.T:
            raise ValueError(f"eps must be below T = {self.T}, got {eps}")
        return eps

    def half_log_snr(self, t) -> torch.Tensor:
        """lambda(t) = log(alpha(t) / sigma(t)), decreasing in t (Lu et al. 2022, Sec. 3.1); +inf where sigma = 0."""
        alpha, sigma = self.marginal_coeffs(t)
        return alpha.log() - sigma.log()

    def time_of_half_log_snr(self, lam) -> torch.Tensor:
        """The time t in [0, T] with `half_log_snr(t) = lam` (a float64 tensor), by bisection to float64 round-off:
        t_lambda of Lu et al. 2022, for any path whose lambda decreases."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        lo, hi = torch.zeros_like(lam), torch.full_like(lam, self.T)
        for _ in range(64):  # 2^-64 T: below float64's resolution on [0, T]
            mid = 0.5 * (lo + hi)
            above = self.half_log_snr(mid) > lam  # lambda still too high: the time lies later
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def marginal_sample(self, x0: torch.Tensor, t, generator=None) -> torch.Tensor:
        """A draw of x_t given x_0: m(t) x_0 + sigma(t) z."""
        check_tensor("x0", x0, min_dim=2)
        check_batch_size("t", t, len(x0))
        mean_scale, std = self.marginal_coeffs(self.check_time(_as_time(t, x0)))
        z = torch.randn(x0.shape, generator=as_generator(generator, x0.device), dtype=x0.dtype, device=x0.device)
        return append_dims(mean_scale.to(x0.dtype), x0.ndim) * x0 + append_dims(std.to(x0.dtype), x0.ndim) * z

    def prior_sample(self, shape, generator=None, dtype=None, device=None) -> torch.Tensor:
        """x_T ~ N(0, prior_std^2 I) of the given shape `(batch, *dims)`."""
        shape = check_shape("shape", shape)
        check_float_dtype("dtype", dtype)
        check_memory("shape", math.prod(shape), torch.finfo(dtype or torch.get_default_dtype()).bits // 8)
        return self.prior_std() * torch.randn(shape, generator=as_generator(generator, device), dtype=dtype, device=device)

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x; 0, prior_std^2 I), shape `(batch,)`."""
        flat = x.reshape(len(x), -1)
        var = self.prior_std() ** 2
        return -0.5 * (flat**2).sum(1) / var - 0.5 * flat.shape[1] * math.log(2 * math.pi * var)


class LinearPath(GaussianPath):
    """The linear path of flow matching / rectified flow: alpha(t) = 1 - t, sigma(t) = t on [0, 1], so x_1 ~ N(0, I)
    exactly and x_t interpolates data and noise on a straight line (Lipman et al. 2023, Sec. 4.1 with sigma_min = 0
    and time reversed; Liu et al. 2023). Introduced in lesson 10."""

    def marginal_coeffs(self, t):
        t = self._time(t)
        return 1 - t, t.clone()

    def marginal_coeffs_dot(self, t):
        t = self._time(t)
        return torch.full_like(t, -1.0), torch.ones_like(t)

    def __repr__(self):
        return "LinearPath()"


class CosinePath(GaussianPath):
    """The cosine path alpha(t) = cos(pi t / 2), sigma(t) = sin(pi t / 2) on [0, 1]: variance preserving
    (alpha^2 + sigma^2 = 1) like VP, with the half log-SNR lambda = -log tan(pi t / 2) of the cosine schedule
    (Nichol & Dhariwal 2021, Eq. 17 without their offset s). alpha(1) = cos(pi / 2) is
    6e-17, not 0: start samplers at t_max < 1. Introduced in lesson 10 (its second exercise)."""

    def marginal_coeffs(self, t):
        angle = 0.5 * math.pi * self._time(t)
        return torch.cos(angle), torch.sin(angle)

    def marginal_coeffs_dot(self, t):
        angle = 0.5 * math.pi * self._time(t)
        return -0.5 * math.pi * torch.sin(angle), 0.5 * math.pi * torch.cos(angle)

    def __repr__(self):
        return "CosinePath()"


def check_gaussian_path(name: str, path) -> None:
    """`path` must be a Gaussian path (`scorelab.LinearPath()`, or an SDE such as `scorelab.VPSDE()`)."""
    if not all(hasattr(path, attr) for attr in ("marginal_coeffs", "marginal_coeffs_dot", "check_eps", "T")):
        hint = f"the string {path!r}: build the object, e.g. scorelab.LinearPath()" if isinstance(path, str) else type(path).__name__
        raise TypeError(f"{name} must be a Gaussian path such as scorelab.LinearPath() or scorelab.VPSDE(), got {hint}")


class SDE(GaussianPath):
    """A linear forward SDE dX = f(t) X dt + g(t) dB on [0, T]: a Gaussian path with alpha = m(t), sigma = sigma(t)
    generated by a drift and a diffusion. Subclasses define the schedule."""

    # -- the schedule: subclasses implement these three ---------------------------------------
    def drift_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """f(t): the drift is f(t) x."""
        raise NotImplementedError

    def diffusion(self, t) -> torch.Tensor:
        """g(t)."""
        raise NotImplementedError

    def marginal_coeffs(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(m(t), sigma(t)): p_0t(x_t | x_0) = N(m(t) x_0, sigma(t)^2 I)."""
        raise NotImplementedError

    # -- derived, shared by every SDE ---------------------------------------------------------
    def marginal_coeffs_dot(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(dm/dt, dsigma/dt) from the drift and diffusion: dm/dt = f m and d(sigma^2)/dt = 2 f sigma^2 + g^2, the
        moment equations of a linear SDE (Sarkka & Solin 2019, Eq. 6.2; Song et al. 2021, Eq. 33). Infinite at a
        time where sigma = 0 (t = 0 for every SDE here, whose sigma grows like sqrt(t))."""
        t = self._time(t)
        f, g2 = self.drift_coeff(t), self.diffusion(t) ** 2
        mean_scale, std = self.marginal_coeffs(t)
        return f * mean_scale, (f * std**2 + 0.5 * g2) / std

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        """f(t) x, with `t` a float or `(batch,)` tensor."""
        check_batch_size("t", t, len(x))
        return append_dims(self.drift_coeff(_as_time(t, x)).to(x.dtype), x.ndim) * x

    def transition_coeffs(self, s, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) with x_t = a x_s + b z for s < t: a = m(t)/m(s), b^2 = sigma(t)^2 - a^2 sigma(s)^2 (exact for linear SDEs)."""
        return transition_from_marginals(*self.marginal_coeffs(s), *self.marginal_coeffs(t))

    def ancestral_coeffs(self, t, t_next) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(a, b, c) of one ancestral step t -> t_next < t: x <- a x + b s(x, t) + c z. VE and VP only."""
        raise ValueError(f"ancestral sampling is defined for VESDE and VPSDE (Song et al. 2021, App. F), not {type(self).__name__}")


class VESDE(SDE):
    """Variance exploding: sigma(t) = sigma_min (sigma_max / sigma_min)^t, no drift (SMLD / NCSN in the limit)."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        self.sigma_min = check_positive("sigma_min", sigma_min, allow_tensor=False)
        self.sigma_max = check_positive("sigma_max", sigma_max, allow_tensor=False)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"sigma_max must exceed sigma_min, got {sigma_max} <= {sigma_min}")
        self.log_ratio = math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t) -> torch.Tensor:
        return self.sigma_min * torch.exp(self._time(t) * self.log_ratio)

    def drift_coeff(self, t):
        return torch.zeros_like(self._time(t))

    def diffusion(self, t):
        return self.sigma(t) * math.sqrt(2 * self.log_ratio)

    def marginal_coeffs(self, t):
        # int_0^t g^2 = sigma(t)^2 - sigma_min^2 exactly (the usual std = sigma(t) drops sigma_min^2)
        t = self._time(t)
        return torch.ones_like(t), (self.sigma(t) ** 2 - self.sigma_min**2).sqrt()

    def prior_std(self):
        return self.sigma_max

    def ancestral_coeffs(self, t, t_next):
        # SMLD ancestral step (Song et al. 2021, Eq. 47): x <- x + (s_t^2 - s_n^2) s + sqrt(s_n^2 (s_t^2 - s_n^2) / s_t^2) z
        var_t, var_n = self.marginal_coeffs(t)[1] ** 2, self.marginal_coeffs(t_next)[1] ** 2
        return torch.ones_like(var_t), var_t - var_n, (var_n * (var_t - var_n) / var_t).sqrt()

    def __repr__(self):
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


class VPSDE(SDE):
    """Variance preserving: beta(t) = beta_min + t (beta_max - beta_min), the continuous DDPM."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min = check_positive("beta_min", beta_min, allow_tensor=False)
        self.beta_max = check_positive("beta_max", beta_max, allow_tensor=False)
        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max must be >= beta_min, got {beta_max} < {beta_min}")

    def beta(self, t) -> torch.Tensor:
        return self.beta_min + self._time(t) * (self.beta_max - self.beta_min)

    def integrated_beta(self, t) -> torch.Tensor:
        """int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / 2."""
        t = self._time(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def drift_coeff(self, t):
        return -0.5 * self.beta(t)

    def diffusion(self, t):
        return self.beta(t).sqrt()

    def marginal_coeffs(self, t):
        alpha_bar = torch.exp(-self.integrated_beta(t))
        return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()

    def ancestral_coeffs(self, t, t_next):
        # DDPM ancestral step (Ho et al. 2020; Song et al. 2021, Eq. 47) with beta_i = 1 - alpha_bar(t) / alpha_bar(t_next):
        # x <- (x + beta_i s) / sqrt(1 - beta_i) + sqrt(beta_i) z
        beta_i = 1 - torch.exp(self.integrated_beta(t_next) - self.integrated_beta(t))
        scale = (1 - beta_i).rsqrt()
        return scale, beta_i * scale, beta_i.sqrt()

    def __repr__(self):
        return f"{type(self).__name__}(beta_min={self.beta_min}, beta_max={self.beta_max})"


class SubVPSDE(VPSDE):
    """Sub-VP: the VP drift with g(t)^2 = beta(t) (1 - exp(-2 int_0^t beta)); its variance stays below VP's."""

    def diffusion(self, t):
        return (self.beta(t) * (1 - torch.exp(-2 * self.integrated_beta(t)))).sqrt()

    def marginal_coeffs(self, t):
        alpha_bar = torch.exp(-self.integrated_beta(t))
        return alpha_bar.sqrt(), 1 - alpha_bar  # std, not variance: sigma(t) = 1 - exp(-int beta)

    def ancestral_coeffs(self, t, t_next):
        return SDE.ancestral_coeffs(self, t, t_next)


class OUSDE(SDE):
    """The Ornstein-Uhlenbeck process dX = -X dt + sqrt(2) dB on [0, T], stationary law N(0, I) (Chen et al. 2023)."""

    def __init__(self, T: float = 5.0):
        self.T = check_positive("T", T, allow_tensor=False)

    def drift_coeff(self, t):
        return -torch.ones_like(self._time(t))

    def diffusion(self, t):
        return math.sqrt(2) * torch.ones_like(self._time(t))

    def marginal_coeffs(self, t):
        t = self._time(t)
        return torch.exp(-t), (-torch.expm1(-2 * t)).sqrt()

    def __repr__(self):
        return f"OUSDE(T={self.T})"


def transition_from_marginals(m_s, std_s, m_t, std_t):
    """(a, b) with x_t = a x_s + b z for s < t, from the marginal coefficients (m, sigma) at s and at t: a = m_t / m_s
    and b^2 = sigma_t^2 - a^2 sigma_s^2 (exact for linear SDEs). Tensors or Python floats."""
    a = m_t / m_s
    variance = std_t**2 - a**2 * std_s**2
    return a, variance.clamp_min(0).sqrt() if isinstance(variance, torch.Tensor) else math.sqrt(max(variance, 0.0))


def reverse_drift(sde: SDE, score, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    r"""Drift of the reverse-time SDE, f(t) x - g(t)^2 s(x, t) (Anderson 1982; Song et al. 2021, Eq. 6)."""
    check_sde("sde", sde)
    g2 = append_dims(sde.diffusion(t).to(x.dtype) ** 2, x.ndim)
    return sde.drift(x, t) - g2 * score(x, t)


def probability_flow_drift(sde: SDE, score, x: torch.Tensor, t: torch.Tensor, coefficients=None) -> torch.Tensor:
    r"""Drift of the probability-flow ODE, f(t) x - g(t)^2 s(x, t) / 2: same marginals, no noise (Song et al. 2021, Eq. 13).

    `coefficients`: (f(t), g(t)^2) as floats, from a caller that worked them out for a time the batch shares (the
    fixed-step ODE samplers do, for their whole grid at once); else they are worked out from `t`."""
    if coefficients is not None:
        f, g2 = coefficients
        return torch.add(x * f, score(x, t), alpha=-0.5 * g2)
    g2 = append_dims(sde.diffusion(t).to(x.dtype) ** 2, x.ndim)
    return sde.drift(x, t) - 0.5 * g2 * score(x, t)


def simulate_forward(sde: SDE, x0: torch.Tensor, t_end: float, n_steps: int, generator=None, callback=None) -> torch.Tensor:
    """Euler-Maruyama simulation of the forward SDE from x0 at t = 0 to `t_end`, using only `drift` and `diffusion`.

    Independent of `marginal_coeffs`, so simulated histograms check the closed forms (lesson 05).
    `callback` gets `{"x", "i", "t"}` after every step.
    """
    check_sde("sde", sde)
    check_tensor("x0", x0, min_dim=2)
    t_end = sde.check_time(t_end, "t_end").item()
    check_int("n_steps", n_steps, minimum=1)
    generator = as_generator(generator, x0.device)
    x, dt = x0.clone(), t_end / n_steps
    for i in range(n_steps):
        t = torch.full((len(x),), i * dt, dtype=x.dtype, device=x.device)
        g = append_dims(sde.diffusion(t).to(x.dtype), x.ndim)
        x = x + sde.drift(x, t) * dt + g * math.sqrt(dt) * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        if callback is not None:
            callback({"x": x, "i": i, "t": (i + 1) * dt})
    return x


def condition_on_std(model, sde: SDE):
    """A time-conditional score s(x, t) = model(x, sigma(t)) from a noise-conditional `model(x, sigma)`.

    With `ScoreMLP(..., log_condition=True, divide_by_sigma=True)` the network sees log sigma(t) and outputs
    net / sigma(t): the scale of the true score near t = 0 is built in (the SDE analogue of Technique 3 of
    Song & Ermon 2020). Lesson 05 trains one this way with `losses.sde_dsm`.
    """
    check_sde("sde", sde)

    def score(x: torch.Tensor, t: torch.Tensor, *args) -> torch.Tensor:  # args: e.g. a class label (lesson 07)
        return model(x, sde.marginal_coeffs(t)[1].to(x.dtype), *args)

    return score
