r"""Score-matching objectives.

Every loss takes a score callable and a batch `x` of shape `(n, *dims)` and returns the
mean over the batch (`reduction="mean"`) or the per-sample values (`reduction="none"`,
for standard errors). Norms, traces and inner products run over all non-batch dims,
so the same call serves 2-D points and images. Introduced in lesson 02.

    esm   explicit score matching      1/2 E||s(x) - \nabla log p(x)||^2
    ism   implicit score matching      E[tr \nabla_x s(x) + 1/2 ||s(x)||^2]          (Hyvarinen 2005)
    ssm   sliced score matching        E[v^T \nabla_x s(x) v + 1/2 (v^T s(x))^2]     (Song et al. 2019)
    dsm   denoising score matching     1/2 E||s(x~) + (x~ - x)/sigma^2||^2           (Vincent 2011)
    ncsn  multi-scale DSM, lambda(sigma) = sigma^2                               (Song & Ermon 2019, Eq. 6)
    sde_dsm  continuous-time DSM for an SDE, lambda(t) = sigma(t)^2 or g(t)^2          (Song et al. 2021, Eq. 7)
    flow_matching  conditional flow matching   E||v(x_t, t) - (alpha_dot x + sigma_dot eps)||^2   (Lipman et al. 2023, Eq. 9)
    path_dsm  DSM on any Gaussian path, noise parametrisation   E||eps_theta(x_t, t) - eps||^2   (Ho et al. 2020, Eq. 14)

and, for energy-based models (lesson 08), contrastive divergence (`contrastive_divergence`, `ContrastiveDivergence`) and
exact maximum likelihood with Z by quadrature on a box (`quadrature_nll`, 1-D and 2-D only).
"""

from __future__ import annotations

import torch

from ._checks import (
    append_dims,
    as_generator,
    check_batch_size,
    check_bounds,
    check_callable,
    check_choice,
    check_int,
    check_nonnegative,
    check_output,
    check_per_sample,
    check_positive,
    check_probability,
    check_sde,
    check_tensor,
)
from .distributions import _quadrature_nodes, score_from_energy
from .paths import path_coefficients
from .sampling import langevin
from .sde import check_gaussian_path
from .threads import adapt as adapt_threads

REDUCTIONS = ("mean", "none")


def _flat_sum(v: torch.Tensor) -> torch.Tensor:
    """Sum over every non-batch dim: `(n, *dims)` -> `(n,)`."""
    return v.reshape(v.shape[0], -1).sum(1)


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    return per_sample.mean() if reduction == "mean" else per_sample


def _prepare(score, x, reduction):
    adapt_threads()  # training loops call a loss every step: the place to share the cores (scorelab.threads)
    check_callable("score", score)
    check_tensor("x", x, min_dim=2)
    check_choice("reduction", reduction, REDUCTIONS)


def _score_output(score, x):
    return check_output("score", score(x), x.shape)


def esm(score, x: torch.Tensor, true_score, *, reduction: str = "mean") -> torch.Tensor:
    r"""Explicit score matching, 1/2 E_x ||s(x) - s^*(x)||^2, with `true_score` a callable (lesson 02).

    Args:
        score: model `x -> s(x)`, same shape as `x`.
        x: samples `(n, *dims)` from the data distribution.
        true_score: the exact score `x -> \nabla log p(x)`; evaluated without gradients.
    """
    _prepare(score, x, reduction)
    check_callable("true_score", true_score)
    with torch.no_grad():
        target = check_output("true_score", true_score(x), x.shape)
    return _reduce(0.5 * _flat_sum((_score_output(score, x) - target) ** 2), reduction)


def ism(score, x: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    r"""Implicit score matching, E[tr \nabla_x s(x) + 1/2 ||s(x)||^2] (Hyvarinen 2005, Thm. 1).

    The trace is exact: one backward pass per data dimension, so the cost grows linearly
    in D (lesson 02 measures it). Equals `esm` minus 1/2 E||\nabla log p||^2, a constant.
    """
    _prepare(score, x, reduction)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        s = _score_output(score, x)
        s_flat = s.reshape(s.shape[0], -1)
        trace = torch.zeros(x.shape[0], dtype=s.dtype, device=s.device)
        for d in range(s_flat.shape[1]):
            (grad,) = torch.autograd.grad(s_flat[:, d].sum(), x, create_graph=True)
            trace = trace + grad.reshape(x.shape[0], -1)[:, d]
    return _reduce(trace + 0.5 * _flat_sum(s**2), reduction)


def count_backward_passes(model: torch.nn.Module, step) -> int:
    """How many times gradients flow back through `model`'s first `nn.Linear` layer while `step()` runs.

    The cost of a score-matching loss in backward passes: ISM's exact trace needs one pass per
    coordinate, tr nabla_x s = sum_i d s_i / d x_i (Hyvarinen 2005, Thm. 1), SSM one per projection
    (Song et al. 2019, §3); the final `.backward()` for the parameters adds one. Counted with a
    backward pre-hook on the first linear layer, so a pass that stops before reaching it is not
    counted. Introduced in lesson 02.

    Args:
        model: a module containing at least one `torch.nn.Linear`.
        step: a callable with no arguments (e.g. `lambda: losses.ism(model, x).backward()`).

    Returns:
        the number of backward passes through the first linear layer (an int >= 0).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_callable("step", step)
    first = next((m for m in model.modules() if isinstance(m, torch.nn.Linear)), None)
    if first is None:
        raise ValueError("model must contain a torch.nn.Linear layer (its first one is where passes are counted)")
    calls = []
    hook = first.register_full_backward_pre_hook(lambda module, grad_output: calls.append(1))
    try:
        step()
    finally:
        hook.remove()
    return len(calls)


def count_flops(step) -> int:
    """Floating-point operations of the products and convolutions that `step()` runs, forward and backward.

    A measure of work that no machine's speed or load changes (for a given PyTorch version, which decides how each
    operation is lowered), where a time is one machine's reading: lessons 02 and 08 assert on it and print times
    beside it. Counted from the operands' shapes, for every such operation `step()` runs, including the passes inside
    `torch.autograd.grad(..., create_graph=True)` and the backward through their graphs: matrix-matrix products
    (`mm`, `addmm`, `bmm`, `baddbmm`: 2mnk for (m, k) @ (k, n); what `nn.Linear`, `@` and `einsum` lower to),
    convolutions and attention by PyTorch's own formulas (`torch.utils.flop_counter`), and matrix-vector and dot
    products (`mv`, `addmv`: 2mn; `dot`, `vdot`: 2n, for real tensors), which PyTorch's table leaves out. The
    backward of a matrix-vector or dot product is counted only in part: PyTorch forms its outer products elementwise,
    so `(W @ v).sum().backward()` counts the forward and `v`'s gradient, not `W`'s. Elementwise operations
    (activations, the optimiser's update, Langevin's noise) are not counted: in an MLP they are a small share of the
    arithmetic, though not of the time at small sizes, where fixed per-operation costs dominate.
    (`torch.utils.flop_counter.FlopCounterMode` is not used: its module hooks raise inside `torch.autograd.grad`,
    which ISM's trace and every energy's score call.)

    Args:
        step: a callable with no arguments (e.g. `lambda: losses.ism(model, x).backward()`).

    Returns:
        the number of floating-point operations (an int >= 0).
    """
    check_callable("step", step)
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    aten = torch.ops.aten
    vector_products = {  # not in PyTorch's table: 2 operations per multiply-add
        aten.mv: lambda matrix, vector, **_: 2 * matrix.numel(),
        aten.addmv: lambda bias, matrix, vector, **_: 2 * matrix.numel(),
        aten.dot: lambda a, b, **_: 2 * a.numel(),
        aten.vdot: lambda a, b, **_: 2 * a.numel(),
    }

    class _Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            packet = func._overloadpacket
            if packet in flop_registry:
                self.total += int(flop_registry[packet](*args, **kwargs, out_val=out))
            elif packet in vector_products:
                self.total += int(vector_products[packet](*args, **kwargs))
            return out

    with _Counter() as counter:
        step()
    return counter.total


def _gaussian_projections(shape, generator, dtype, device):
    return torch.randn(shape, generator=generator, dtype=dtype, device=device)


def _rademacher_projections(shape, generator, dtype, device):
    return torch.randint(0, 2, shape, generator=generator, device=device).to(dtype) * 2 - 1


#: projection distributions for sliced score matching (both have E[v v^T] = I)
PROJECTIONS = {"gaussian": _gaussian_projections, "rademacher": _rademacher_projections}


def ssm(
    score,
    x: torch.Tensor,
    n_projections: int = 1,
    projection: str = "gaussian",
    variance_reduction: bool = False,
    generator=None,
    *,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Sliced score matching (Song, Garg, Shi & Ermon 2019, Eq. 8).

    E_v E_x [v^T \nabla_x s(x) v + 1/2 (v^T s(x))^2], or with `variance_reduction` the
    second term replaced by its expectation over v, 1/2 ||s(x)||^2 (SSM-VR). One
    backward pass per projection, whatever the dimension. Each sample gets
    `n_projections` independent `v` from `projection` ("gaussian" or "rademacher");
    the per-sample value (`reduction="none"`) averages over them.
    """
    _prepare(score, x, reduction)
    check_int("n_projections", n_projections, minimum=1)
    check_choice("projection", projection, PROJECTIONS)
    generator = as_generator(generator, x.device)
    n = x.shape[0]
    x_rep = x.detach().repeat_interleave(n_projections, dim=0).requires_grad_(True)
    v = PROJECTIONS[projection](x_rep.shape, generator, x.dtype, x.device)
    with torch.enable_grad():
        s = _score_output(score, x_rep)
        v_s = _flat_sum(v * s)
        (grad_v_s,) = torch.autograd.grad(v_s.sum(), x_rep, create_graph=True)
    v_jac_v = _flat_sum(grad_v_s * v)
    second = 0.5 * _flat_sum(s**2) if variance_reduction else 0.5 * v_s**2
    per_sample = (v_jac_v + second).reshape(n, n_projections).mean(1)
    return _reduce(per_sample, reduction)


def dsm(score, x: torch.Tensor, sigma, generator=None, *, noise=None, reduction: str = "mean") -> torch.Tensor:
    r"""Denoising score matching at one noise level (Vincent 2011, Eq. 11).

    1/2 E ||s(x~) + (x~ - x)/sigma^2||^2 with x~ = x + sigma z, z ~ N(0, I). Its minimiser is
    the score of the noised density p_sigma = p * N(0, sigma^2 I), and it differs from
    ESM against p_sigma by a constant (lesson 02).

    Args:
        sigma: positive float, or a `(n,)` tensor of per-sample levels.
        noise: optional `z` of `x`'s shape (common random numbers); drawn from
            `generator` when omitted.
    """
    _prepare(score, x, reduction)
    check_batch_size("sigma", sigma, len(x))
    sigma = check_positive("sigma", sigma)
    z = _standard_noise(x, generator, noise)
    sigma = append_dims(torch.as_tensor(sigma, dtype=x.dtype, device=x.device), x.ndim)
    x_tilde = x + sigma * z
    return _reduce(0.5 * _flat_sum((_score_output(score, x_tilde) + z / sigma) ** 2), reduction)


def ncsn(score, x: torch.Tensor, sigmas, generator=None, *, reduction: str = "mean") -> torch.Tensor:
    r"""Multi-scale DSM of NCSN with \lambda(\sigma) = \sigma^2 (Song & Ermon 2019, Eq. 6).

    Each sample gets one level sigma_i drawn uniformly from `sigmas`; the loss is
    1/2 E ||\sigma s(x~, \sigma) + z||^2 with x~ = x + \sigma z, i.e. sigma^2 times the
    DSM loss at that level. `score(x, sigma)` receives `sigma` as a `(batch,)` tensor.
    """
    _prepare(score, x, reduction)
    sigmas = torch.as_tensor(sigmas, dtype=x.dtype, device=x.device)
    if sigmas.ndim != 1 or sigmas.numel() == 0:
        raise ValueError(f"sigmas must be a non-empty 1-D sequence of noise levels, got shape {tuple(sigmas.shape)}")
    check_positive("sigmas", sigmas)
    generator = as_generator(generator, x.device)
    sigma = sigmas[torch.randint(len(sigmas), (x.shape[0],), generator=generator, device=x.device)]
    z = _standard_noise(x, generator, None)
    x_tilde = x + append_dims(sigma, x.ndim) * z
    s = check_output("score", score(x_tilde, sigma), x.shape)
    return _reduce(0.5 * _flat_sum((append_dims(sigma, x.ndim) * s + z) ** 2), reduction)


def _standard_noise(x, generator, noise):
    if noise is None:
        return torch.randn(x.shape, generator=as_generator(generator, x.device), dtype=x.dtype, device=x.device)
    check_tensor("noise", noise)
    if noise.shape != x.shape:
        raise ValueError(f"noise must have x's shape {tuple(x.shape)}, got {tuple(noise.shape)}")
    return noise


#: weightings lambda(t) of the continuous-time DSM loss
SDE_WEIGHTINGS = ("sigma2", "likelihood", "min_snr")


def diffuse(x: torch.Tensor, sde, eps: float, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """t ~ U(eps, T) per sample, z ~ N(0, I) and x_t = m(t) x + sigma(t) z: `(x_t, t, z, sigma(t))`, sigma(t)
    shaped to broadcast over x. The draw of every continuous-time loss (`sde_dsm`, `guidance.classifier_loss`)."""
    check_sde("sde", sde)
    t = eps + (sde.T - eps) * torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=x.device)
    mean_scale, std = (append_dims(c.to(x.dtype), x.ndim) for c in sde.marginal_coeffs(t))
    z = _standard_noise(x, generator, None)
    return mean_scale * x + std * z, t, z, std


def sde_dsm(
    score,
    x: torch.Tensor,
    sde,
    weighting: str = "sigma2",
    eps: float = 1e-5,
    generator=None,
    *,
    snr_gamma: float = 5.0,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Continuous-time denoising score matching (Song et al. 2021, Eq. 7).

    t ~ U(eps, T), x_t = m(t) x + sigma(t) z, and 1/2 lambda(t) ||s_theta(x_t, t) + z / sigma(t)||^2 with
    lambda(t) = sigma(t)^2 (`"sigma2"`: the loss is 1/2 ||sigma(t) s_theta + z||^2, every t weighted alike) or
    lambda(t) = g(t)^2 (`"likelihood"`: the loss bounds the negative log-likelihood, Song et al. 2021b), or
    lambda(t) = sigma(t)^2 min(SNR(t), snr_gamma) / SNR(t) with SNR = m(t)^2 / sigma(t)^2 (`"min_snr"`, Hang et al.
    2023's Min-SNR-gamma for noise prediction: `"sigma2"` with the low-noise times, SNR > snr_gamma, weighted down).
    `score(x, t)` receives the forward time t as a `(batch,)` tensor. Introduced in lesson 05.
    """
    _prepare(score, x, reduction)
    check_choice("weighting", weighting, SDE_WEIGHTINGS)
    check_positive("snr_gamma", snr_gamma, allow_tensor=False)
    check_sde("sde", sde)
    eps = sde.check_eps(eps)
    generator = as_generator(generator, x.device)
    x_t, t, z, std = diffuse(x, sde, eps, generator)
    s = check_output("score", score(x_t, t), x.shape)
    if weighting == "sigma2":
        per_sample = 0.5 * _flat_sum((std * s + z) ** 2)
    elif weighting == "min_snr":
        mean_scale, sigma = sde.marginal_coeffs(t)
        snr = (mean_scale / sigma).to(x.dtype) ** 2
        per_sample = 0.5 * snr.clamp(max=snr_gamma) / snr * _flat_sum((std * s + z) ** 2)
    else:
        per_sample = 0.5 * sde.diffusion(t).to(x.dtype) ** 2 * _flat_sum((s + z / std) ** 2)
    return _reduce(per_sample, reduction)


def _path_draws(model, x, path, eps, generator, t, noise, reduction):
    """The draws `flow_matching` and `path_dsm` share, in one order (so one seed gives both losses the same x_t):
    t ~ U(eps, T) unless given, standard-normal noise unless given, and the path's (alpha, sigma, alpha', sigma')."""
    _prepare(model, x, reduction)
    check_gaussian_path("path", path)
    eps = path.check_eps(eps)
    generator = as_generator(generator, x.device)
    if t is None:
        t = eps + (path.T - eps) * torch.rand(len(x), generator=generator, dtype=x.dtype, device=x.device)
    else:
        t = path.check_time(check_per_sample("t", t, len(x), x), "t")
    z = _standard_noise(x, generator, noise)
    return t, z, path_coefficients(path, t, x)


def flow_matching(
    velocity,
    x: torch.Tensor,
    path,
    eps: float = 1e-3,
    generator=None,
    *,
    marginal_velocity=None,
    t=None,
    noise=None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Conditional flow matching on a Gaussian path (Lipman et al. 2023, Eq. 9 and Thm. 2).

    t ~ U(eps, T), eps ~ N(0, I), x_t = alpha(t) x + sigma(t) eps, and ||v_theta(x_t, t) - (alpha_dot x + sigma_dot eps)||^2:
    the target is the velocity of the conditional path through x, whose conditional mean given x_t is the marginal
    velocity u_t(x_t) (`paths.mixture_field`), so the loss is minimised by u_t. With `marginal_velocity` (a field
    `(x, t) -> u_t`) the target is u_t(x_t) itself: marginal flow matching (Lipman et al. 2023, Eq. 5), which differs
    from the conditional loss by a constant free of theta (their Thm. 2; lesson 10 shows it numerically).
    Time runs from data (t = 0) to noise (t = T) here, the reverse of Lipman et al.'s convention; no factor 1/2.

    Args:
        velocity: `(x, t) -> v` with t a `(batch,)` tensor, e.g. `nets.ScoreMLP(D, n_fourier=16)`.
        x: `(batch, *dims)` data. path: a `sde.GaussianPath` (`LinearPath()`, `VPSDE()`, ...).
        eps: the smallest time drawn. t, noise: optional `(batch,)` times and standard-normal draws of x's shape
            (common random numbers: two losses on the same draws); drawn from `generator` when omitted.
    Returns:
        the mean over the batch, or `(batch,)` values with `reduction="none"`.
    Introduced in lesson 10.
    """
    check_callable("velocity", velocity)
    if marginal_velocity is not None:
        check_callable("marginal_velocity", marginal_velocity)
    t, z, (alpha, sigma, alpha_dot, sigma_dot) = _path_draws(velocity, x, path, eps, generator, t, noise, reduction)
    x_t = alpha * x + sigma * z
    if marginal_velocity is None:
        target = alpha_dot * x + sigma_dot * z
    else:
        with torch.no_grad():
            target = check_output("marginal_velocity", marginal_velocity(x_t, t), x.shape)
    v = check_output("velocity", velocity(x_t, t), x.shape)
    return _reduce(_flat_sum((v - target) ** 2), reduction)


def path_dsm(
    eps_model, x: torch.Tensor, path, eps: float = 1e-3, generator=None, *, t=None, noise=None, reduction: str = "mean"
) -> torch.Tensor:
    r"""Denoising score matching on a Gaussian path, in the noise parametrisation: E||eps_theta(x_t, t) - eps||^2.

    t ~ U(eps, T), eps ~ N(0, I), x_t = alpha(t) x + sigma(t) eps (Ho et al. 2020, Eq. 14, "L_simple", on any path).
    With s = -eps_theta / sigma it is twice `sde_dsm`'s "sigma2" loss, so on an SDE the two have one minimiser; unlike
    `sde_dsm` it takes any `sde.GaussianPath`, the linear path of flow matching included. The draws of t and of the
    noise from `generator` are `flow_matching`'s (same order), so with one seed the two losses see the same (x_t, t):
    with v the velocity of the same network (`paths.convert_field`), flow matching's per-sample loss is this one times
    ((alpha sigma_dot - alpha_dot sigma) / alpha)^2 (lesson 10 checks it to round-off).

    Args:
        eps_model: `(x, t) -> eps_hat` with t a `(batch,)` tensor. x: `(batch, *dims)` data. path: a `sde.GaussianPath`.
        eps: the smallest time drawn. t, noise: optional `(batch,)` times and standard-normal draws of x's shape.
    Returns:
        the mean over the batch, or `(batch,)` values with `reduction="none"`.
    Introduced in lesson 10.
    """
    check_callable("eps_model", eps_model)
    t, z, (alpha, sigma, _, _) = _path_draws(eps_model, x, path, eps, generator, t, noise, reduction)
    eps_hat = check_output("eps_model", eps_model(alpha * x + sigma * z, t), x.shape)
    return _reduce(_flat_sum((eps_hat - z) ** 2), reduction)


# --- energy-based models: maximum likelihood by contrastive divergence (lesson 08) --------------------------------


def contrastive_divergence(energy, x_data: torch.Tensor, x_model: torch.Tensor, *, regularization: float = 0.0) -> torch.Tensor:
    r"""E_data[E_theta(x)] - E_model[E_theta(x)]: its parameter gradient estimates that of the negative log-likelihood.

    For p_theta = exp(-E_theta) / Z_theta, -\nabla_theta log p_theta(x) = \nabla_theta E_theta(x) + \nabla_theta log Z_theta
    and \nabla_theta log Z_theta = -E_{p_theta}[\nabla_theta E_theta]: the MLE gradient is the data term minus the model
    term, with Z never computed (Hinton 2002). `x_model` should be samples of the model (Langevin chains,
    `ContrastiveDivergence`); they are detached. `regularization` alpha adds alpha (E(x_data)^2 + E(x_model)^2), which
    keeps energies near 0 (Du & Mordatch 2019). The loss value itself is not a likelihood.
    """
    check_callable("energy", energy)
    check_tensor("x_data", x_data, min_dim=2)
    check_tensor("x_model", x_model, min_dim=2)
    if x_model.shape[1:] != x_data.shape[1:]:
        raise ValueError(f"x_model must have x_data's sample shape {tuple(x_data.shape[1:])}, got {tuple(x_model.shape[1:])}")
    regularization = check_nonnegative("regularization", regularization)
    e_data = check_output("energy", energy(x_data), x_data.shape[:1])
    e_model = check_output("energy", energy(x_model.detach()), x_model.shape[:1])
    loss = e_data.mean() - e_model.mean()
    if regularization:
        loss = loss + regularization * (e_data.square().mean() + e_model.square().mean())
    return loss


def quadrature_nll(energy, x: torch.Tensor, bounds=(-8.0, 8.0), cells: int = 10) -> torch.Tensor:
    r"""Exact maximum likelihood for a 1-D or 2-D energy: -mean log p_theta(x), with log Z_theta by quadrature.

    -log p_theta(x) = E_theta(x) + log Z_theta, Z_theta = \int_B exp(-E_theta) over the box B = bounds^D, computed as a
    log-sum-exp over the Gauss-Legendre nodes of `cells`^D cells (8^D nodes each) *with* gradients: its parameter
    gradient is E_data[\nabla_theta E] - E_{p_theta}[\nabla_theta E] with the model term exact, which
    `contrastive_divergence` estimates with chains (Hinton 2002). Only possible where a grid is (D <= 2): the
    reference the sampling methods of lesson 08 are measured against. p_theta is normalised on B (zero outside).

    Args:
        energy: `(n, D) -> (n,)`. x: data `(n, D)`, every point inside B. bounds: `(lo, hi)`. cells: per axis.
    Returns:
        the scalar mean negative log-likelihood (nats per point). Introduced in lesson 08.
    """
    check_callable("energy", energy)
    check_tensor("x", x, min_dim=2)
    if x.ndim != 2 or x.shape[1] not in (1, 2):
        raise ValueError(f"x must have shape (n, 1) or (n, 2) (a grid in more dimensions is intractable), got {tuple(x.shape)}")
    lo, hi = check_bounds(bounds)
    check_int("cells", cells, minimum=1)
    if bool(((x < lo) | (x > hi)).any()):
        raise ValueError(f"x has points outside bounds ({lo}, {hi}), where the box-normalised p_theta is 0: widen bounds")
    nodes, weights = _quadrature_nodes(lo, hi, cells, x.shape[1])
    e_nodes = check_output("energy", energy(nodes.to(x)), nodes.shape[:1])
    log_z = torch.logsumexp(weights.log().to(e_nodes) - e_nodes, 0)
    return check_output("energy", energy(x), x.shape[:1]).mean() + log_z


#: where `ContrastiveDivergence`'s chains start: "data" (the batch itself) or a callable `(n, generator) -> (n, *dims)`
CD_STARTS = ("data",)


class ContrastiveDivergence:
    r"""A `fit` loss `(model, x, generator) -> loss` for an energy model: CD with SGLD chains of the model.

    Each call runs `n_steps` Langevin steps (`sampling.langevin`, step eps) on the current energy to get model samples,
    then returns `contrastive_divergence`. Where the chains start decides which method this is:

    - `init="data"`, not persistent: CD-k as Hinton (2002) defined it, every chain starts at a data point of the
      batch and takes k = `n_steps` steps (Hinton used Gibbs sweeps of an RBM; here they are Langevin steps).
    - `init` a callable, not persistent: short-run MCMC (Nijkamp et al. 2019), chains start afresh from `init`
      (e.g. uniform noise) every call: non-persistent, non-convergent.
    - `persistent=True`: persistent CD (PCD, Tieleman 2008): one set of chains, as many as the batch, continues
      from where the last call left it; a fraction `reinit` is restarted from `init` each call (the replay buffer
      of Du & Mordatch 2019). The first call starts every chain from `init`.

    Args:
        n_steps: Langevin steps per call. step_size: eps.
        init: `(n, generator) -> (n, *dims)` starting points, or `"data"` (start at the batch `x`).
        persistent, reinit, regularization: as above (`regularization` as in `contrastive_divergence`).
    Attributes:
        chains: the persistent chains after the last call (None before, and always when not persistent).
        last_samples: the model samples of the last call, detached (the chains the last gradient used).

    Introduced in lesson 08.
    """

    def __init__(
        self, n_steps: int, step_size: float, init, *, persistent: bool = False, reinit: float = 0.05, regularization: float = 0.0
    ):
        check_int("n_steps", n_steps, minimum=1)
        check_positive("step_size", step_size, allow_tensor=False)
        if isinstance(init, str):
            check_choice("init", init, CD_STARTS)
        else:
            check_callable("init", init)
        self.n_steps, self.step_size, self.init = n_steps, step_size, init
        self.persistent, self.reinit = persistent, check_probability("reinit", reinit)
        self.regularization = check_nonnegative("regularization", regularization)
        self.chains = None
        self.last_samples = None

    def _start(self, x: torch.Tensor, generator) -> torch.Tensor:
        if isinstance(self.init, str):  # "data": Hinton's CD-k
            return x.detach()
        return check_output("init", self.init(len(x), generator), x.shape).to(x.dtype)

    def __call__(self, model, x: torch.Tensor, generator=None) -> torch.Tensor:
        generator = as_generator(generator, x.device)
        start = self._start(x, generator)
        if self.persistent and self.chains is not None and len(self.chains) == len(x):
            keep = torch.rand(len(x), generator=generator, device=x.device) >= self.reinit
            start = torch.where(append_dims(keep, x.ndim), self.chains, start)
        x_model = langevin(score_from_energy(model), start, self.step_size, self.n_steps, generator=generator)
        self.last_samples = x_model.detach()
        if self.persistent:
            self.chains = self.last_samples
        return contrastive_divergence(model, x, x_model, regularization=self.regularization)
