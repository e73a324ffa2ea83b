"""Pictures of 2-D densities, score fields and samples, in one style.

Every function draws on a given matplotlib `ax` (or a new one) and returns the artist it
made, so widgets can update it and tests can read its data. Introduced in lesson 01.

Conventions, so that a figure says what the text says: 2-D panels keep a few ticks (the
text names coordinates); a colour that carries a quantity gets a colour bar when asked
(`colorbar="label"`), otherwise the caller says that colour is scaled per panel; samples
are drawn in `SAMPLE_COLOR`, which stays visible on every part of `DENSITY_CMAP`.
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.collections import LineCollection

from ._checks import check_bounds, check_callable, check_int, check_positive
from .datasets import to_pixels
from .distributions import GaussianMixture

DENSITY_CMAP = "mako_r"  # pale (low density) to dark blue (high)
ERROR_CMAP = "rocket_r"
ENERGY_CMAP = "viridis"  # energies and other signed or log quantities: never the density's map
FIELD_COLOR = "#d1495b"
SAMPLE_COLOR = "#ff8c1a"  # orange: visible on the pale and on the dark end of DENSITY_CMAP
# arrows over an ERROR_CMAP map: white with a black edge, so they stay visible on its pale and its dark end
ARROWS_ON_ERROR = {"color": "white", "edgecolor": "black", "linewidth": 0.5}


def use_style() -> None:
    """The seaborn look used by every lesson and demo (call once per notebook)."""
    sns.set_theme(context="notebook", style="white", palette="deep")
    plt.rcParams.update({"figure.dpi": 90, "axes.titlesize": "medium", "image.origin": "lower"})


def subplots(n_cols: int = 1, n_rows: int = 1, size: float = 3.4, **kwargs):
    """A figure of square panels, `size` inches each; returns (fig, axes) like `plt.subplots`."""
    check_int("n_cols", n_cols, minimum=1)
    check_int("n_rows", n_rows, minimum=1)
    check_positive("size", size, allow_tensor=False)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(size * n_cols, size * n_rows), squeeze=False, constrained_layout=True, **kwargs)
    return fig, (axes[0, 0] if axes.size == 1 else axes.squeeze())


def log_ticks(ax, x=None, y=None) -> None:
    """On log axes, ticks at the given values labelled as plain numbers (0.05, not 5x10^-2) and no minor labels:
    the values a sweep ran at are what the reader looks for (lesson 06)."""
    from matplotlib.ticker import NullFormatter

    for axis, values in ((ax.xaxis, x), (ax.yaxis, y)):
        if values is None:
            continue
        values = [float(v) for v in np.ravel(values)]
        if not values or not all(np.isfinite(v) and v > 0 for v in values):
            raise ValueError(f"tick values must be positive numbers for a log axis, got {values}")
        axis.set_ticks(values, [f"{v:g}" for v in values])
        axis.set_minor_formatter(NullFormatter())


def grid(bounds=(-8.0, 8.0), resolution: int = 100, dtype=None) -> tuple[torch.Tensor, np.ndarray]:
    """Points of a resolution x resolution grid over bounds^2 as an `(r*r, 2)` tensor, and the 1-D axis."""
    lo, hi = check_bounds(bounds)
    check_int("resolution", resolution, minimum=2)
    axis = np.linspace(lo, hi, resolution)
    gx, gy = np.meshgrid(axis, axis, indexing="xy")
    pts = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=dtype or torch.get_default_dtype())
    return pts, axis


def evaluate_on_grid(fn, bounds=(-8.0, 8.0), resolution: int = 100) -> np.ndarray:
    """`fn` on the grid, reshaped to `(r, r)` for scalars or `(r, r, 2)` for vectors (rows are y)."""
    check_callable("fn", fn)
    pts, _ = grid(bounds, resolution)
    with torch.no_grad():
        values = fn(pts).detach().cpu().numpy()
    return values.reshape(resolution, resolution, *values.shape[1:])


def _ax(ax):
    return ax if ax is not None else subplots()[1]


def _finish(ax, bounds, title):
    lo, hi = check_bounds(bounds)
    ax.set(xlim=(lo, hi), ylim=(lo, hi), aspect="equal")
    if not getattr(ax, "scorelab_ticks_set", False):  # once per axes: an explorer redraws into the same axes
        ax.locator_params(nbins=4)
        ax.tick_params(labelsize="small", length=2, pad=1)  # restyles every tick: 2 ms a call
        ax.scorelab_ticks_set = True
    if title:
        ax.set_title(title)


def add_colorbar(artist, ax, label: str):
    """A slim colour bar for `artist` beside `ax` (one axes, or several sharing the bar), labelled with its quantity.

    When `ax` carries a bar to reuse (`ax.reused_colorbar`, which `widgets.Explorer.panels` sets on a redrawn
    figure), that bar is pointed at `artist` instead of a new one being added beside the old."""
    bar = getattr(ax, "reused_colorbar", None)
    if bar is not None:
        ax.reused_colorbar = None
        artist.colorbar = bar
        bar.update_normal(artist)
        bar.set_label(label, size="small")
        return bar
    bar = artist.axes.figure.colorbar(artist, ax=ax, shrink=0.75, pad=0.02, aspect=25)
    bar.set_label(label, size="small")
    bar.ax.tick_params(labelsize="x-small")
    return bar


def plot_heatmap(fn, bounds=(-8.0, 8.0), resolution: int = 150, ax=None, cmap=DENSITY_CMAP, title=None, colorbar=None, **kwargs):
    """A scalar function of 2-D points `(n, 2) -> (n,)` as an image; returns the `AxesImage`.

    `colorbar`: a label; when given, a colour bar with that label is drawn beside the panel.
    """
    ax = _ax(ax)
    lo, hi = check_bounds(bounds)
    img = ax.imshow(evaluate_on_grid(fn, bounds, resolution), extent=(lo, hi, lo, hi), cmap=cmap, origin="lower", **kwargs)
    _finish(ax, bounds, title)
    if colorbar:
        add_colorbar(img, ax, colorbar)
    return img


def _log_prob(density):
    """A `GaussianMixture`'s `log_prob`, or the callable log-density itself."""
    log_prob = density.log_prob if isinstance(density, GaussianMixture) else density
    check_callable("density", log_prob)
    return log_prob


def plot_density(density, bounds=(-8.0, 8.0), resolution: int = 150, ax=None, title=None, **kwargs):
    """The density of a `GaussianMixture`, or of a callable log-density, as an image (`colorbar=` as in `plot_heatmap`)."""
    log_prob = _log_prob(density)
    return plot_heatmap(lambda x: log_prob(x).exp(), bounds, resolution, ax=ax, title=title, **kwargs)


def plot_field(
    score,
    bounds=(-8.0, 8.0),
    n_arrows: int = 21,
    ax=None,
    color=FIELD_COLOR,
    clip_quantile: float = 0.95,
    title=None,
    normalize: bool = False,
    cmap="magma",
    **kwargs,
):
    """A 2-D vector field (a score) as arrows on an `n_arrows` x `n_arrows` grid; returns the `Quiver`.

    Arrow lengths are proportional to |s(x)|, clipped at the `clip_quantile` of the
    magnitudes so that the huge arrows far from the data do not hide the rest. With
    `normalize`, every arrow has the same length (direction only) and its colour shows
    |s(x)| in `cmap` (pass the returned quiver to `add_colorbar`): use it where the field is
    tiny on the data and huge elsewhere, so that no arrow shrinks to a dot.
    """
    if isinstance(clip_quantile, bool) or not isinstance(clip_quantile, (int, float)) or not 0 < clip_quantile <= 1:
        raise ValueError(f"clip_quantile must be in (0, 1], got {clip_quantile!r}")
    ax = _ax(ax)
    _, axis = grid(bounds, n_arrows)
    field = evaluate_on_grid(score, bounds, n_arrows)
    if field.shape != (n_arrows, n_arrows, 2):
        raise ValueError(f"score must return one 2-D vector per point, (n, 2); got {field.shape[2:]} per point")
    norm = np.linalg.norm(field, axis=-1, keepdims=True)
    if normalize:
        unit = field / np.maximum(norm, 1e-12)
        quiver = ax.quiver(axis, axis, unit[..., 0], unit[..., 1], norm[..., 0], cmap=cmap, angles="xy", pivot="mid", **kwargs)
    else:
        cap = np.quantile(norm, clip_quantile) if clip_quantile < 1 else norm.max()
        field = field * np.minimum(1.0, cap / np.maximum(norm, 1e-12))
        quiver = ax.quiver(axis, axis, field[..., 0], field[..., 1], color=color, angles="xy", **kwargs)
    _finish(ax, bounds, title)
    return quiver


def plot_samples(x: torch.Tensor, ax=None, bounds=(-8.0, 8.0), s: float = 3, alpha: float = 0.5, color=SAMPLE_COLOR, title=None, **kwargs):
    """A scatter of `(n, 2)` samples; returns the `PathCollection`."""
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"x must be a tensor of 2-D points (n, 2), got {getattr(x, 'shape', type(x).__name__)}")
    ax = _ax(ax)
    x = x.detach().cpu().numpy()
    points = ax.scatter(x[:, 0], x[:, 1], s=s, alpha=alpha, color=color, **{"linewidths": 0, **kwargs})
    _finish(ax, bounds, title)
    return points


def plot_samples_on(density, x: torch.Tensor, bounds=(-8.0, 8.0), ax=None, title=None, s: float = 3, **kwargs):
    """Samples `(n, 2)` over a density backdrop (a `GaussianMixture` or a log-density callable); returns the scatter."""
    ax = _ax(ax)
    plot_density(density, bounds, ax=ax, title=title)
    return plot_samples(x, ax=ax, bounds=bounds, s=s, **kwargs)


def plot_paths(paths, ax=None, color="w", **kwargs):
    """Trajectories `(n_steps, n_paths, 2)` (a sampler's saved states) as thin lines, one `LineCollection` (a line
    per path, drawn as separate lines are, made and drawn as one artist); returns it."""
    ax = _ax(ax)
    paths = paths.detach().cpu().numpy() if isinstance(paths, torch.Tensor) else np.asarray(paths)
    if paths.ndim != 3 or paths.shape[-1] != 2:
        raise ValueError(f"paths must have shape (n_steps, n_paths, 2), got {paths.shape}")
    lines = LineCollection(paths.transpose(1, 0, 2), colors=color, **{"linewidths": 0.7, "alpha": 0.8, "zorder": 2, **kwargs})
    ax.add_collection(lines)
    ax.autoscale_view()
    return lines


def plot_score_error(
    score, reference, bounds=(-8.0, 8.0), resolution: int = 150, ax=None, density=None, title=None, colorbar=None, **kwargs
):
    """|score(x) - reference(x)| as an image in `ERROR_CMAP`, with contours of `density` (log p = -3, -6) in blue.

    The contours show where the data lives, so a reader sees at once whether the error sits on the
    data or away from it (lessons 02-03). Returns the `AxesImage`; `colorbar` as in `plot_heatmap`.
    """
    check_callable("score", score)
    check_callable("reference", reference)
    image = plot_heatmap(
        lambda x: (score(x) - reference(x)).norm(dim=1),
        bounds,
        resolution,
        ax=ax,
        cmap=ERROR_CMAP,
        title=title,
        colorbar=colorbar,
        **kwargs,
    )
    if density is not None:
        _, axis = grid(bounds, resolution)
        log_density = evaluate_on_grid(_log_prob(density), bounds, resolution)
        image.axes.contour(axis, axis, log_density, levels=[-6, -3], colors="tab:blue", linewidths=1.1)
    return image


def image_grid(images: torch.Tensor, n_cols: int | None = None, data_range=(-1.0, 1.0), pad: int = 1) -> np.ndarray:
    """Tile a batch `(n, C, H, W)` (floats in `data_range`, or uint8 pixels) into one uint8 picture, rows of
    `n_cols` (about square by default) with `pad` grey pixels between tiles: `(rows, cols)` for one channel,
    `(rows, cols, 3)` for three. Introduced in lesson 09."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3) or len(images) == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a non-empty batch (n, 1 or 3, H, W), got {shape}")
    n, c, h, w = images.shape
    n_cols = check_int("n_cols", n_cols, minimum=1) if n_cols is not None else int(np.ceil(np.sqrt(n)))
    n_rows = -(-n // n_cols)
    if images.dtype != torch.uint8:
        images = to_pixels(images.detach().float().cpu(), data_range=data_range)
    canvas = np.full((c, n_rows * (h + pad) + pad, n_cols * (w + pad) + pad), 128, dtype=np.uint8)
    for k, image in enumerate(images.cpu().numpy()):
        top, left = pad + (k // n_cols) * (h + pad), pad + (k % n_cols) * (w + pad)
        canvas[:, top : top + h, left : left + w] = image
    return canvas[0] if c == 1 else canvas.transpose(1, 2, 0)


def plot_images(images: torch.Tensor, ax=None, n_cols: int | None = None, title=None, data_range=(-1.0, 1.0)):
    """Show a batch of images as one grid (grey for one channel), without ticks; returns the `AxesImage`."""
    ax = _ax(ax)
    artist = ax.imshow(image_grid(images, n_cols, data_range), cmap="gray", vmin=0, vmax=255, origin="upper", interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return artist


def save_image_grid(images: torch.Tensor, path, n_cols: int | None = None, data_range=(-1.0, 1.0), scale: int | None = None) -> None:
    """Write `image_grid(images)` to a PNG, each pixel enlarged to `scale` x `scale` (default: tiles of >= 64 px)."""
    grid = image_grid(images, n_cols, data_range)
    scale = check_int("scale", scale, minimum=1) if scale is not None else max(1, -(-64 // images.shape[-1]))
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    plt.imsave(path, grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255)


def plot_images_by_class(images: torch.Tensor, labels: torch.Tensor, class_names, n_per_class: int = 10, ax=None, title=None):
    """One row per class: the first `n_per_class` images with that label (grey where there are fewer), the class
    names (with their counts) on the left. Returns the `AxesImage`."""
    check_int("n_per_class", n_per_class, minimum=1)
    if not isinstance(labels, torch.Tensor) or labels.shape != images.shape[:1]:
        raise ValueError(f"labels must be a tensor of one label per image ({len(images)},), got {getattr(labels, 'shape', labels)}")
    blank = torch.full(images.shape[1:], 128 if images.dtype == torch.uint8 else 0, dtype=images.dtype)  # grey like the gaps: no image
    rows = []
    for k in range(len(class_names)):
        chosen = list(images[labels.cpu() == k][:n_per_class])
        rows += chosen + [blank] * (n_per_class - len(chosen))
    artist = plot_images(torch.stack(rows), ax=ax, n_cols=n_per_class, title=title)
    ax = artist.axes
    ax.set_axis_on()
    ax.set_xticks([])
    height = images.shape[2] + 1
    ax.set_yticks([1 + height * (k + 0.5) for k in range(len(class_names))])
    counts = torch.bincount(labels.cpu(), minlength=len(class_names)).tolist()
    ax.set_yticklabels([f"{name} ({count})" for name, count in zip(class_names, counts)])
    for side in ax.spines.values():
        side.set_visible(False)
    return artist


def plot_confusion(matrix, class_names, ax=None, title=None, cmap="Blues"):
    """A confusion matrix (counts, rows = true class, columns = label given) coloured by each row's shares, i.e. the
    estimated P(label | true class), with a colour bar from 0 to 1 and each cell's count written in it (lesson 09).
    Returns the `AxesImage`."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(class_names) or (matrix < 0).any():
        raise ValueError(f"matrix must be a square array of counts, one row per class of {list(class_names)}, got shape {matrix.shape}")
    shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    ax = _ax(ax)
    artist = ax.imshow(shares, cmap=cmap, vmin=0, vmax=1, origin="upper")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", fontsize="small", color="white" if shares[i, j] > 0.6 else "black")
    k = np.arange(len(class_names))
    ax.set_xticks(k, class_names, rotation=30, ha="right", fontsize="small")
    ax.set_yticks(k, class_names, fontsize="small")
    ax.set(xlabel="label given", ylabel="true class")
    ax.grid(False)
    add_colorbar(artist, ax, "share of the true class")
    if title:
        ax.set_title(title)
    return artist


def plot_masked_images(images: torch.Tensor, mask: torch.Tensor, ax=None, n_cols: int | None = None, title=None, color="#d1495b"):
    """`plot_images` with the pixels where `mask` is False (unknown, in `pc_sample`'s convention) tinted in `color`, so
    a figure shows which pixels were given and which were generated (lesson 09). `mask` broadcasts to `images`.
    Returns the tint's `AxesImage`."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = known), got {getattr(mask, 'dtype', type(mask).__name__)}")
    try:
        unknown = (~mask).expand_as(images)
    except RuntimeError:
        raise ValueError(f"mask must broadcast to the images' shape {tuple(images.shape)}, got {tuple(mask.shape)}") from None
    artist = plot_images(images, ax=ax, n_cols=n_cols, title=title)
    tint = image_grid(unknown[:, :1].to(torch.uint8) * 255, n_cols, pad=1) == 255
    rgba = np.zeros((*tint.shape, 4))
    rgba[tint] = (*matplotlib.colors.to_rgb(color), 0.45)
    return artist.axes.imshow(rgba, interpolation="nearest", origin="upper")
