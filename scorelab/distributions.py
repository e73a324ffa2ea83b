"""Gaussian mixtures with exact log-densities, scores and posterior means, and energies.

Every experiment in scorelab is checked against these closed forms: the score of a
mixture is known exactly, and so is the score of the mixture after adding Gaussian
noise (another mixture), which is what makes Tweedie's formula, denoising score
matching and the diffusion marginals testable. Introduced in lesson 01.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import torch

from ._checks import (
    as_generator,
    check_batch_size,
    check_bounds,
    check_callable,
    check_device,
    check_int,
    check_memory,
    check_nonnegative,
    check_output,
    check_positive,
    check_sde,
    check_tensor,
    distinct_values,
    shared_value,
)

LOG_2PI = math.log(2 * math.pi)
#: logits this far below a sample's largest are raised to it before exp (exp(-80) = 1.8e-35 is still a normal float32)
_LOGIT_FLOOR = 80.0
#: how many shared times a `marginal_score` keeps what depends on t alone for, before it starts again, and how many
#: numbers their coefficients may hold (32 MB in float64: an image-sized mixture keeps tens of times, not thousands)
_KNOWN_TIMES = 4096
_KNOWN_NUMBERS = 2**22


def _as_float_tensor(name: str, value, dtype, device) -> torch.Tensor:
    try:  # Python numbers go through numpy's float64, not torch's float32 default, so dtype=float64 keeps every digit
        t = torch.as_tensor(value if isinstance(value, torch.Tensor) else np.asarray(value), device=device)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be array-like numbers: {err}") from None
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    t = t.to(dtype)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _softmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """softmax over dim 1 of `(n, K)`, by hand: torch's kernel is 2-3x slower for the small K of these mixtures.
    Out of place, so autograd can differentiate a score built on it (the ODE likelihood does)."""
    e = (logits - logits.amax(1, keepdim=True)).exp()
    return e / e.sum(1, keepdim=True)


class GaussianMixture:
    r"""p(x) = \sum_k w_k N(x; \mu_k, \Sigma_k) on R^D, with exact score and log-density.

    Args:
        weights: `(K,)` positive, summing to 1.
        means: `(K, D)`.
        covs: full `(K, D, D)` symmetric positive definite, diagonal variances `(K, D)`,
            or isotropic variances `(K,)`.
        labels: optional `(K,)` integer class of each component, every class 0..C-1 used at least once; a
            class may own several components. Default: each component its own class. Every transformation
            (`affine`, `marginal`, `condition`, `posterior`, `to`) keeps them, so the exact noisy classifier
            p_t(y | x) exists at every t (`marginal_class_log_prob`, lesson 07).
        dtype, device: default to those of `means` when it is a floating tensor,
            else `torch.get_default_dtype()` on the CPU.

    All methods take `x` of shape `(n, D)` (or `(n, *dims)` with `prod(dims) == D`).
    Introduced in lesson 01 (`lessons/01_score_functions.ipynb`).
    """

    def __init__(self, weights, means, covs, *, labels=None, dtype=None, device=None):
        if dtype is None:
            dtype = means.dtype if isinstance(means, torch.Tensor) and means.is_floating_point() else torch.get_default_dtype()
        if device is None:
            device = means.device if isinstance(means, torch.Tensor) else "cpu"
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64 (scores need the range), got {dtype}")
        device = check_device("device", device)
        weights = _as_float_tensor("weights", weights, dtype, device)
        means = _as_float_tensor("means", means, dtype, device)
        covs = _as_float_tensor("covs", covs, dtype, device)
        if means.ndim != 2 or 0 in means.shape:
            raise ValueError(f"means must have shape (K, D) with K, D >= 1, got {tuple(means.shape)}")
        K, D = means.shape
        if weights.shape != (K,):
            raise ValueError(f"weights must have shape (K,) = ({K},) to match means, got {tuple(weights.shape)}")
        if not (weights > 0).all():
            raise ValueError(f"weights must be positive, got {weights.tolist()}")
        if abs(weights.sum().item() - 1.0) > 1e-5:
            raise ValueError(f"weights must sum to 1, got sum {weights.sum().item():.6g}")
        covs = _full_covariances(covs, K, D)
        try:
            chol = torch.linalg.cholesky(covs)
        except RuntimeError:
            chol = None
        if chol is None or not torch.isfinite(chol).all():
            raise ValueError("covs must be symmetric positive definite (Cholesky failed)")
        self.labels = _check_labels(labels, K, device)
        self.weights = weights / weights.sum()
        self.means = means
        self.covs = covs
        self._chol = chol
        self._precisions = torch.cholesky_inverse(chol)
        # log w_k - 1/2 log det(2 pi Sigma_k), the x-independent part of each component's log-density
        self._log_norm = self.weights.log() - 0.5 * (D * LOG_2PI + 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1))
        # Sigma_k = U_k diag(lambda_k) U_k^T: then scale^2 Sigma_k + std^2 I = U_k diag(scale^2 lambda_k + std^2) U_k^T
        # for any per-sample (scale, std), so noised scores need no per-sample inverse
        self._eigvals, self._eigvecs = torch.linalg.eigh(covs)
        # diagonal (or isotropic) covariances: shared-noise scores need no D x D matrices at all
        variances = covs.diagonal(dim1=-2, dim2=-1)
        self._diagonal_variances = variances if bool((covs == torch.diag_embed(variances)).all()) else None
        isotropic = self._diagonal_variances is not None and bool((variances == variances[:, :1]).all())
        self._isotropic_variances = variances[:, 0] if isotropic else None
        # every component the same covariance: then -x^T Sigma^-1 x / 2 is common to all logits and cancels
        self._shared_covariance = bool((covs == covs[0]).all())
        self._separable_cache = None  # the last (scale, std) and the coefficients of `_separable_score` for it
        if self._diagonal_variances is not None:  # what those coefficients share for every (scale, std)
            squares = means.square()
            self._separable_parts = (
                self._isotropic_variances[:, None] if isotropic else self._diagonal_variances,  # (K, r)
                squares.sum(1, keepdim=True) if isotropic else squares,
                torch.ones(1, K, dtype=self.dtype, device=device),
                self.weights.log()[:, None],
            )
        # class membership (K, C), or None when every component is its own class (responsibilities are the answer)
        own = self.labels[:, None] == torch.arange(self.n_classes, device=device)
        self._class_members = None if bool(own.equal(torch.eye(K, dtype=torch.bool, device=device))) else own

    # -- basic properties -------------------------------------------------
    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def n_classes(self) -> int:
        return int(self.labels.max()) + 1

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    @property
    def device(self) -> torch.device:
        return self.means.device

    def to(self, dtype=None, device=None) -> GaussianMixture:
        """The same mixture in another dtype and/or on another device."""
        return GaussianMixture(
            self.weights, self.means, self.covs, labels=self.labels, dtype=dtype or self.dtype, device=device or self.device
        )

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.n_components}, D={self.dim}, classes={self.n_classes}, dtype={self.dtype}, device={self.device})"

    # -- exact quantities ---------------------------------------------------
    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x, min_dim=2)
        flat = x if x.ndim == 2 else x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.dim:
            raise ValueError(f"x must have {self.dim} features per sample, got shape {tuple(x.shape)}")
        return flat if flat.dtype == self.dtype else flat.to(self.dtype)

    def _component_terms(self, x: torch.Tensor):
        """Per-component log w_k N(x; mu_k, Sigma_k) `(n, K)` and Sigma_k^{-1}(x - mu_k) `(n, K, D)`."""
        diff = x[:, None, :] - self.means  # (n, K, D)
        prec_diff = torch.einsum("kde,nke->nkd", self._precisions, diff)
        log_comp = self._log_norm - 0.5 * (diff * prec_diff).sum(-1)
        return log_comp, prec_diff

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x), shape `(n,)`, by a stable log-sum-exp over components."""
        log_comp, _ = self._component_terms(self._flatten(x))
        return torch.logsumexp(log_comp, dim=1)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior component probabilities p(k | x), shape `(n, K)`."""
        log_comp, _ = self._component_terms(self._flatten(x))
        return torch.softmax(log_comp, dim=1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        r"""Exact score \nabla_x log p(x) = -\sum_k p(k|x) \Sigma_k^{-1}(x - \mu_k), same shape as `x`."""
        return self._score_of_affine(x, 1.0, 0.0)

    def noisy_score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        r"""Exact score of p_sigma = p * N(0, sigma^2 I) at x, with `sigma` a float or a `(n,)` tensor (one level per sample).

        Equals `self.convolve(sigma).score(x)` but fused: one eigendecomposition per component
        at construction serves every sigma. When all samples share one sigma (every step of
        annealed Langevin) the work is two small matrix products and a softmax; `bench/sampling.py`
        measures it (lesson 04).
        """
        # a level expanded to the batch (the samplers') is checked and read as one value, without a scan
        check_batch_size("sigma", sigma, len(x))
        return self._score_of_affine(x, 1.0, check_positive("sigma", sigma))

    def marginal(self, sde, t: float) -> GaussianMixture:
        """The exact law of x_t when x_0 ~ self and x follows the linear `sde`: a mixture (lesson 05)."""
        check_sde("sde", sde)
        mean_scale, std = sde.marginal_coeffs(sde.check_time(t))
        if std.numel() != 1:
            raise ValueError("marginal(sde, t) takes one time t (a float); use marginal_score for a batch of times")
        return self.affine(mean_scale.item(), std.item())

    def marginal_score(self, sde):
        r"""The exact score \nabla_x log p_t(x) of the marginals of `sde` started at this mixture, as `score(x, t)`.

        `t` is a float or a `(n,)` tensor of times in [0, T]. The ground truth for every SDE experiment (lesson 05).

        What depends on t alone (m(t), sigma(t) and, for diagonal or isotropic components, the coefficients of the
        logits and the score) is kept for each time shared by a whole batch, so a time asked for again costs only
        the work on x. `score.precompute(times)` works it out for many times in one vectorised call: the samplers
        that know their time grid (`pc_sample`, `ode_sample` with a fixed-step method) call it once, and each step
        then skips about twenty operations on tiny tensors (`bench/widgets.py` times the explorer that runs them).
        """
        check_sde("sde", sde)
        known = {}  # a time shared by a batch (as that batch's float) -> (m, sigma, separable coefficients or None)
        numbers = [0]  # how many numbers the coefficients in `known` hold

        def precompute(times: torch.Tensor) -> None:
            """Keep what depends on t alone for each of `times`, a 1-d tensor of the times (in the dtype) that the
            calls will pass; checked to lie in [0, T] here, once."""
            if not isinstance(times, torch.Tensor) or times.ndim != 1:
                raise TypeError(f"times must be a 1-d tensor of times, got {type(times).__name__}")
            scales, stds = sde.marginal_coeffs(times)
            tables, each = None, 0  # each: the numbers one time's coefficients hold
            if self._diagonal_variances is not None:
                each = self.n_components * 2 * (self.dim + self._separable_parts[0].shape[1] + 1)
                if len(times) * each <= _KNOWN_NUMBERS:  # else each call works them out (`_separable_coefficients`)
                    tables = self._separable_table(*(v.to(self.dtype)[:, None, None] for v in (scales, stds)))
            more = len(times) * each if tables is not None else 0
            if len(known) + len(times) > _KNOWN_TIMES or numbers[0] + more > _KNOWN_NUMBERS:  # start again: an
                known.clear()  # adaptive solver's times rarely come again
                numbers[0] = 0
            numbers[0] += more
            rows = zip(*(table.unbind(0) for table in tables)) if tables is not None else itertools.repeat(None)
            for time, scale, std, row in zip(times.tolist(), scales.tolist(), stds.tolist(), rows):
                known[time] = scale, std, row

        def score(x: torch.Tensor, t) -> torch.Tensor:
            # marginal_coeffs checks t's range (SDE._time); a time expanded to the batch (the samplers') is read as
            # one value, and what depends on it alone is worked out once (`precompute`)
            check_batch_size("t", t, len(x))
            distinct = distinct_values(t) if isinstance(t, torch.Tensor) else t
            if not isinstance(distinct, torch.Tensor) or distinct.numel() != 1:
                return self._score_of_affine(x, *sde.marginal_coeffs(distinct))
            time = distinct.item()
            if time not in known:  # NaN equals nothing, not even itself: it is always checked, and refused
                precompute(distinct.reshape(1))
            return self._score_of_affine(x, *known[time])

        score.precompute = precompute
        return score

    def _score_of_affine(self, x: torch.Tensor, scale, std, coefficients=None) -> torch.Tensor:
        """Score of scale * X + std * Z at x, for float or per-sample `(n,)` scale and std; shared values take the fast
        path, with `_separable_score`'s `coefficients` for them when the caller kept them (`marginal_score`)."""
        flat = self._flatten(x)
        scale_value, std_value = shared_value(scale), shared_value(std)
        if scale_value is not None and std_value is not None:
            score = self._shared_affine_score(flat, scale_value, std_value, coefficients)
        else:
            score = self._affine_score(flat, self._per_sample(scale, len(flat)), self._per_sample(std, len(flat)))
        if score.shape != x.shape:
            score = score.reshape(x.shape)
        return score if score.dtype == x.dtype else score.to(x.dtype)

    def _per_sample(self, v, n: int) -> torch.Tensor:
        """A float, a one-element tensor or `n` values as an `(n,)` tensor of this mixture's dtype and device."""
        return torch.as_tensor(v, dtype=self.dtype, device=self.device).reshape(-1).expand(n)

    def _affine_components(self, x: torch.Tensor, scale: torch.Tensor, std: torch.Tensor):
        """For the law of scale * X + std * Z with per-sample `scale`, `std` `(n,)`: each component's log w_k N(x; .)
        without the 2 pi term `(n, K)`, and U_k^T (x - scale mu_k) / lambda'_k `(n, K, D)` (eigen-coordinates)."""
        variances = scale[:, None, None] ** 2 * self._eigvals + std[:, None, None] ** 2  # (n, K, D)
        coords = torch.einsum("kdj,nkd->nkj", self._eigvecs, x[:, None, :] - scale[:, None, None] * self.means)  # U^T (x - m)
        scaled = coords / variances
        log_comp = self.weights.log() - 0.5 * (variances.log().sum(-1) + (coords * scaled).sum(-1))
        return log_comp, scaled

    def _affine_score(self, x: torch.Tensor, scale: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """Score of the law of scale * X + std * Z at x `(n, D)`, with per-sample `scale`, `std` of shape `(n,)`."""
        log_comp, scaled = self._affine_components(x, scale, std)
        resp = _softmax_rows(log_comp)
        return -torch.einsum("kdj,nkj->nd", self._eigvecs, resp[..., None] * scaled)

    def _shared_affine_score(self, x: torch.Tensor, scale: float, std: float, coefficients=None) -> torch.Tensor:
        """`_affine_score` for one (scale, std) shared by all samples, as matrix products on `(n, K*D)`.

        With R_k = U_k diag(lambda_k')^{-1/2} (lambda' = scale^2 lambda + std^2), R_k R_k^T is the
        precision, y_k = R_k^T (x - scale mu_k) and the score is -sum_k p(k|x) R_k y_k. Blocks sit
        side by side, so the sums over each block's D entries are products with a 0/1 selector.
        """
        if self._diagonal_variances is not None:  # isotropic ones too
            if coefficients is None:
                coefficients = self._separable_coefficients(scale, std)
            return _separable_score(x, *coefficients, drop_squares=self._shared_covariance)
        D, K = self.dim, self.n_components
        variances = scale**2 * self._eigvals + std**2  # (K, D)
        R = self._eigvecs * variances.rsqrt()[:, None, :]  # (K, D, D)
        R_cat = R.permute(1, 0, 2).reshape(D, K * D)  # [R_1 ... R_K]
        offset = torch.einsum("kdj,kd->kj", R, scale * self.means).reshape(K * D)
        y = torch.addmm(-offset, x, R_cat)  # (n, K*D): block k is R_k^T (x - scale mu_k)
        select = torch.eye(K, dtype=x.dtype, device=x.device).repeat_interleave(D, dim=0)  # (K*D, K)
        log_comp = (self.weights.log() - 0.5 * variances.log().sum(-1)) - 0.5 * (y.square() @ select)
        resp = _softmax_rows(log_comp)
        return -(((resp @ select.T) * y) @ R_cat.T)

    def _separable_coefficients(self, scale: float, std: float):
        """`_separable_table` for one (scale, std), kept for the last one asked for: annealed Langevin asks for the
        same noise level for many steps in a row."""
        key = (float(scale), float(std))
        if self._separable_cache is None or self._separable_cache[0] != key:
            self._separable_cache = key, self._separable_table(*key)
        return self._separable_cache[1]

    def _separable_table(self, scale, std):
        """The coefficients `_separable_score` takes for the law of scale * X + std * Z when every component has a
        diagonal covariance, or an isotropic one (then one variance per component, r = 1, instead of r = D):
        1/v `(K, r)`, m / v `(K, D)` (m = scale mu), [m / v; 1 / v; 1]^T `(D + r + 1, K)` and the logits' constant
        log w_k - 1/2 log det(diag v_k) - 1/2 m_k^T diag(v_k)^-1 m_k `(K, 1)`. With Python floats `scale`, `std`
        that is one law's; with `(T, 1, 1)` tensors, T laws', each coefficient with a leading dim T, in the same dozen
        operations (`marginal_score` works out a sampler's whole time grid at once). Built from parts kept since
        construction: the variances, the squared means, a row of ones, the log-weights."""
        own, mean_squares, ones, log_weights = self._separable_parts
        a2 = scale * scale
        inv_v = (own * a2).add_(std * std).reciprocal_()  # (..., K, r)
        weighted = torch.mul(self.means, inv_v).mul_(scale)  # m / v with m = scale mu
        sums = torch.cat([weighted.mT, inv_v.mT, ones.expand(*inv_v.shape[:-2], 1, -1)], dim=-2)
        # log w - 1/2 log det diag(v) - 1/2 m^T diag(v)^-1 m, with log det diag(v) = (D / r) sum_r log v
        bias = torch.add(log_weights, inv_v.log().sum(-1, keepdim=True), alpha=0.5 * self.dim / own.shape[1])
        bias.sub_((mean_squares * inv_v).sum(-1, keepdim=True).mul_(a2), alpha=0.5)
        return inv_v, weighted, sums, bias

    def condition(self, mask, values) -> GaussianMixture:
        r"""The exact conditional law of the unknown coordinates given x[mask] = values: a mixture again.

        Component k: weight proportional to w_k N(values; mu_k,o, Sigma_k,oo); mean
        mu_k,u + Sigma_k,uo Sigma_k,oo^{-1}(values - mu_k,o); covariance Sigma_k,uu - Sigma_k,uo Sigma_k,oo^{-1} Sigma_k,ou.
        `mask` is a `(D,)` bool tensor (True = observed), `values` the observed coordinates. Used to
        check inpainting (lesson 04).
        """
        mask = torch.as_tensor(mask, device=self.device)
        if mask.dtype != torch.bool or mask.shape != (self.dim,):
            raise ValueError(f"mask must be a bool tensor of shape ({self.dim},), got {mask.dtype} {tuple(mask.shape)}")
        if mask.all() or not mask.any():
            raise ValueError("mask must observe some coordinates and leave some unknown")
        values = _as_float_tensor("values", values, self.dtype, self.device).reshape(-1)
        if values.shape != (int(mask.sum()),):
            raise ValueError(f"values must have one entry per observed coordinate ({int(mask.sum())}), got {tuple(values.shape)}")
        o, u = mask, ~mask
        cov_oo = self.covs[:, o][:, :, o]
        cov_uo = self.covs[:, u][:, :, o]
        observed = GaussianMixture(self.weights, self.means[:, o], cov_oo)
        log_w = torch.log_softmax(observed._component_terms(values[None])[0][0], dim=0)
        gain = torch.linalg.solve(cov_oo, cov_uo.transpose(1, 2)).transpose(1, 2)  # Sigma_uo Sigma_oo^{-1}
        means = self.means[:, u] + (gain @ (values - self.means[:, o])[..., None]).squeeze(-1)
        covs = self.covs[:, u][:, :, u] - gain @ cov_uo.transpose(1, 2)
        return GaussianMixture(log_w.exp(), means, 0.5 * (covs + covs.transpose(1, 2)), labels=self.labels)

    def sample(self, n: int, generator=None) -> torch.Tensor:
        """`n` independent samples, shape `(n, D)`; `generator` is a `torch.Generator` or an int seed."""
        return self._draw(n, generator)[0]

    def sample_labelled(self, n: int, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` samples and their classes: `(x (n, D), y (n,) int64)`; x is what `sample` draws from the same seed."""
        x, k = self._draw(n, generator)
        return x, self.labels[k]

    def _draw(self, n: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
        check_int("n", n, minimum=1)
        check_memory("n", n, 3 * self.dim * self.means.element_size())
        generator = as_generator(generator, self.device)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, 1, generator=generator, dtype=self.dtype, device=self.device)
        return self.means[k] + (self._chol[k] @ z).squeeze(-1), k

    # -- classes: Bayes' rule for labels (lesson 07) ----------------------
    def _check_class(self, y) -> int:
        if isinstance(y, bool) or not isinstance(y, (int, np.integer)) or not 0 <= y < self.n_classes:
            raise ValueError(f"y must be a class label, an int in 0..{self.n_classes - 1}, got {y!r}")
        return int(y)

    def class_mixture(self, y: int) -> GaussianMixture:
        """p(x | y): the components of class `y`, their weights renormalised; a mixture again, of one class (label 0)."""
        own = self.labels == self._check_class(y)
        weights = self.weights[own] / self.weights[own].sum()
        return GaussianMixture(weights, self.means[own], self.covs[own], labels=torch.zeros_like(self.labels[own]))

    def class_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(y | x) for every class, shape `(n, C)`: the responsibilities summed over each class's components."""
        log_comp, _ = self._component_terms(self._flatten(x))
        return self._class_log_softmax(log_comp)

    def _class_log_softmax(self, log_comp: torch.Tensor) -> torch.Tensor:
        log_resp = torch.log_softmax(log_comp, dim=1)
        if self._class_members is None:
            return log_resp
        return torch.logsumexp(log_resp[:, :, None].masked_fill(~self._class_members, -math.inf), dim=1)

    def marginal_class_log_prob(self, sde):
        r"""The exact noisy classifier log p_t(y | x) of the marginals of `sde`, as `classifier(x, t) -> (n, C)`.

        x_t is a mixture with the same weights and labels, so p_t(y | x) = \sum_{k in y} p_t(k | x): the Bayes
        classifier of noisy data, differentiable in x (its gradient is what classifier guidance adds, lesson 07).
        """
        check_sde("sde", sde)

        def classifier(x: torch.Tensor, t) -> torch.Tensor:
            check_batch_size("t", t, len(x))
            flat = self._flatten(x)
            mean_scale, std = sde.marginal_coeffs(t)
            log_comp, _ = self._affine_components(flat, self._per_sample(mean_scale, len(flat)), self._per_sample(std, len(flat)))
            return self._class_log_softmax(log_comp)

        return classifier

    def posterior(self, A, y, noise_std: float) -> GaussianMixture:
        r"""The exact posterior p(x | y) of this mixture prior under y = A x + n, n ~ N(0, noise_std^2 I_m).

        Component k becomes N(mu_k + G_k (y - A mu_k), Sigma_k - G_k A Sigma_k) with S_k = A Sigma_k A^T +
        noise_std^2 I and gain G_k = Sigma_k A^T S_k^{-1}; its weight is proportional to w_k N(y; A mu_k, S_k).
        A mixture again, with the labels kept: the answer a linear inverse-problem sampler should reproduce (lesson 07).

        Args:
            A: `(m, D)` measurement matrix. y: `(m,)` measurement. noise_std: > 0.
        """
        noise_std = check_positive("noise_std", noise_std, allow_tensor=False)
        A, y = check_measurement(A, y, self.dim, self.dtype, self.device)
        cov_a = self.covs @ A.T  # Sigma_k A^T, (K, D, m)
        S = A @ cov_a + noise_std**2 * torch.eye(A.shape[0], dtype=self.dtype, device=self.device)  # (K, m, m)
        gain = torch.linalg.solve(S, cov_a.transpose(1, 2)).transpose(1, 2)  # Sigma_k A^T S_k^{-1}
        residual = y - self.means @ A.T  # (K, m)
        evidence = GaussianMixture(self.weights, self.means @ A.T, S)
        log_w = torch.log_softmax(evidence._component_terms(y[None])[0][0], dim=0)
        means = self.means + (gain @ residual[..., None]).squeeze(-1)
        covs = self.covs - gain @ cov_a.transpose(1, 2)
        return GaussianMixture(log_w.exp(), means, 0.5 * (covs + covs.transpose(1, 2)), labels=self.labels)

    def tilted_log_prob(self, y: int, gamma: float, bounds=(-8.0, 8.0), cells: int = 100):
        r"""The normalised tilted density p_gamma(x | y) = p(x) p(y | x)^gamma / Z_gamma, as `log_prob(x) -> (n,)`.

        Z_gamma = \int p(x) p(y | x)^gamma dx has no closed form for gamma not in {0, 1}; here it is computed by
        Gauss-Legendre quadrature over bounds^D (D = 1 or 2; `log_partition`). gamma = 1 gives p(x | y) and
        Z = p(y); gamma = 0 gives p. What classifier guidance with scale gamma is often said to sample (lesson 07).
        The returned function carries `log_Z`.
        """
        y = self._check_class(y)
        gamma = check_nonnegative("gamma", gamma)
        if self.dim > 2:
            raise ValueError(f"tilted_log_prob integrates on a grid: the mixture must have D = 1 or 2, got D = {self.dim}")

        def unnormalised(x: torch.Tensor) -> torch.Tensor:
            return self.log_prob(x) + gamma * self.class_log_prob(x)[:, y]

        log_Z = log_partition(lambda x: -unnormalised(x), self.dim, bounds, cells)

        def log_prob(x: torch.Tensor) -> torch.Tensor:
            return unnormalised(x) - log_Z

        log_prob.log_Z = log_Z
        return log_prob

    # -- closed-form transformations -------------------------------------
    def affine(self, scale, noise_std) -> GaussianMixture:
        """The law of `scale * X + noise_std * Z` with X ~ self, Z ~ N(0, I) independent: a mixture again."""
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale == 0:
            raise ValueError(f"scale must be a finite non-zero number, got {scale!r}")
        noise_std = check_nonnegative("noise_std", noise_std)
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        return GaussianMixture(self.weights, scale * self.means, scale**2 * self.covs + noise_std**2 * eye, labels=self.labels)

    def convolve(self, sigma) -> GaussianMixture:
        """p * N(0, sigma^2 I): the density of X + sigma Z. Used by DSM (lesson 02) and Tweedie (lesson 01)."""
        sigma = check_positive("sigma", sigma, allow_tensor=False)
        return self.affine(1.0, sigma)

    def posterior_mean(self, y: torch.Tensor, noise_std) -> torch.Tensor:
        r"""E[X | X + noise_std Z = y] by Bayes' rule, without any score.

        Each component's posterior is Gaussian with mean
        \mu_k + \Sigma_k(\Sigma_k + \sigma^2 I)^{-1}(y - \mu_k), weighted by the responsibilities
        of the noisy mixture. Tweedie's formula y + \sigma^2 \nabla log p_\sigma(y) must agree
        (lesson 01).
        """
        noise_std = check_positive("noise_std", noise_std, allow_tensor=False)
        noisy = self.convolve(noise_std)
        flat = noisy._flatten(y)
        log_comp, prec_diff = noisy._component_terms(flat)
        resp = torch.softmax(log_comp, dim=1)
        comp_means = self.means + torch.einsum("kde,nke->nkd", self.covs, prec_diff)
        return (resp[..., None] * comp_means).sum(1).reshape(y.shape).to(y.dtype)


def _separable_score(x, inv_variances, weighted_means, sums, bias, drop_squares: bool) -> torch.Tensor:
    """The score at x `(n, D)` of a mixture of components N(m_k, diag(v_k)), from the coefficients that
    `GaussianMixture._separable_coefficients` makes (`inv_variances` `(K, r)`: r = D per-coordinate variances, or
    r = 1 for isotropic components): matrix products for the logits, an exp, and one more product.

    The logits log w_k - 1/2 log det diag(v_k) - 1/2 sum_d (x_d - m_kd)^2 / v_kd are the constant `bias` plus
    (m_k / v_k) . x minus 1/2 (1 / v_k) . x^2 (x^2 coordinatewise, or |x|^2 when r = 1); with one covariance for
    all components the last term is common to every k and the softmax drops it (`drop_squares`). With e_k the
    exponentiated logits (unnormalised responsibilities), coordinate d of the score is
    sum_k p(k|x) (m_kd - x_d) / v_kd = (sum_k e_k m_kd / v_kd - x_d sum_k e_k / v_kd) / sum_k e_k, and the three
    sums are one product of [m / v; 1 / v; 1]^T with e. Everything is laid out `(K, n)` and `(D, n)`: the reductions
    over the few components then run along contiguous rows of n, several times faster on a CPU than over the short
    last dim of `(n, K)` (torch's softmax over 8 columns costs 10 ns an entry). The largest logit is subtracted
    detached: the score does not depend on that shift, and autograd through it stays exact. Logits more than
    `_LOGIT_FLOOR` below the largest are raised to it: exp then never underflows, which costs a CPU ten times a
    normal exp, and such a component weighs under 2e-35 relative, below float64's resolution. `bench/sampling.py`
    measures the chain this makes.
    """
    xT = x.T
    logits = torch.addmm(bias, weighted_means, xT)  # (K, n)
    if not drop_squares:
        squares = x * x if inv_variances.shape[1] > 1 else (x * x).sum(1, keepdim=True)
        logits = torch.addmm(logits, inv_variances, squares.T, alpha=-0.5)
    e = logits.sub_((logits.detach() if logits.requires_grad else logits).amax(0)).clamp_min_(-_LOGIT_FLOOR).exp_()
    weighted_sum, inv_variance_sum, total = (sums @ e).split([x.shape[1], inv_variances.shape[1], 1])
    return torch.addcmul(weighted_sum, xT, inv_variance_sum, value=-1).div_(total).T


def _full_covariances(covs: torch.Tensor, K: int, D: int) -> torch.Tensor:
    """Turn `(K,)` isotropic, `(K, D)` diagonal or `(K, D, D)` full covariances into `(K, D, D)`."""
    eye = torch.eye(D, dtype=covs.dtype, device=covs.device)
    if covs.shape == (K,):
        if not (covs > 0).all():
            raise ValueError(f"covs (isotropic variances) must be positive, got {covs.tolist()}")
        return covs[:, None, None] * eye
    if covs.shape == (K, D):
        if not (covs > 0).all():
            raise ValueError("covs (diagonal variances) must be positive")
        return torch.diag_embed(covs)
    if covs.shape == (K, D, D):
        if not torch.allclose(covs, covs.transpose(-1, -2), atol=1e-6, rtol=1e-6):
            raise ValueError("covs must be symmetric")
        return 0.5 * (covs + covs.transpose(-1, -2))
    raise ValueError(f"covs must have shape (K,), (K, D) or (K, D, D) = ({K},), ({K}, {D}) or ({K}, {D}, {D}), got {tuple(covs.shape)}")


def check_measurement(A, y, dim: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear measurement y = A x (+ noise) of x in R^dim: `A` `(m, dim)` and `y` `(m,)` as tensors of `dtype`."""
    A = _as_float_tensor("A", A, dtype, device)
    if A.ndim != 2 or A.shape[1] != dim or A.shape[0] < 1:
        raise ValueError(f"A must have shape (m, D) = (m, {dim}), got {tuple(A.shape)}")
    y = _as_float_tensor("y", y, dtype, device).reshape(-1)
    if y.shape != (A.shape[0],):
        raise ValueError(f"y must hold one value per row of A ({A.shape[0]},), got {tuple(y.shape)}")
    return A, y


def _check_labels(labels, K: int, device) -> torch.Tensor:
    """`(K,)` int64 class of each component; default one class per component; every class 0..C-1 used."""
    if labels is None:
        return torch.arange(K, device=device)
    t = torch.as_tensor(labels if isinstance(labels, torch.Tensor) else np.asarray(labels), device=device)
    if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"labels must be integers, one class per component, got dtype {t.dtype}")
    if t.shape != (K,):
        raise ValueError(f"labels must have shape (K,) = ({K},), one class per component, got {tuple(t.shape)}")
    t = t.long()
    if t.min() < 0 or set(t.tolist()) != set(range(int(t.max()) + 1)):
        raise ValueError(f"labels must use every class 0..C-1 (and nothing else), got {t.tolist()}")
    return t


def _quadrature_nodes(lo: float, hi: float, cells: int, D: int, nodes: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor-product Gauss-Legendre rule on cells^D equal cells of [lo, hi]^D, `nodes` per cell and axis: points
    `(M, D)` and weights `(M,)` in float64, ordered so that a reshape to `(cells, nodes) * D` groups them by cell."""
    u, w = np.polynomial.legendre.leggauss(nodes)
    width = (hi - lo) / cells
    centres = lo + width * (np.arange(cells) + 0.5)
    pts_1d = torch.as_tensor((centres[:, None] + 0.5 * width * u).ravel())  # (cells * nodes,)
    w_1d = torch.as_tensor(np.tile(0.5 * width * w, cells))
    points = torch.cartesian_prod(*[pts_1d] * D).reshape(-1, D)
    weights = torch.cartesian_prod(*[w_1d] * D).reshape(-1, D).prod(1)
    return points, weights


def log_partition(energy: Callable[[torch.Tensor], torch.Tensor], dim: int = 2, bounds=(-8.0, 8.0), cells: int = 100) -> float:
    r"""log Z = log \int exp(-E(x)) dx over bounds^dim (dim = 1 or 2), by Gauss-Legendre quadrature, stably.

    In two dimensions a grid makes the 'intractable' normaliser of an energy-based model a sum, so a learned
    energy gets an exact normalised log-likelihood and TV against the truth (lesson 08). `cells`^dim cells of 8^dim
    nodes; `energy` maps `(n, dim)` to `(n,)` and is evaluated in chunks, without gradients, in its own dtype
    (float32 inputs for a float32 network). Mass outside the box is ignored: choose bounds that hold the density.
    """
    check_callable("energy", energy)
    if dim not in (1, 2):
        raise ValueError(f"dim must be 1 or 2 (a grid in higher dimensions is the intractable sum), got {dim!r}")
    lo, hi = check_bounds(bounds)
    check_int("cells", cells, minimum=1)
    points, weights = _quadrature_nodes(lo, hi, cells, dim)
    dtype = next((p.dtype for p in getattr(energy, "parameters", lambda: [])()), torch.float64)
    terms = []
    with torch.no_grad():
        for chunk, w in zip(points.split(65_536), weights.split(65_536)):
            e = check_output("energy", energy(chunk.to(dtype)), chunk.shape[:1]).double()
            terms.append(w.log() - e)
    log_z = torch.logsumexp(torch.cat(terms), 0).item()
    if not math.isfinite(log_z):
        raise ValueError(f"log Z is not finite ({log_z}): the energy is NaN, or -inf somewhere in the box")
    return log_z


def score_from_energy(energy: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    r"""The score -\nabla_x E(x) of the density p(x) \propto exp(-E(x)), by autograd.

    The normalising constant never appears: adding a constant to E (rescaling p) leaves
    the score unchanged (lesson 01). `energy(x)` must return `(n,)`. The returned function
    works under `torch.no_grad()` too, and keeps the graph when gradients are enabled so a
    loss on the score can be backpropagated to the energy's parameters (lesson 08).
    """
    check_callable("energy", energy)

    def score(x: torch.Tensor) -> torch.Tensor:
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            x_in = x if x.requires_grad else x.detach().requires_grad_(True)
            e = energy(x_in)
            if e.shape != x.shape[:1]:
                raise ValueError(f"energy must return shape (n,) = ({x.shape[0]},), got {tuple(e.shape)}")
            (grad,) = torch.autograd.grad(e.sum(), x_in, create_graph=keep_graph)
        return -grad if keep_graph else -grad.detach()

    return score


def banana_energy(x: torch.Tensor, curvature: float = 0.5, scale: float = 1.0) -> torch.Tensor:
    r"""An unnormalised 2-D 'banana' energy E(x) = x_1^2 / (2 s^2) + (x_2 - b x_1^2)^2 / 2.

    Its normaliser is never needed for the score (lesson 01). Shape `(n, 2)` -> `(n,)`.
    """
    check_tensor("x", x, min_dim=2)
    if x.shape[1:] != (2,):
        raise ValueError(f"x must have shape (n, 2), got {tuple(x.shape)}")
    return 0.5 * (x[:, 0] / scale) ** 2 + 0.5 * (x[:, 1] - curvature * x[:, 0] ** 2) ** 2
