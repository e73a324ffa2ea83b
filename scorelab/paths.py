r"""What a network can predict on a Gaussian path, the exact answers for a mixture, and the conversions between them.

On a path x_t = alpha(t) x_0 + sigma(t) eps (`sde.GaussianPath`: `LinearPath`, or any SDE such as `VPSDE`) a
network may be trained to predict one of four quantities, all functions of (x_t, t):

    "x0"        E[x_0 | x_t]                                     (data prediction; Kingma et al. 2021, Sec. 3)
    "eps"       E[eps | x_t]                                     (noise prediction; Ho et al. 2020)
    "score"     grad log p_t(x_t) = -E[eps | x_t] / sigma(t)     (Song et al. 2021; Vincent 2011)
    "velocity"  u_t(x_t) = E[alpha_dot x_0 + sigma_dot eps | x_t]  (Lipman et al. 2023, Eq. 8 / Thm 1)

Any one fixes the other three, because x_t = alpha E[x_0 | x_t] + sigma E[eps | x_t] holds exactly: `convert`
does it through the pair (x0, eps), so each formula is written once. For a `GaussianMixture` all four are exact
(`mixture_field`), through the exact posterior mean of x_0 and eps given x_t, so every learned field and every
sampler can be compared with the truth. Introduced in lesson 10.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._checks import append_dims, check_callable, check_choice, check_output, check_per_sample, check_tensor, shared_value
from .sde import check_gaussian_path

#: the quantities a field on a path may predict (`convert`'s `source` and `target`)
PREDICTIONS = ("x0", "eps", "score", "velocity")


def path_coefficients(path, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(alpha, sigma, alpha_dot, sigma_dot) at the per-sample times `t` `(batch,)`, in `like`'s dtype and shaped to
    broadcast over it."""
    alpha, sigma = path.marginal_coeffs(t)
    alpha_dot, sigma_dot = path.marginal_coeffs_dot(t)
    return tuple(append_dims(c.to(like.dtype), like.ndim) for c in (alpha, sigma, alpha_dot, sigma_dot))


def to_x0_eps(value: torch.Tensor, x: torch.Tensor, coefficients, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) with x = alpha x0 + sigma eps, from the `source` prediction `value` at x. `coefficients`: (alpha,
    sigma, alpha_dot, sigma_dot) as floats or tensors that broadcast over x (`path_coefficients`)."""
    alpha, sigma, alpha_dot, sigma_dot = coefficients
    if source == "x0":  # eps = (x - alpha x0) / sigma (Ho et al. 2020, Eq. 4 solved for eps)
        return value, (x - alpha * value) / sigma
    if source == "eps":  # x0 = (x - sigma eps) / alpha (Song, Meng & Ermon 2021, Eq. 12's "predicted x0")
        return (x - sigma * value) / alpha, value
    if source == "score":  # eps = -sigma s, so x0 = (x + sigma^2 s) / alpha (Tweedie; Kingma et al. 2021, App. L)
        return (x + sigma**2 * value) / alpha, -sigma * value
    # velocity: solve x = alpha x0 + sigma eps, u = alpha_dot x0 + sigma_dot eps (Lipman et al. 2023, Eq. 15) for
    # (x0, eps); the determinant alpha sigma_dot - alpha_dot sigma > 0 when sigma / alpha grows
    det = alpha * sigma_dot - alpha_dot * sigma
    return (sigma_dot * x - sigma * value) / det, (alpha * value - alpha_dot * x) / det


def from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, coefficients, target: str) -> torch.Tensor:
    """The `target` prediction from the pair (x0, eps) (`to_x0_eps`)."""
    alpha, sigma, alpha_dot, sigma_dot = coefficients
    if target == "x0":
        return x0
    if target == "eps":
        return eps
    if target == "score":  # s = -eps / sigma (Song et al. 2021, Eq. 7's target; Vincent 2011)
        return -eps / sigma
    return alpha_dot * x0 + sigma_dot * eps  # u = alpha_dot x0 + sigma_dot eps (Lipman et al. 2023, Eq. 15)


def _check_kinds(source: str, target: str) -> None:
    check_choice("source", source, PREDICTIONS)
    check_choice("target", target, PREDICTIONS)


def convert(value: torch.Tensor, x: torch.Tensor, t, path, *, source: str, target: str) -> torch.Tensor:
    r"""Turn one prediction on a Gaussian path into another, exactly.

    With x = alpha x0 + sigma eps (the identity every prediction of a path obeys):

        eps = (x - alpha x0) / sigma,  x0 = (x - sigma eps) / alpha       (Ho et al. 2020; Song, Meng & Ermon 2021)
        score = -eps / sigma                                             (Vincent 2011; Song et al. 2021)
        velocity = alpha_dot x0 + sigma_dot eps                          (Lipman et al. 2023, Eq. 15)
        (x0, eps) = ((sigma_dot x - sigma u), (alpha u - alpha_dot x)) / (alpha sigma_dot - alpha_dot sigma)

    the last the inverse of the two lines before it. For an SDE path the velocity is the probability-flow drift,
    f x - g^2 s / 2 (Song et al. 2021, Eq. 13), which `tests/test_paths.py` checks.

    Args:
        value: the `source` prediction at x, shape `(batch, *dims)`. x: the points, same shape.
        t: a float or `(batch,)` tensor of times in [0, T]. path: a `sde.GaussianPath` (`LinearPath`, `VPSDE`, ...).
        source, target: each one of "x0", "eps", "score", "velocity".
    Returns:
        the `target` prediction, of x's shape. Divides by sigma (to the score or from x0), by alpha (from eps or
        the score), so those are infinite where that coefficient is 0.
    Introduced in lesson 10.
    """
    _check_kinds(source, target)
    check_gaussian_path("path", path)
    check_tensor("x", x, min_dim=2)
    check_tensor("value", value, min_dim=2)
    if value.shape != x.shape:
        raise ValueError(f"value must have x's shape {tuple(x.shape)}, got {tuple(value.shape)}")
    if source == target:
        return value
    coefficients = path_coefficients(path, path.check_time(check_per_sample("t", t, len(x), x)), x)
    return from_x0_eps(*to_x0_eps(value, x, coefficients, source), coefficients, target)


def convert_field(field: Callable, path, *, source: str, target: str) -> Callable:
    """`field(x, t)` that predicts `source`, as a field `(x, t) -> target` (`convert` at every call): e.g. a network
    trained by `losses.flow_matching` as a score for `sampling.pc_sample`, or a score as a velocity. Lesson 10."""
    check_callable("field", field)
    _check_kinds(source, target)
    check_gaussian_path("path", path)

    def converted(x: torch.Tensor, t, *args) -> torch.Tensor:
        value = check_output("field", field(x, t, *args), x.shape)
        return convert(value, x, t, path, source=source, target=target)

    return converted


def _isotropic_posterior(mixture, x: torch.Tensor, alpha, sigma):
    """`mixture_posterior` for isotropic components Sigma_k = c_k I (the ring mixtures): the same formulas with
    C_k = v_k I, v_k = alpha^2 c_k + sigma^2, written as products of `(n, K)` and `(K, .)` matrices (no `(n, K, D)`
    tensor, no eigenvectors). `alpha`, `sigma`: floats (one time for the batch: two matrix products in all) or
    `(n, 1)` columns."""
    c, mu = mixture._isotropic_variances, mixture.means  # (K,), (K, D)
    inverse = 1 / (alpha**2 * c + sigma**2)  # 1 / v_k, (K,) or (n, K)
    # log w_k N(x; alpha mu_k, v_k I) + const = log w_k - D/2 log v_k - (|x|^2 - 2 alpha x.mu_k + alpha^2 |mu_k|^2) / (2 v_k)
    constant = mixture.weights.log() + 0.5 * x.shape[1] * inverse.log() - 0.5 * alpha**2 * (mu * mu).sum(1) * inverse
    resp = torch.softmax(constant - 0.5 * (x * x).sum(1, keepdim=True) * inverse + (x @ mu.T) * (alpha * inverse), dim=1)
    if inverse.ndim == 1:  # r_k times each of 1/v_k, c_k/v_k, mu_k/v_k, c_k mu_k/v_k, mu_k: one product
        table = torch.cat([inverse[:, None], (c * inverse)[:, None], inverse[:, None] * mu, (c * inverse)[:, None] * mu, mu], 1)
        sums = resp @ table
        d = x.shape[1]
        s0, sc, m0, mc, m = sums[:, :1], sums[:, 1:2], sums[:, 2 : 2 + d], sums[:, 2 + d : 2 + 2 * d], sums[:, 2 + 2 * d :]
    else:
        weighted = resp * inverse
        s0, sc, m0 = weighted.sum(1, keepdim=True), (weighted * c).sum(1, keepdim=True), weighted @ mu
        mc, m = (weighted * c) @ mu, resp @ mu
    # E[eps | x] = sigma sum_k r_k (x - alpha mu_k) / v_k; E[x0 | x] = sum_k r_k (mu_k + alpha c_k (x - alpha mu_k) / v_k)
    return m + alpha * (x * sc - alpha * mc), sigma * (x * s0 - alpha * m0)


def _shared_coefficients(path, t: torch.Tensor, names=("marginal_coeffs",)):
    """The path's coefficients as floats when every entry of the checked times `t` is one time (a sampler's batch),
    else None."""
    time = shared_value(t)
    if time is None:
        return None
    time = torch.tensor(time, dtype=torch.float64)
    return tuple(c.item() for name in names for c in getattr(path, name)(time))


def mixture_posterior(mixture, path, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The exact posterior means (E[x_0 | x_t = x], E[eps | x_t = x]) of a Gaussian mixture on a Gaussian path.

    Within component k (weight w_k, mean mu_k, covariance Sigma_k), x_t ~ N(alpha mu_k, C_k) with
    C_k = alpha^2 Sigma_k + sigma^2 I, and Gaussian conditioning gives (Bishop 2006, Eq. 2.116)

        E[x_0 | x, k] = mu_k + alpha Sigma_k C_k^{-1} (x - alpha mu_k),   E[eps | x, k] = sigma C_k^{-1} (x - alpha mu_k),

    averaged with the responsibilities p(k | x_t = x). No division by alpha or sigma: both are finite at t = 0
    and where alpha = 0 (the linear path at t = 1), and alpha x0 + sigma eps = x to round-off.

    Args:
        mixture: a `GaussianMixture`. path: a `sde.GaussianPath`. x: `(n, D)` (or `(n, *dims)`).
        t: a float or `(n,)` tensor of times in [0, T].
    Returns:
        (x0, eps), each of x's shape and dtype.
    Introduced in lesson 10.
    """
    check_gaussian_path("path", path)
    flat = mixture._flatten(x)
    t = path.check_time(check_per_sample("t", t, len(flat), flat))
    alpha, sigma = (c.to(flat.dtype) for c in path.marginal_coeffs(t))
    if mixture._isotropic_variances is not None:  # as numbers when the batch shares one time, else as columns
        shared = _shared_coefficients(path, t)
        x0, eps = _isotropic_posterior(mixture, flat, *(shared or (alpha[:, None], sigma[:, None])))
        return x0.reshape(x.shape).to(x.dtype), eps.reshape(x.shape).to(x.dtype)
    log_comp, scaled = mixture._affine_components(flat, alpha, sigma)  # scaled = U^T (x - alpha mu) / (alpha^2 l + sigma^2)
    resp = torch.softmax(log_comp, dim=1)[..., None]  # (n, K, 1)
    # E[x0 | x, k] = mu_k + U_k diag(alpha l_k) scaled_k; E[eps | x, k] = sigma U_k scaled_k
    x0 = (resp * mixture.means).sum(1) + torch.einsum(
        "kdj,nkj->nd", mixture._eigvecs, resp * alpha[:, None, None] * mixture._eigvals * scaled
    )
    eps = sigma[:, None] * torch.einsum("kdj,nkj->nd", mixture._eigvecs, resp * scaled)
    return x0.reshape(x.shape).to(x.dtype), eps.reshape(x.shape).to(x.dtype)


def mixture_field(mixture, path, prediction: str = "velocity") -> Callable:
    r"""The exact `prediction` of a Gaussian mixture on a Gaussian path, as a field `(x, t)`.

    "velocity" is the marginal velocity u_t(x) = E[alpha_dot x_0 + sigma_dot eps | x_t = x] that flow matching
    regresses on (Lipman et al. 2023, Eq. 8), which carries p_t along the continuity equation
    d p_t / dt + div(p_t u_t) = 0; "score", "x0", "eps" as in `convert`. All through `mixture_posterior`.

    Args:
        mixture: a `GaussianMixture`. path: a `sde.GaussianPath`. prediction: "velocity", "score", "x0" or "eps".
    Returns:
        `field(x, t)` with x `(n, D)` and t a float or `(n,)` tensor, returning x's shape.
    Introduced in lesson 10.
    """
    check_gaussian_path("path", path)
    check_choice("prediction", prediction, PREDICTIONS)

    def field(x: torch.Tensor, t) -> torch.Tensor:
        x0, eps = mixture_posterior(mixture, path, x, t)
        if prediction in ("x0", "eps"):
            return x0 if prediction == "x0" else eps
        t = path.check_time(check_per_sample("t", t, len(x), x))
        coefficients = _shared_coefficients(path, t, ("marginal_coeffs", "marginal_coeffs_dot"))
        return from_x0_eps(x0, eps, coefficients or path_coefficients(path, t, x), prediction)

    return field


def straightness(trajectory: torch.Tensor) -> torch.Tensor:
    r"""How straight each particle's path is: chord over arc length, |x_K - x_0| / \sum_k |x_{k+1} - x_k|.

    1 for a straight path travelled in one direction, smaller the more it bends (0 for a closed loop). It reads the
    curve only, not the speed along it, so it compares paths whose time variables differ (the linear path and VP,
    lesson 10); Liu et al. 2023 measure straightness through the velocity instead (E||(x_1 - x_0) - dx/dt||^2
    integrated over t), which also charges a change of speed along a straight line. The polygon's length is at most
    the curve's, so on a coarse record of a curved path the ratio is biased upwards: record the path finely (e.g.
    `sampling.flow_sample`'s `callback` over many steps).

    Args:
        trajectory: `(K + 1, n, *dims)`, the positions of n particles at K + 1 times (K >= 1), in order.
    Returns:
        `(n,)` ratios in [0, 1] (1 for a particle that does not move).
    Introduced in lesson 10.
    """
    check_tensor("trajectory", trajectory, min_dim=3)
    if len(trajectory) < 2:
        raise ValueError(f"trajectory must hold at least 2 times (dim 0), got {len(trajectory)}")
    flat = trajectory.reshape(len(trajectory), trajectory.shape[1], -1)
    chord = (flat[-1] - flat[0]).norm(dim=-1)
    length = (flat[1:] - flat[:-1]).norm(dim=-1).sum(0)
    return torch.where(length > 0, chord / length.clamp_min(torch.finfo(flat.dtype).tiny), torch.ones_like(chord))


def transfer_field(field: Callable, path, to_path, *, prediction: str) -> Callable:
    r"""A field learned on one Gaussian path, as the same prediction on another path.

    Two paths carry the same information at equal half log-SNR lambda = log(alpha / sigma): if lambda_path(s) =
    lambda_to(t), then (alpha_path(s) / alpha_to(t)) x_t of `to_path` has the law of x_s of `path`, with the same
    x_0 and the same eps (every path is x = alpha x_hat with x_hat = x_0 + e^{-lambda} eps, Karras et al. 2022,
    Sec. 2; Kingma et al. 2021). So E[x_0 | x_t] and E[eps | x_t] on `to_path` are `path`'s at the rescaled point and
    the matched time, and the velocity and score follow from them (`convert`). E.g. a flow-matching network on
    `LinearPath` as a VP score for `sampling.pc_sample` (lesson 10).

    Args:
        field: `(x, s) -> prediction` on `path`, s a `(batch,)` tensor of `path`'s times.
        path, to_path: `sde.GaussianPath`s. `path` must reach every lambda asked for (`LinearPath` spans them all).
        prediction: what `field` returns and the result returns: "x0", "eps", "score" or "velocity".
    Returns:
        `(x, t) -> prediction` on `to_path`, t a float or `(batch,)` tensor of `to_path`'s times where alpha > 0.
    Introduced in lesson 10.
    """
    check_callable("field", field)
    check_gaussian_path("path", path)
    check_gaussian_path("to_path", to_path)
    check_choice("prediction", prediction, PREDICTIONS)

    def transferred(x: torch.Tensor, t, *args) -> torch.Tensor:
        t = to_path.check_time(check_per_sample("t", t, len(x), x))
        s = path.time_of_half_log_snr(to_path.half_log_snr(t.double()))  # the matched times, float64
        scale = path.marginal_coeffs(s)[0] / to_path.marginal_coeffs(t.double())[0]
        x_path, s = append_dims(scale.to(x.dtype), x.ndim) * x, s.to(x.dtype)
        value = check_output("field", field(x_path, s, *args), x.shape)
        x0, eps = to_x0_eps(value, x_path, path_coefficients(path, s, x), prediction)
        return from_x0_eps(x0, eps, path_coefficients(to_path, t, x), prediction)

    return transferred
