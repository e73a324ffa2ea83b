"""Small score and energy networks, and an exponential moving average of weights.

All networks take `x` of shape `(n, *dims)` and flatten the non-batch dims, so the same
model class serves 2-D points and tiny images. Introduced in lesson 02.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ._checks import check_int, check_per_sample, check_positive
from .distributions import score_from_energy


class FourierFeatures(nn.Module):
    """Embed a per-sample scalar c `(n,)` as [sin(2 pi f_j c), cos(2 pi f_j c)] with fixed
    geometric frequencies f_j from `min_freq` to `max_freq` cycles per unit of c (Tancik et al. 2020).

    No randomness, so two models built alike are identical. The default band suits inputs
    spanning a few units (log sigma, or t in [0, 1]): a model trained on a handful of noise
    levels must interpolate between them, and features faster than ~1 cycle per unit of
    log sigma make it fail there (measured: relative Fisher error 1.9 instead of 0.03 at a
    sigma between two training levels with max_freq=4)."""

    def __init__(self, n_features: int = 16, min_freq: float = 1 / 16, max_freq: float = 1.0):
        super().__init__()
        check_int("n_features", n_features, minimum=1)
        freqs = torch.exp(torch.linspace(math.log(min_freq), math.log(max_freq), n_features))
        self.register_buffer("freqs", 2 * math.pi * freqs)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        angles = c[:, None] * self.freqs
        return torch.cat([angles.sin(), angles.cos()], dim=1)


def _mlp(n_in: int, n_out: int, hidden: int, n_layers: int) -> nn.Sequential:
    layers, width = [], n_in
    for _ in range(n_layers):
        layers += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class ScoreMLP(nn.Module):
    r"""s_\theta(x) or, with `n_fourier > 0`, s_\theta(x, c) for a per-sample scalar c.

    Args:
        dim: number of features per sample (prod of the non-batch dims).
        hidden: width of each hidden layer.
        n_layers: number of hidden layers (SiLU activations: smooth, so ISM/SSM's
            second derivatives exist).
        n_fourier: Fourier features of the conditioning scalar (0: unconditional).
        log_condition: embed log c instead of c (noise levels sigma span decades).
        divide_by_sigma: for noise-conditional models (c = sigma) return net(x, sigma) / sigma,
            so the network only learns an O(1) output (Song & Ermon 2020, Technique 3).

    `forward(x)` or `forward(x, c)` with `c` of shape `(n,)` returns a tensor of x's shape.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 128,
        n_layers: int = 3,
        n_fourier: int = 0,
        log_condition: bool = False,
        divide_by_sigma: bool = False,
    ):
        super().__init__()
        check_int("dim", dim, minimum=1)
        check_int("hidden", hidden, minimum=1)
        check_int("n_layers", n_layers, minimum=1)
        check_int("n_fourier", n_fourier, minimum=0)
        if (log_condition or divide_by_sigma) and not n_fourier:
            raise ValueError("log_condition and divide_by_sigma need a conditional model (n_fourier > 0)")
        self.dim = dim
        self.log_condition = log_condition
        self.divide_by_sigma = divide_by_sigma
        self.embed = FourierFeatures(n_fourier) if n_fourier else None
        self.net = _mlp(dim + 2 * n_fourier, dim, hidden, n_layers)

    @property
    def conditional(self) -> bool:
        return self.embed is not None

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = _flatten_features(x, self.dim, self.net[0].weight.dtype)
        if not self.conditional:
            if c is not None:
                raise TypeError("this ScoreMLP is unconditional: call it as model(x)")
            return self.net(h).reshape(x.shape).to(x.dtype)
        if c is None:
            raise TypeError("this ScoreMLP is conditional (n_fourier > 0): call it as model(x, c) with c of shape (n,)")
        c = check_per_sample("c", c, x.shape[0], h)
        if self.log_condition or self.divide_by_sigma:
            check_positive("c", c)
        out = self.net(torch.cat([h, self.embed(c.log() if self.log_condition else c)], dim=1))
        if self.divide_by_sigma:
            out = out / c[:, None]
        return out.reshape(x.shape).to(x.dtype)


class EnergyMLP(nn.Module):
    r"""A scalar energy E_\theta(x) `(n,)`; its score -\nabla_x E_\theta comes from autograd.

    `model(x)` is the energy, `model.score(x)` the score (works under `torch.no_grad()`,
    and keeps the graph to the parameters when gradients are enabled, so score-matching
    losses train it). Introduced in lesson 02.
    """

    def __init__(self, dim: int, hidden: int = 128, n_layers: int = 3):
        super().__init__()
        check_int("dim", dim, minimum=1)
        self.dim = dim
        self.net = _mlp(dim, 1, hidden, n_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(_flatten_features(x, self.dim, self.net[0].weight.dtype)).squeeze(1).to(x.dtype)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """-grad_x E(x), same shape as `x`."""
        return score_from_energy(self)(x)


def _flatten_features(x: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """`(n, dim)` features in the network's dtype. The dtype rule: floating input of another precision (float64
    from numpy, say) is cast to the network's and the output cast back to the input's, so a student's float64
    data just works and keeps its dtype; integer or boolean input is refused (it is almost always a mistake:
    labels, indices, an image not yet scaled to floats)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}: convert it with x.float()")
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] != dim:
        raise ValueError(f"x must have {dim} features per sample, got shape {tuple(x.shape)}")
    return flat.to(dtype)


class EMA:
    r"""Exponential moving average of a model's parameters, \bar\theta <- d \bar\theta + (1 - d) \theta.

    `ema.module` is an averaged copy usable wherever the model is (Song & Ermon 2020,
    Technique 5). Buffers are copied as they are.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for avg, p in zip(self.module.parameters(), model.parameters()):
            avg.lerp_(p.detach(), 1 - self.decay)
        for avg, b in zip(self.module.buffers(), model.buffers()):
            avg.copy_(b)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.module.load_state_dict(state["module"])
