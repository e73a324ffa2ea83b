"""Argument checks and small shared helpers (one definition each, imported everywhere)."""

from __future__ import annotations

import math
import os
import threading
from numbers import Real
from pathlib import Path

import torch


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so a per-sample `(batch,)` tensor broadcasts over `ndim` dims."""
    if v.ndim > ndim:
        raise ValueError(f"cannot broadcast a {v.ndim}-d tensor over {ndim} dims")
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def as_generator(generator, device=None) -> torch.Generator | None:
    """Accept `None`, an int seed or a `torch.Generator`; return a generator (or None)."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        g = torch.Generator(device=device if device is not None else "cpu")
        g.manual_seed(generator)
        return g
    raise TypeError(f"generator must be None, an int seed or a torch.Generator, got {type(generator).__name__}")


def check_callable(name: str, fn) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be callable (x -> score), got {type(fn).__name__}")


_scan = threading.local()


class values_checked_by_caller:
    """Within this block `check_tensor` checks types and shapes but skips its NaN/inf scan of the values.

    For samplers: they check their particles themselves (every `sampling.CHECK_EVERY` steps, with an error naming the
    steps and the step size), so a score's own scan of its input at every call, a full pass over the particles and
    a host sync, is redundant there. A non-finite particle then gives a non-finite score, which the sampler's next
    check reports. Per thread, and nestable.
    """

    __slots__ = ("previous",)

    def __enter__(self):
        self.previous = getattr(_scan, "skip", False)
        _scan.skip = True
        return self

    def __exit__(self, *exc) -> bool:
        _scan.skip = self.previous
        return False


def _expanded(v: torch.Tensor) -> bool:
    """Whether `v` holds one value expanded to many entries (every stride 0), as the samplers pass a level or a time."""
    return v.numel() > 1 and all(s == 0 for s in v.stride())


def distinct_values(v: torch.Tensor) -> torch.Tensor:
    """The entries of `v` worth checking: one for a tensor expanded from one value, so that checking it costs nothing
    per sample; else `v` itself."""
    return v.reshape(-1)[:1] if _expanded(v) else v


def holds_everywhere(v: torch.Tensor, condition) -> bool:
    """Whether `condition` (entries -> bools, written with comparisons so that it takes a float or a tensor) holds for
    every entry of `v`: on a Python float, with one read, when `v` holds one value (expanded or not); else as one
    reduction. NaN fails any comparison, so a condition like `lambda u: (u > 0) & (u < inf)` refuses it."""
    distinct = distinct_values(v)
    if distinct.numel() == 1:
        return bool(condition(distinct.item()))
    return bool(condition(distinct).all())


def shared_value(v) -> float | None:
    """The one value of a number, or of a tensor whose entries are all equal (found without a scan when it was
    expanded from one value); None when the entries differ."""
    if not isinstance(v, torch.Tensor):
        return float(v)
    if v.numel() == 1 or _expanded(v):
        return v[(0,) * v.ndim].item()
    flat = v.reshape(-1)
    return flat[0].item() if bool((flat == flat[0]).all()) else None


def check_tensor(name: str, x, min_dim: int = 1) -> torch.Tensor:
    """`x` must be a finite floating tensor with at least `min_dim` dims (the scan for NaN/inf is skipped inside
    `values_checked_by_caller`)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dims (batch first), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if not getattr(_scan, "skip", False) and not _inside_torch_func(x) and not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _inside_torch_func(x: torch.Tensor) -> bool:
    """True for a tensor wrapped by a torch.func transform (vmap, grad): its values cannot steer Python control flow,
    so value checks are skipped there and belong to whoever starts the transform (`metrics.gradient_variance` checks
    its inputs first). A torch without this private probe just keeps the checks (and such transforms then fail)."""
    probe = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)
    return probe is not None and probe(x)


def check_positive(name: str, value, allow_tensor: bool = True):
    """A positive finite float, or (if allowed) a tensor of positive finite values."""
    if isinstance(value, torch.Tensor) and allow_tensor:
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
        if not holds_everywhere(value, lambda u: (u > 0) & (u < math.inf)):
            raise ValueError(f"{name} must be positive and finite, got {value}")
        return value
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return float(value)


def check_nonnegative(name: str, value, meaning: str = "") -> float:
    """A finite real number >= 0 (not a bool, not a tensor) as a float; `meaning` is added to the message."""
    if isinstance(value, bool) or not isinstance(value, Real) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0{meaning}, got {value!r}")
    return float(value)


def check_probability(name: str, value) -> float:
    """A number in [0, 1] as a float."""
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(map(str, choices))}, got {value!r}")


def check_bounds(bounds, name: str = "bounds"):
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair (low, high), got {bounds!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{name} must satisfy low < high, got {bounds!r}")
    return lo, hi


def check_batch_size(name: str, value, batch: int) -> None:
    """A per-sample scalar (a noise level, a time) must be one value or one per sample: a number, a one-element
    tensor, or a tensor of `batch` elements (e.g. `(batch,)` or `(batch, 1)`). Reads the shape only, never the data,
    so every entry point that takes one calls it: 3 levels for 8 samples is a clear error, not a broadcast."""
    if isinstance(value, torch.Tensor) and value.numel() != 1 and (value.numel() != batch or (value.ndim > 1 and value.shape[0] != batch)):
        shape = tuple(value.shape)
        raise ValueError(f"{name} must be a scalar or hold one value per sample ({batch},), got shape {shape} for {batch} samples")


def check_per_sample(name: str, value, batch: int, like: torch.Tensor) -> torch.Tensor:
    """A per-sample scalar as a `(batch,)` tensor on `like`'s dtype and device: a number, a 0-d tensor, or a
    tensor of `batch` elements (any shape with that many, e.g. `(batch, 1)`); anything else is a clear error."""
    check_batch_size(name, value, batch)
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return value.reshape(()).expand(batch) if value.numel() == 1 else value.reshape(batch)


def check_shape(name: str, shape) -> tuple[int, ...]:
    """A tensor shape `(batch, *dims)` of positive ints, as a tuple."""
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list, torch.Size)) or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape):
        raise TypeError(f"{name} must be a tuple of ints such as (batch, 2), got {shape!r}")
    if not shape or any(n < 1 for n in shape):
        raise ValueError(f"{name} must be a non-empty tuple of positive sizes, got {tuple(shape)}")
    return tuple(shape)


def check_float_dtype(name: str, dtype) -> None:
    """`dtype` must be None (the default float dtype) or a floating torch dtype: an integer dtype would truncate."""
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"{name} must be a floating torch dtype such as torch.float32 (or None), got {dtype!r}")


def check_sde(name: str, sde) -> None:
    """`sde` must be an SDE object (`scorelab.VPSDE()`, ...): what every loss, sampler and likelihood reads of it."""
    if not all(hasattr(sde, attr) for attr in ("marginal_coeffs", "diffusion", "drift_coeff", "check_eps", "T")):
        hint = f"the string {sde!r}: build the object, e.g. scorelab.VPSDE()" if isinstance(sde, str) else type(sde).__name__
        raise TypeError(f"{name} must be an SDE such as scorelab.VPSDE(), VESDE(), SubVPSDE() or OUSDE(), got {hint}")


def check_label_type(name: str, y) -> None:
    """An int class label or a tensor of them (values are checked where the number of classes is known)."""
    if isinstance(y, bool) or not isinstance(y, (int, torch.Tensor)):
        raise TypeError(f"{name} must be an int class label or a tensor of them, got {type(y).__name__}")


def check_labels(name: str, y, batch: int, n_classes: int, allow_null: bool = False) -> torch.Tensor:
    """Class labels as a `(batch,)` int64 tensor: an int for all, or one per sample, in 0..n_classes-1 (and -1, "no
    label", when `allow_null`)."""
    check_label_type(name, y)
    y = torch.as_tensor(y)
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    y = y.reshape(-1).long()
    if y.numel() == 1:
        y = y.expand(batch)
    if y.shape != (batch,):
        raise ValueError(f"{name} must be one label or one per sample ({batch},), got {y.numel()} labels")
    low = -1 if allow_null else 0
    if len(y) and (y.min() < low or y.max() >= n_classes):
        raise ValueError(f"{name} must lie in {low}..{n_classes - 1}, got {y.min().item()}..{y.max().item()}")
    return y


def check_output(name: str, value, shape) -> torch.Tensor:
    """`value`, returned by the user's callable `name`, must be a tensor of `shape`: never a silent broadcast."""
    if not isinstance(value, torch.Tensor) or value.shape != shape:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} must return a tensor of shape {tuple(shape)}, got {got}")
    return value


def checked_score(score, name: str = "score"):
    """`score(x, *args)` with its answer checked to have x's shape (samplers wrap the user's score once with this)."""

    def wrapped(x: torch.Tensor, *args) -> torch.Tensor:
        return check_output(name, score(x, *args), x.shape)

    if hasattr(score, "precompute"):  # the samplers' hook (`GaussianMixture.marginal_score`) stays reachable
        wrapped.precompute = score.precompute
    return wrapped


def check_path(name: str, path) -> Path:
    """A file path given as a str or os.PathLike, as a `Path`."""
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or pathlib.Path), got {type(path).__name__}")
    return Path(path)


def check_memory(name: str, n: int, bytes_each: int) -> None:
    """A clear error, with the size, when `n` items of `bytes_each` bytes would not fit in this machine's memory."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system: let the allocator decide
        return
    if n * bytes_each > total:
        raise ValueError(
            f"{name}={n} would take {n * bytes_each / 2**30:.1f} GiB, more than this machine's {total / 2**30:.1f} GiB: work in chunks"
        )


def check_device(name: str, device) -> torch.device:
    """`device` as a torch.device that exists on this machine (a CUDA device without CUDA is a clear error)."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name} must name a device such as 'cpu' or 'cuda:0', got {device!r}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}={str(device)!r} but this machine has no CUDA device: use 'cpu'")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"{name}={str(device)!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return resolved
