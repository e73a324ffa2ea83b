"""Small score and energy networks, and an exponential moving average of weights.

All networks take `x` of shape `(n, *dims)` and flatten the non-batch dims, so the same
model class serves 2-D points and tiny images. Introduced in lesson 02.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from ._checks import append_dims, check_int, check_labels, check_per_sample, check_positive
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
        check_positive("min_freq", min_freq, allow_tensor=False)
        check_positive("max_freq", max_freq, allow_tensor=False)
        if max_freq < min_freq:
            raise ValueError(f"max_freq must be >= min_freq, got {max_freq} < {min_freq}")
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
        n_classes: with C > 0 the model also takes a class label y `(n,)` in 0..C-1, or -1
            (`guidance.NULL_LABEL`) for "no label": one network learns s(x, c, y) and s(x, c), as
            classifier-free guidance trains it with label dropout (Ho & Salimans 2022; lesson 07).

    `forward(x)`, `forward(x, c)` with `c` of shape `(n,)`, or `forward(x, c, y)` returns a tensor of x's shape.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 128,
        n_layers: int = 3,
        n_fourier: int = 0,
        log_condition: bool = False,
        divide_by_sigma: bool = False,
        n_classes: int = 0,
    ):
        super().__init__()
        check_int("dim", dim, minimum=1)
        check_int("hidden", hidden, minimum=1)
        check_int("n_layers", n_layers, minimum=1)
        check_int("n_fourier", n_fourier, minimum=0)
        check_int("n_classes", n_classes, minimum=0)
        if (log_condition or divide_by_sigma or n_classes) and not n_fourier:
            raise ValueError("log_condition, divide_by_sigma and n_classes need a conditional model (n_fourier > 0)")
        self.dim = dim
        self.log_condition = log_condition
        self.divide_by_sigma = divide_by_sigma
        self.n_classes = n_classes
        self.embed = FourierFeatures(n_fourier) if n_fourier else None
        self.label_embed = nn.Embedding(n_classes + 1, 2 * n_fourier) if n_classes else None  # row C: no label
        self.net = _mlp(dim + 2 * n_fourier * (2 if n_classes else 1), dim, hidden, n_layers)

    @property
    def conditional(self) -> bool:
        return self.embed is not None

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        h = _flatten_features(x, self.dim, self.net[0].weight.dtype)
        if not self.conditional:
            if c is not None:
                raise TypeError("this ScoreMLP is unconditional: call it as model(x)")
            return self.net(h).reshape(x.shape).to(x.dtype)
        if c is None:
            raise TypeError("this ScoreMLP is conditional (n_fourier > 0): call it as model(x, c) with c of shape (n,)")
        if (y is None) != (self.label_embed is None):
            raise TypeError("y: call a model with n_classes > 0 as model(x, c, y), any other as model(x, c)")
        c = check_per_sample("c", c, x.shape[0], h)
        features = [h, _embed_condition(self.embed, "c", c, self.log_condition, positive=self.divide_by_sigma)]
        if y is not None:
            labels = check_labels("y", y, x.shape[0], self.n_classes, allow_null=True).to(h.device)
            features.append(self.label_embed(labels % (self.n_classes + 1)))  # -1 -> row C, "no label"
        out = self.net(torch.cat(features, dim=1))
        if self.divide_by_sigma:
            out = out / c[:, None]
        return out.reshape(x.shape).to(x.dtype)


class ClassifierMLP(nn.Module):
    r"""A classifier of noisy data: logits of p_t(y | x_t) `(n, C)` from `forward(x, t)`, t a per-sample time or level.

    Fourier features of t (or of log t with `log_condition`) are concatenated with x, as in `ScoreMLP`; trained on
    noised samples by `guidance.classifier_loss`, its input gradient is what classifier guidance adds to the score
    (Dhariwal & Nichol 2021; lesson 07).
    """

    def __init__(self, dim: int, n_classes: int, hidden: int = 128, n_layers: int = 3, n_fourier: int = 16, log_condition: bool = False):
        super().__init__()
        check_int("dim", dim, minimum=1)
        check_int("n_classes", n_classes, minimum=2)
        check_int("hidden", hidden, minimum=1)
        check_int("n_layers", n_layers, minimum=1)
        check_int("n_fourier", n_fourier, minimum=1)
        self.dim, self.n_classes, self.log_condition = dim, n_classes, log_condition
        self.embed = FourierFeatures(n_fourier)
        self.net = _mlp(dim + 2 * n_fourier, n_classes, hidden, n_layers)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        h = _flatten_features(x, self.dim, self.net[0].weight.dtype)
        t = check_per_sample("t", t, x.shape[0], h)
        return self.net(torch.cat([h, _embed_condition(self.embed, "t", t, self.log_condition)], dim=1)).to(x.dtype)


class EnergyMLP(nn.Module):
    r"""A scalar energy E_\theta(x) `(n,)`; its score -\nabla_x E_\theta comes from autograd.

    `model(x)` is the energy, `model.score(x)` the score (works under `torch.no_grad()`,
    and keeps the graph to the parameters when gradients are enabled, so score-matching
    losses train it). Introduced in lesson 02.
    """

    def __init__(self, dim: int, hidden: int = 128, n_layers: int = 3):
        super().__init__()
        check_int("dim", dim, minimum=1)
        check_int("hidden", hidden, minimum=1)
        check_int("n_layers", n_layers, minimum=1)
        self.dim = dim
        self.net = _mlp(dim, 1, hidden, n_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(_flatten_features(x, self.dim, self.net[0].weight.dtype)).squeeze(1).to(x.dtype)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """-grad_x E(x), same shape as `x`."""
        return score_from_energy(self)(x)


def _embed_condition(embed: FourierFeatures, name: str, c: torch.Tensor, log_condition: bool, positive: bool = False) -> torch.Tensor:
    """Fourier features of a per-sample condition `(n,)`, or of its log (then, or when `positive`, it must be > 0)."""
    if log_condition or positive:
        check_positive(name, c)
    return embed(c.log() if log_condition else c)


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
    r"""Exponential moving average of a model's parameters, \bar\theta <- d_n \bar\theta + (1 - d_n) \theta.

    `ema.module` is an averaged copy usable wherever the model is (Song & Ermon 2020, Technique 5). Buffers are
    copied as they are. With `warmup` (the default), the n-th update uses d_n = min(decay, (1 + n) / (10 + n)), as
    score_sde's and diffusers' EMA do: the random initialisation is forgotten polynomially fast (its weight after n
    updates is 9! n! / (n + 9)!, 3e-8 at n = 100) instead of like decay^n (0.37 after 1000 updates at 0.999, 0.90 at
    0.9999), so a short run's average is already a trained model. Introduced in lesson 04.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, *, warmup: bool = True):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        if not isinstance(warmup, bool):
            raise TypeError(f"warmup must be True or False, got {type(warmup).__name__}")
        self.decay = float(decay)
        self.warmup = warmup
        self.n_updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next `update` uses: `decay`, capped by (1 + n) / (10 + n) during the warm-up."""
        n = self.n_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards `model`'s parameters (the model it was built from, or one of its architecture)."""
        weight = 1 - self.current_decay()
        averages, params = list(self.module.parameters()), list(model.parameters())
        if len(averages) != len(params) or any(a.shape != p.shape for a, p in zip(averages, params)):
            raise ValueError("model is of another architecture than the one this EMA averages: build it with EMA(model)")
        for avg, p in zip(averages, params):
            avg.lerp_(p.detach(), weight)
        for avg, b in zip(self.module.buffers(), model.buffers()):
            avg.copy_(b)
        self.n_updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "n_updates": self.n_updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.warmup = bool(state.get("warmup", False))  # checkpoints from before the warm-up averaged without one
        self.n_updates = int(state.get("n_updates", 0))
        self.module.load_state_dict(state["module"])


# --- U-Net for images (DDPM++ / NCSN++ style) --------------------------------------------------------------


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a `UNet`; the presets are `UNET_PRESETS` (tiny, mnist, cifar10)."""

    channels: int = 1  # image channels in and out (1 for MNIST, 3 for CIFAR-10)
    base_channels: int = 32  # feature channels at full resolution
    channel_mults: tuple[int, ...] = (1, 2, 2)  # channels per level = base * mult; each level after the first halves H and W
    n_res_blocks: int = 2  # residual blocks per level on the way down (one more on the way up)
    attention_levels: tuple[int, ...] = (2,)  # levels (0 = full resolution) with self-attention after each block
    dropout: float = 0.0  # dropout inside residual blocks (DDPM uses 0.1 on CIFAR-10)
    n_fourier: int = 32  # sinusoidal features of log sigma (FourierFeatures), mapped by an MLP to 4 * base_channels
    n_heads: int = 1  # attention heads
    embedding_activation: bool = True  # SiLU on the noise embedding before each block's projection (DDPM, score_sde)

    def __post_init__(self):
        check_int("channels", self.channels, minimum=1)
        check_int("base_channels", self.base_channels, minimum=1)
        if not self.channel_mults or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in self.channel_mults):
            raise ValueError(f"channel_mults must be a non-empty tuple of ints >= 1, got {self.channel_mults!r}")
        check_int("n_res_blocks", self.n_res_blocks, minimum=1)
        if not all(isinstance(a, int) and 0 <= a < len(self.channel_mults) for a in self.attention_levels):
            raise ValueError(f"attention_levels must name levels in 0..{len(self.channel_mults) - 1}, got {self.attention_levels!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        check_int("n_fourier", self.n_fourier, minimum=1)
        check_int("n_heads", self.n_heads, minimum=1)
        bad = [m * self.base_channels for m in self.channel_mults if (m * self.base_channels) % self.n_heads]
        if bad:
            raise ValueError(f"n_heads={self.n_heads} must divide the channels of every level, not {bad[0]}")

    @property
    def downsampling(self) -> int:
        """H and W must be divisible by this: 2^(levels - 1)."""
        return 2 ** (len(self.channel_mults) - 1)


#: architecture presets: `tiny` for CPU tests and lesson 09, `mnist` (28x28), `cifar10` (DDPM's 35.7 M)
UNET_PRESETS = {
    "tiny": UNetConfig(base_channels=16, channel_mults=(1, 2, 2), n_res_blocks=1, attention_levels=(2,)),
    "mnist": UNetConfig(base_channels=64, channel_mults=(1, 2, 2), n_res_blocks=2, attention_levels=(1,)),
    "cifar10": UNetConfig(channels=3, base_channels=128, channel_mults=(1, 2, 2, 2), n_res_blocks=2, attention_levels=(1,), dropout=0.1),
}


def _group_norm(channels: int) -> nn.GroupNorm:
    # up to 32 groups of at least 4 channels each (GroupNorm(32, .) at DDPM's widths, fewer groups on tiny models)
    groups = next(g for g in range(min(32, max(channels // 4, 1)), 0, -1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialised last layer of a residual branch: each block starts as the identity (DDPM, NCSN++)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, plus the projected embedding, GroupNorm-SiLU-dropout-conv; the skip added and scaled by
    1/sqrt(2). The embedding goes through SiLU before its projection (Ho et al. 2020's `dense(nonlinearity(temb))`)
    unless `embedding_activation` is off: then the projection composes linearly with the embedding MLP's last layer."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float, embedding_activation: bool = True):
        super().__init__()
        self.norm1, self.conv1 = _group_norm(in_channels), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_activation = nn.SiLU() if embedding_activation else nn.Identity()
        self.emb = nn.Linear(emb_dim, out_channels)
        self.norm2, self.drop = _group_norm(out_channels), nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + append_dims(self.emb(self.emb_activation(emb)), h.ndim)
        h = self.conv2(self.drop(nn.functional.silu(self.norm2(h))))
        return (self.skip(x) + h) / math.sqrt(2)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions (`scaled_dot_product_attention`), residual, scaled by 1/sqrt(2)."""

    def __init__(self, channels: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.norm = _group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, height, width = x.shape
        # (n, 3, heads, positions, head_dim)
        qkv = self.qkv(self.norm(x)).reshape(n, 3, self.n_heads, c // self.n_heads, height * width).transpose(-1, -2)
        h = nn.functional.scaled_dot_product_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2])
        h = h.transpose(-1, -2).reshape(n, c, height, width)
        return (x + self.out(h)) / math.sqrt(2)


class _Stage(nn.Module):
    """One residual block, with self-attention after it at the attention levels."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, config: UNetConfig, attention: bool):
        super().__init__()
        self.res = ResBlock(in_channels, out_channels, emb_dim, config.dropout, config.embedding_activation)
        self.attention = SelfAttention(out_channels, config.n_heads) if attention else nn.Identity()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.attention(self.res(h, emb))


class _Resample(nn.Module):
    """Halve H and W (stride-2 convolution) or double them (nearest neighbour, then a convolution)."""

    def __init__(self, channels: int, up: bool):
        super().__init__()
        self.up = up
        self.conv = nn.Conv2d(channels, channels, 3, stride=1 if up else 2, padding=1)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(h, scale_factor=2.0, mode="nearest") if self.up else h)


class UNet(nn.Module):
    r"""A noise-conditional U-Net score model s_\theta(x, sigma) for images `(n, C, H, W)` (DDPM++ / NCSN++ style).

    `model(x, sigma)` with `sigma` a `(n,)` tensor of noise levels returns net(c_in x, log sigma) / sigma, shape of x:
    the input is scaled by c_in = 1 / sqrt(1 + sigma^2) (unit variance for data of std <= 1, Karras et al. 2022), the
    noise level enters as sinusoidal features of log sigma, and dividing by sigma builds in the scale of the true
    score (Song & Ermon 2020, Technique 3) -- the same rule as `ScoreMLP(log_condition=True, divide_by_sigma=True)`.
    For an SDE, `sde.condition_on_std(unet, sde)` is the time-conditional score s(x, t) = model(x, sigma(t)).

    Levels: residual blocks (GroupNorm, SiLU, the embedding added, skip / sqrt 2), self-attention at
    `attention_levels`, stride-2 convolutions down, nearest-neighbour upsampling and a convolution up, and the
    down path's activations concatenated into the up path. Any H, W divisible by `config.downsampling` works.
    Dtype rule as for `ScoreMLP`: floating input of another precision is cast, the output cast back; integer
    images are refused (scale them with `datasets.to_model_range` first). Introduced in lesson 09.
    """

    def __init__(self, config: UNetConfig | str = "tiny"):
        super().__init__()
        if isinstance(config, str):
            if config not in UNET_PRESETS:
                raise ValueError(f"config must be a UNetConfig or one of {sorted(UNET_PRESETS)}, got {config!r}")
            config = UNET_PRESETS[config]
        if not isinstance(config, UNetConfig):
            raise TypeError(f"config must be a UNetConfig or a preset name, got {type(config).__name__}")
        self.config = config
        base, emb_dim = config.base_channels, 4 * config.base_channels
        widths = [base * m for m in config.channel_mults]
        self.embed = nn.Sequential(
            FourierFeatures(config.n_fourier, min_freq=1 / 64, max_freq=2.0),
            nn.Linear(2 * config.n_fourier, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
        )
        self.conv_in = nn.Conv2d(config.channels, base, 3, padding=1)

        def stage(level: int, in_ch: int, out_ch: int) -> _Stage:
            return _Stage(in_ch, out_ch, emb_dim, config, attention=level in config.attention_levels)

        # down path: remember every activation's channels for the skips
        self.down, skip_channels, ch = nn.ModuleList(), [base], base
        for level, width in enumerate(widths):
            for _ in range(config.n_res_blocks):
                self.down.append(stage(level, ch, width))
                ch = width
                skip_channels.append(ch)
            if level < len(widths) - 1:
                self.down.append(_Resample(ch, up=False))
                skip_channels.append(ch)
        self.middle = nn.ModuleList([_Stage(ch, ch, emb_dim, config, attention=True), _Stage(ch, ch, emb_dim, config, attention=False)])
        # up path: n_res_blocks + 1 blocks per level, each eating one skip
        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for _ in range(config.n_res_blocks + 1):
                self.up.append(stage(level, ch + skip_channels.pop(), widths[level]))
                ch = widths[level]
            if level > 0:
                self.up.append(_Resample(ch, up=True))
        self.norm_out = _group_norm(ch)
        self.conv_out = _zero(nn.Conv2d(ch, config.channels, 3, padding=1))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        dtype = self.conv_in.weight.dtype
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}: scale images with datasets.to_model_range")
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.channels or x.shape[0] == 0:
            raise ValueError(f"x must be a non-empty batch of images (n, {c.channels}, H, W), got shape {tuple(x.shape)}")
        if x.shape[2] % c.downsampling or x.shape[3] % c.downsampling:
            raise ValueError(
                f"x's H and W must be divisible by {c.downsampling} ({len(c.channel_mults)} levels), got {tuple(x.shape[2:])}: "
                "pad the images or use fewer channel_mults"
            )
        sigma = check_positive("sigma", check_per_sample("sigma", sigma, x.shape[0], x.to(dtype)))
        emb = self.embed(sigma.log())
        h = self.conv_in(x.to(dtype) * append_dims((1 + sigma**2).rsqrt(), x.ndim))
        skips = [h]
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
        for block in self.middle:
            h = block(h, emb)
        for block in self.up:  # every stage on the way up takes one skip, in reverse order
            h = block(torch.cat([h, skips.pop()], dim=1) if isinstance(block, _Stage) else h, emb)
        out = self.conv_out(nn.functional.silu(self.norm_out(h)))
        return (out / append_dims(sigma, x.ndim)).to(x.dtype)


class ImageClassifier(nn.Module):
    """A small convolutional classifier `(n, C, H, W) -> (n, n_classes)` logits (lesson 09 counts generated shapes).

    Three 3x3 convolutions (the last two with stride 2) with SiLU, global average pooling to `features(x)`
    `(n, 4 * width)`, and a linear layer. Any H, W; same dtype rule as `UNet`.
    """

    def __init__(self, channels: int = 1, n_classes: int = 10, width: int = 16):
        super().__init__()
        check_int("channels", channels, minimum=1)
        check_int("n_classes", n_classes, minimum=2)
        check_int("width", width, minimum=1)
        self.channels = channels
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer `(n, 4 * width)`."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            got = getattr(x, "dtype", type(x).__name__)
            raise TypeError(f"x must be a floating-point tensor, got {got}: scale images with datasets.to_model_range")
        if x.ndim != 4 or x.shape[1] != self.channels or len(x) == 0:
            raise ValueError(f"x must be a non-empty batch of images (n, {self.channels}, H, W), got shape {tuple(x.shape)}")
        return self.body(x.to(self.head.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).to(x.dtype)
