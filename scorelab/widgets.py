"""Interactive explorers for the `toy/` notebooks (ipywidgets 8).

The logic lives here, not in the notebooks, so pytest can drive every explorer
headlessly: set a control's value, and check that `draw_count` went up, the arrays in
`data` changed and `image` holds a new PNG. Each explorer shows itself when it is the
last expression of a cell.

Figures are rendered to PNG here (`Figure.savefig` into a buffer) and shown in a
`W.Image`, so they appear in every front end without `%matplotlib inline` or ipympl:
a bare `Figure` only has a `text/plain` representation unless pyplot's inline backend
happens to be active.
"""

from __future__ import annotations

import base64
import io
import math
from typing import NamedTuple

import ipywidgets as W
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from PIL import Image

from . import losses, noise, sampling, viz
from . import sde as sde_lib
from ._checks import check_bounds, check_int
from .datasets import far_apart_mixture, ring_mixture
from .metrics import TVEstimate, fisher_divergence, tv_grid
from .nets import EMA, ScoreMLP
from .paths import from_x0_eps, mixture_field, to_x0_eps
from .train import TrainConfig, fit

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def figure_png(fig: Figure, dpi: int = 100, compress_level: int = 1) -> bytes:
    """The figure rendered to PNG bytes by Agg, independent of any pyplot backend.

    One render, encoded by Pillow at zlib level `compress_level` (1: a few percent larger than matplotlib's
    default level 6 and three times faster to write; an explorer sends its figure to the browser many times)."""
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    check_int("dpi", dpi, minimum=1)
    check_int("compress_level", compress_level, minimum=0)
    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return _canvas_png(canvas, compress_level)


def _canvas_png(canvas: FigureCanvasAgg, compress_level: int = 1) -> bytes:
    """What an Agg canvas holds now, as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(canvas.buffer_rgba())).save(buffer, format="png", compress_level=min(compress_level, 9))
    return buffer.getvalue()


def empty_panel(ax) -> None:
    """Remove what was drawn in `ax` (images, collections, lines, patches, bars, texts, legend, title), keeping the
    axes, their ticks and their colour bar, which the next `viz` call with `colorbar=` points at its new image."""
    mappables = [*ax.images, *ax.collections]
    ax.reused_colorbar = next((m.colorbar for m in mappables if m.colorbar is not None), None)
    for container in [*ax.containers]:  # bars: their patches and the container the legend reads
        container.remove()
    for artist in [*mappables, *ax.lines, *ax.patches, *ax.texts]:
        artist.remove()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    ax.set_title("")
    ax.set_axis_on()


class Explorer:
    """Shared plumbing: controls in a box above a status line and the figure, redrawn on every change."""

    def __init__(self, controls: list, status: bool = True, dpi: int = 100):
        self.dpi = dpi
        self.image = W.Image(format="png", layout=W.Layout(max_width="100%", height="auto"))
        self.status = W.HTML()
        self.draw_count = 0
        self._hold = False  # True while the explorer sets several controls itself: one redraw at the end
        self.data: dict[str, np.ndarray] = {}
        self._layouts: dict[tuple, list] = {}  # solved constrained layouts, by arrangement of panels (`render`)
        self._figures: dict = {}  # one figure per arrangement, reused by every redraw (`panels`)
        self._backgrounds: dict = {}  # a figure's image without its changing artists, by (id, name) (`render_over`)
        rows = [W.HBox(controls[i : i + 3]) for i in range(0, len(controls), 3)]
        self.widget = W.VBox(rows + ([self.status] if status else []) + [self.image])

    def observe(self, *controls) -> None:
        for control in controls:
            control.observe(lambda _change: self._hold or self.redraw(), names="value")

    def set_controls(self, values: dict) -> None:
        """Set several controls `{control: value}` and redraw once."""
        outer, self._hold = self._hold, True
        try:
            for control, value in values.items():
                control.value = value
        finally:
            self._hold = outer
        if not outer:
            self.redraw()

    def redraw(self) -> None:
        self.image.value = self.render(self.draw())
        self.draw_count += 1

    def panels(self, arrangement, figsize: tuple[float, float], **subplots_kwargs):
        """The figure and its two panels `(fig, (left, right))` for `arrangement` (a name for what the panels will
        hold): made the first time, then reused with their content removed. Axes, ticks and colour bars are kept,
        as building them is most of the cost of a fresh figure; a panel's colour bar is pointed at the new image
        instead of being added again (`viz.add_colorbar`)."""
        if arrangement not in self._figures:
            fig = Figure(figsize=figsize, layout="constrained")
            axes = tuple(fig.subplots(1, 2, **subplots_kwargs))
            for ax in axes:  # titles just above the panel (no ticks on top): skips matplotlib's search for a free spot
                ax.set_title("", y=1.0)
            self._figures[arrangement] = fig, axes
            return fig, axes
        fig, axes = self._figures[arrangement]
        for ax in axes:
            empty_panel(ax)
        return fig, axes

    def render(self, fig: Figure) -> bytes:
        """`fig` as PNG bytes. Its constrained layout is solved once per arrangement of panels (which axes, their
        title's number of lines, axis on or off) and reused for later figures of the same arrangement: solving it
        costs as much as drawing the figure, and a slider rarely changes the arrangement."""
        key = tuple((ax.get_label(), ax.get_title().count("\n"), ax.axison) for ax in fig.axes)
        positions = self._layouts.get(key)
        if positions is not None:
            fig.set_layout_engine("none")
            for ax, position in zip(fig.axes, positions):
                ax.set_position(position)
        png = figure_png(fig, self.dpi)
        if positions is None:
            self._layouts[key] = [ax.get_position() for ax in fig.axes]
        return png

    def render_over(self, fig: Figure, changing: list, still: str = "") -> bytes:
        """`fig` as PNG bytes when only the `changing` artists differ from one redraw to the next (matplotlib's
        blitting): the first call renders everything else once and keeps that image; every call restores it and
        draws only these artists over it. Axes, ticks, legends and still text, most of a render, are not drawn again.
        An explorer with several such images names each by `still` (what stays the same while it serves)."""
        key = (id(fig), still)
        background = self._backgrounds.get(key)
        if background is None:
            for artist in fig.findobj(lambda a: a.get_animated()):
                artist.set_animated(False)  # left out of another saved image, drawn in this one
            for artist in changing:
                artist.set_animated(True)  # left out of a full render
            Explorer.render(self, fig)  # the full render, whatever a subclass's `render` does
            background = self._backgrounds[key] = fig.canvas.copy_from_bbox(fig.bbox)
        fig.canvas.restore_region(background)
        for artist in sorted(changing, key=lambda a: a.get_zorder()):  # in the order a full render draws them
            fig.draw_artist(artist)
        return _canvas_png(fig.canvas)

    def draw(self) -> Figure:
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs):
        """The live widget for front ends with a widget manager; its current figure for everything else.

        A static page (nbconvert HTML, GitHub's viewer) shows the status line and the last figure as
        ordinary HTML; JupyterLab, Notebook 7, VS Code and Colab render the widget view instead.
        """
        bundle = self.widget._repr_mimebundle_(**kwargs)
        png = base64.b64encode(self.image.value).decode("ascii")
        status = f"<p>{self.status.value}</p>" if self.status.value else ""
        bundle["text/html"] = f'{status}<img src="data:image/png;base64,{png}" style="max-width: 100%">'
        bundle["text/plain"] = f"{type(self).__name__} (an interactive explorer: run the notebook to use its controls)"
        return bundle


def where_the_error_is(box_over_weighted: float, relative_fisher: float) -> str:
    """One honest sentence on where a learned score's squared error lives, from two averages of it:
    uniform over the plotted box, and weighted by p_sigma (the Fisher divergence); lesson 03 compares the same two.
    A factor of 3 either way counts as "lives there"; in between the sentence says the two are comparable."""
    if box_over_weighted >= 3:
        where = f"the error lives where p_σ is small: its box average is {box_over_weighted:.3g}× its p_σ-weighted average"
    elif box_over_weighted <= 1 / 3:
        where = f"the error is largest on the data: its box average is only {box_over_weighted:.2g}× its p_σ-weighted average"
    else:
        where = f"the error is about as large on the data as off it (box average {box_over_weighted:.2g}× the p_σ-weighted one)"
    if relative_fisher > 0.5:
        where += "; the network is poor even on the data at this σ"
    return where


class ScoreFieldExplorer(Explorer):
    """The exact score field of a ring mixture after Gaussian noise of level sigma, and a learned one.

    Controls: number of modes, spread (ring radius), imbalance (weight of mode k is
    proportional to (1 - imbalance)^k), noise level sigma, and whether to show a small
    noise-conditional network trained on the same mixture (button: train on the current
    mixture, a few seconds). Left panel: p_sigma and its exact score. Right panel: the
    error |s_theta(x, sigma) - grad log p_sigma(x)| with the learned field on top, on one logarithmic colour scale
    (`ERROR_SCALE`) at every sigma and mixture, so that its colours compare across redraws; the density's colours are
    scaled to each view's maximum (its colour bar says so), as p_sigma's peak falls over 10-fold across the sigma range.
    Used by `toy/score_field_explorer.ipynb`; lesson 01 explains what it shows.
    """

    ERROR_SCALE = (0.01, 100.0)  # the error map's colour range: from well on the data to far off it at small sigma

    def __init__(self, bounds=(-7.0, 7.0), resolution: int = 90, n_arrows: int = 19, train_steps: int = 2000, seed: int = 0):
        check_bounds(bounds)
        check_int("resolution", resolution, minimum=2)
        check_int("n_arrows", n_arrows, minimum=2)
        self.bounds, self.resolution, self.n_arrows = bounds, resolution, n_arrows
        self.train_config = TrainConfig(n_steps=train_steps, batch_size=512, lr=2e-3, seed=seed)
        self.sigmas = torch.logspace(np.log10(0.02), np.log10(3.0), 12)
        self.n_modes = W.IntSlider(value=3, min=1, max=8, description="modes")
        self.spread = W.FloatSlider(value=3.5, min=0.5, max=5.0, step=0.1, description="spread")
        self.imbalance = W.FloatSlider(value=0.3, min=0.0, max=0.9, step=0.05, description="imbalance")
        self.sigma = W.FloatLogSlider(value=0.1, base=10, min=-1.7, max=0.45, step=0.05, description="σ")
        self.show_model = W.Checkbox(value=False, description="learned field")
        self.train_button = W.Button(description="train on this mixture", icon="play", layout=W.Layout(width="auto"))
        self.train_button.on_click(lambda _button: self.train())
        self.model: ScoreMLP | None = None
        self._trained_on = None
        self._error_norm = LogNorm(*self.ERROR_SCALE, clip=True)  # one instance: the colour bar keeps its ticks
        # its bar labelled with plain numbers (0.01 ... 100) and no minor ticks: the default 10^k labels are mathtext,
        # laid out anew at every render, and 32 minor ticks are drawn each time (together ~40 ms of CPU a redraw)
        self._error_labels = FuncFormatter(lambda value, _position: f"{value:g}")
        super().__init__([self.n_modes, self.spread, self.imbalance, self.sigma, self.show_model, self.train_button])
        self.observe(self.n_modes, self.spread, self.imbalance, self.sigma, self.show_model)
        self.redraw()

    def _mixture_params(self):
        return (self.n_modes.value, self.spread.value, self.imbalance.value)

    def mixture(self):
        """The clean mixture the sliders describe."""
        n_modes, spread, imbalance = self._mixture_params()
        weights = (1 - imbalance) ** torch.arange(n_modes, dtype=torch.float64)
        return ring_mixture(n_modes, radius=spread, std=0.5, weights=weights / weights.sum())

    def train(self) -> list[float]:
        """Train a noise-conditional MLP on the current mixture with the NCSN loss; show its field."""
        torch.manual_seed(self.train_config.seed)
        self.model = ScoreMLP(2, hidden=96, n_layers=3, n_fourier=8, log_condition=True, divide_by_sigma=True)
        self.status.value = "training…"
        history = fit(
            self.model,
            lambda model, x, g: losses.ncsn(model, x, self.sigmas, generator=g),
            self.mixture().sample,
            self.train_config,
        )
        self._trained_on = self._mixture_params()
        if self.show_model.value:
            self.redraw()
        else:
            self.show_model.value = True  # the observer redraws
        return history

    def draw(self) -> Figure:
        sigma = self.sigma.value
        noisy = self.mixture().convolve(sigma)
        model_ready = self.model is not None and self._trained_on == self._mixture_params()
        fig, (left, right) = self.panels(self.show_model.value and model_ready, (8.4, 4.2))
        density = viz.plot_density(
            noisy,
            self.bounds,
            self.resolution,
            ax=left,
            title=f"p_σ and its score, σ = {sigma:.3g}",
            colorbar="density p_σ (scaled to this view's maximum)",
        )
        viz.plot_field(noisy.score, self.bounds, self.n_arrows, ax=left)
        self.data = {"density": density.get_array().data.copy()}
        if self.show_model.value and model_ready:
            sigma_batch = torch.tensor(sigma)

            def learned(x):
                return self.model(x, sigma_batch.expand(len(x)))

            error = viz.plot_score_error(
                learned,
                noisy.score,
                self.bounds,
                self.resolution,
                ax=right,
                density=noisy,
                title="learned field over its error\n(blue: log p_σ = −3, −6)",
                colorbar="|s_θ − ∇log p_σ| (log scale, the same at every σ)",
                norm=self._error_norm,
            )
            if error.colorbar.formatter is not self._error_labels:  # a new bar: plain labels, no minor ticks
                error.colorbar.formatter = self._error_labels
                error.colorbar.minorticks_off()
            viz.plot_field(learned, self.bounds, self.n_arrows, ax=right, **viz.ARROWS_ON_ERROR)
            fisher = fisher_divergence(learned, noisy, n=2000, generator=0)
            scale = fisher_divergence(lambda x: 0 * x, noisy, n=2000, generator=0).value  # E|grad log p_sigma|^2
            box_average = float((error.get_array().data ** 2).mean())  # the same squared error, uniform over the box
            self.data["error"] = error.get_array().data.copy()
            self.data["relative_fisher"] = fisher.value / scale
            self.data["box_over_weighted"] = box_average / fisher.value
            self.status.value = (
                f"Fisher divergence E_pσ|s_θ − ∇log p_σ|² = {fisher.value:.3g} ± {fisher.se:.1g}, "
                f"{100 * fisher.value / scale:.1f}% of E_pσ|∇log p_σ|²; "
                + where_the_error_is(box_average / fisher.value, fisher.value / scale)
            )
        else:
            right.set_axis_off()
            if self.model is None:
                hint = "press “train on this mixture” to learn this field"
            elif not model_ready:
                hint = "the model was trained on another mixture:\npress “train on this mixture”"
            else:
                hint = "tick “learned field” to compare"
            right.text(0.5, 0.5, hint, ha="center", va="center", transform=right.transAxes)
            self.status.value = ""
        return fig


class LangevinPlayground(Explorer):
    """Langevin or annealed Langevin particles on Song & Ermon's far-apart mixture, with the mode weights they recover.

    Controls: step size eps (for annealing: the step at the smallest level, alpha_i = eps sigma_i^2 / sigma_L^2),
    steps (per level when annealing), particles, the noise range sigma_max..sigma_min (30 geometric
    levels), annealing on/off, and the score: exact (the mixture's, noised to each level) or learned
    (a noise-conditional network trained once with the NCSN loss; plain Langevin uses it at sigma_min).
    Annealed runs start from N(0, sigma_max^2 I); plain Langevin starts from lesson 03's uniform box
    [-8, 8]^2. Switching annealing on or off loads settings that converge in that mode (`DEFAULTS`).
    Left: particles over the density. Right: recovered mode weights against the truth, and the
    fraction of particles that reached a mode (within distance 3 of a centre: 98.9% of a mode's mass),
    so that weights of particles that never moved are not mistaken for a result.
    Used by `toy/langevin_playground.ipynb`; lessons 03-04 explain what it shows.
    """

    #: (step size eps, steps) per mode: annealed, eps at sigma_min with 10 steps per level (30 levels: 300 steps;
    #: they give what 20 steps at 2e-3 give, small-mode weight 0.208 against 0.209 with SE 0.013, 98% of
    #: particles at a mode both ways, in half the time a redraw waits for); plain Langevin at sigma_min = 0.1,
    #: eps = 0.1 and 500 steps converges within a mode (0.497 small-mode fraction from the box: it keeps the
    #: box's split, which is the lesson)
    DEFAULTS = {True: (4e-3, 10), False: (0.1, 500)}
    REACHED_RADIUS = 3.0

    def __init__(self, n_levels: int = 30, train_steps: int = 2000, seed: int = 0, bounds=(-10.0, 10.0)):
        check_int("n_levels", n_levels, minimum=2)
        check_bounds(bounds)
        self.mixture = far_apart_mixture()
        self.n_levels, self.bounds, self.seed = n_levels, bounds, seed
        self.train_config = TrainConfig(n_steps=train_steps, batch_size=512, lr=2e-3, seed=seed)
        slider = {"continuous_update": False, "style": {"description_width": "initial"}}
        step_size, n_steps = self.DEFAULTS[True]
        self.step_size = W.FloatLogSlider(value=step_size, base=10, min=-5, max=0, step=0.1, description="step size ε", **slider)
        self.n_steps = W.IntSlider(value=n_steps, min=1, max=500, description="steps (per level)", **slider)
        self.n_particles = W.IntSlider(value=1000, min=100, max=5000, step=100, description="particles", **slider)
        self.sigma_max = W.FloatLogSlider(value=20.0, base=10, min=0, max=1.6, step=0.05, description="σ_max", **slider)
        self.sigma_min = W.FloatLogSlider(value=0.1, base=10, min=-2, max=0, step=0.05, description="σ_min", **slider)
        self.annealed = W.Checkbox(value=True, description="annealed")
        self.score_source = W.ToggleButtons(options=["exact", "learned"], value="exact", description="score")
        self.model: ScoreMLP | None = None
        self._parts = None  # (figure, left panel, particles, this run's bars): built by the first draw (`_build`)
        super().__init__([self.step_size, self.n_steps, self.n_particles, self.sigma_max, self.sigma_min, self.annealed, self.score_source])
        self.observe(self.step_size, self.n_steps, self.n_particles, self.sigma_max, self.sigma_min, self.score_source)
        self.annealed.observe(lambda change: self._switch_annealing(change["new"]), names="value")
        self.redraw()

    def _switch_annealing(self, annealed: bool) -> None:
        step_size, n_steps = self.DEFAULTS[annealed]
        self.set_controls({self.step_size: step_size, self.n_steps: n_steps})

    def train(self) -> list[float]:
        """Train the learned score: a noise-conditional MLP with the NCSN loss over 30 levels from 20 to 0.05."""
        torch.manual_seed(self.seed)
        self.model = ScoreMLP(2, hidden=96, n_layers=3, n_fourier=8, log_condition=True, divide_by_sigma=True)
        ema = EMA(self.model, decay=0.995)
        sigmas = noise.geometric_sigmas(20.0, 0.05, 30)
        history = fit(self.model, lambda m, x, g: losses.ncsn(m, x, sigmas, generator=g), self.mixture.sample, self.train_config, ema=ema)
        self.model = ema.module
        self.redraw()
        return history

    def sigmas(self) -> torch.Tensor:
        sigma_max, sigma_min = self.sigma_max.value, min(self.sigma_min.value, 0.99 * self.sigma_max.value)
        return noise.geometric_sigmas(sigma_max, sigma_min, self.n_levels)

    def run(self) -> torch.Tensor:
        """Sample with the current settings (seeded, so a redraw with the same settings is identical)."""
        sigmas = self.sigmas()
        learned = self.score_source.value == "learned" and self.model is not None
        noisy_score = self.model if learned else self.mixture.noisy_score
        generator = torch.Generator().manual_seed(self.seed)
        if self.annealed.value:
            start = self.sigma_max.value * torch.randn(self.n_particles.value, 2, generator=generator)
            return sampling.annealed_langevin(noisy_score, start, sigmas, self.step_size.value, self.n_steps.value, generator=self.seed + 1)
        start = 16 * torch.rand(self.n_particles.value, 2, generator=generator) - 8  # lesson 03's box
        sigma_min = torch.tensor(sigmas[-1].item())
        return sampling.langevin(
            lambda x: noisy_score(x, sigma_min.expand(len(x))), start, self.step_size.value, self.n_steps.value, generator=self.seed + 1
        )

    def _build(self):
        """The figure, drawn once: the density, the true weights, axes and legend; then the artists every redraw
        changes (the particles, this run's bars, the left title), which `render` draws over the rest."""
        fig, (left, right) = self.panels("particles, weights", (8.4, 4.0), width_ratios=[1.3, 1])
        viz.plot_density(self.mixture, self.bounds, ax=left)
        particles = viz.plot_samples(torch.zeros(0, 2), ax=left, bounds=self.bounds, s=4, alpha=0.7)
        left.set_title("\n")  # two lines, as every title here: the layout keeps room for them
        positions = np.arange(3)
        right.bar(positions - 0.2, [*self.mixture.weights.tolist(), 1.0], width=0.4, label="truth", color="0.6")
        bars = right.bar(positions + 0.2, [0.0] * 3, width=0.4, label="this run", color=viz.FIELD_COLOR).patches
        right.set(xticks=positions, xticklabels=["weight of\n(−5, −5)", "weight of\n(5, 5)", "reached\na mode"], ylim=(0, 1.05))
        right.set_title("mode weights (nearest mode)")
        right.legend(loc="upper left", fontsize="small")
        # after a diverged run the bars are hidden and this says why (no weights exist, not zero ones)
        diverged = right.text(0.5, 0.5, "diverged:\nno weights", ha="center", va="center", transform=right.transAxes,
                              fontsize="large", color="firebrick", visible=False)  # fmt: skip
        return fig, left, particles, [*bars, diverged]

    def render(self, fig: Figure) -> bytes:
        _, left, particles, artists = self._parts
        return self.render_over(fig, [particles, *artists, left.title])

    def draw(self) -> Figure:
        if self._parts is None:
            self._parts = self._build()
        fig, left, particles, (*bars, diverged) = self._parts
        try:
            x = self.run()
        except ValueError as err:  # divergence: say so instead of drawing NaNs or empty bars
            left.set_title("diverged\n")
            particles.set_offsets(np.empty((0, 2)))
            for bar in bars:
                bar.set_visible(False)
            diverged.set_visible(True)
            self.status.value = f"<b>{err}</b>"
            self.data = {"particles": np.empty((0, 2)), "weights": None, "reached": None, "diverged": True}
            return fig
        diverged.set_visible(False)
        nearest = self.mixture.responsibilities(x).argmax(1)
        counts = torch.bincount(nearest, minlength=2)
        weights = counts.double() / len(x)
        reached = ((x - self.mixture.means[nearest]).norm(dim=1) < self.REACHED_RADIUS).double().mean().item()
        particles.set_offsets(x.numpy())
        for bar, height in zip(bars, [*weights.tolist(), reached]):
            bar.set_height(height)
            bar.set_visible(True)
        mode = "annealed Langevin" if self.annealed.value else "Langevin"
        total = self.n_steps.value * (self.n_levels if self.annealed.value else 1)
        left.set_title(f"{mode}, {self.score_source.value} score, {total} steps\n{counts[0]} nearer (−5, −5), {counts[1]} nearer (5, 5)")
        se = np.sqrt(0.16 / len(x))
        self.data = {"particles": x.numpy(), "weights": weights.numpy(), "reached": reached, "diverged": False}
        hint = "" if self.score_source.value == "exact" or self.model is not None else " (no learned model yet: showing the exact score)"
        warning = "" if reached > 0.95 else " — most particles have not reached a mode yet: the weights mean nothing"
        self.status.value = (
            f"small mode: {weights[0]:.3f} (true 0.200, standard error {se:.3f}); "
            f"{100 * reached:.0f}% of particles within {self.REACHED_RADIUS:g} of a mode centre{warning}{hint}"
        )
        return fig


class SamplerRun(NamedTuple):
    """One run of `SDEExplorer`'s sampler: the final samples, `n_paths` paths `(saved states, n_paths, 2)` and their
    times, the score evaluations it made, and the samples' TV distance to p_0."""

    samples: torch.Tensor
    paths: torch.Tensor
    times: np.ndarray
    nfe: int
    tv: TVEstimate


class SDEExplorer(Explorer):
    """The marginals of a forward SDE started at a ring mixture, and samplers that run it backwards.

    Controls: the SDE (VE, VP, sub-VP, OU) or the linear path of flow matching (alpha = 1 - t, sigma = t: no SDE, so
    its sampler is the ODE dx/dt = u_t(x) alone), the time t as a fraction of T, the sampler (reverse SDE by
    predictor-corrector, or the probability-flow ODE), the Langevin corrector on/off, and the number of steps. Left:
    the exact marginal p_t and its score (for the linear path its exact velocity u_t, lesson 10). Right: sampler
    trajectories from x_T down to t = eps over p_0, and the final samples; the status line gives their TV distance to
    p_0 and their cost. The slider sets that cost, the number of score (velocity) evaluations N, in multiples of 4, so
    every sampler runs at equal cost: the reverse SDE takes N predictor steps, or N / 2 with the corrector (one
    Langevin step after each), plus its final denoising evaluation; the probability-flow ODE takes N / 4 RK4 steps
    (four evaluations each), and so does the linear path's ODE. The left panel's window follows t (it grows with
    VE's exploding variance: its axes say how far).
    Used by `toy/sde_explorer.ipynb`; lessons 05 and 10 explain what it shows.
    """

    EPS = 1e-3  # both samplers stop at t = EPS (the paths' time axis is built from it)
    LINEAR = "linear (FM)"  # the dropdown's name for flow matching's linear path

    def __init__(self, n_particles: int = 1000, n_paths: int = 15, seed: int = 0):
        check_int("n_particles", n_particles, minimum=1)
        check_int("n_paths", n_paths, minimum=0)
        check_int("seed", seed, minimum=0)
        self.mixture = ring_mixture(n_modes=4, radius=3.0, std=0.6)
        self.sdes = {"VE": sde_lib.VESDE(0.01, 10.0), "VP": sde_lib.VPSDE(), "sub-VP": sde_lib.SubVPSDE(), "OU": sde_lib.OUSDE(T=5.0)}
        self.sdes[self.LINEAR] = sde_lib.LinearPath()  # a path without an SDE: the ODE only (lesson 10)
        self.n_particles, self.n_paths, self.seed = n_particles, n_paths, seed
        slider = {"continuous_update": False}
        self.sde_name = W.Dropdown(options=list(self.sdes), value="VP", description="SDE")
        self.time = W.FloatSlider(value=0.3, min=0.0, max=1.0, step=0.01, description="t / T", **slider)
        self.sampler = W.ToggleButtons(
            options=["reverse SDE", "probability-flow ODE"], value="reverse SDE", description="sampler", style={"button_width": "auto"}
        )
        self.corrector = W.Checkbox(value=False, description="Langevin corrector")
        # the cost of every sampler in score evaluations (multiples of 4: RK4 takes N / 4 steps, the corrector N / 2)
        self.n_steps = W.IntSlider(value=200, min=4, max=1000, step=4, description="evaluations", **slider)
        self._last_run = None  # (settings, SamplerRun) of the last sampler run (`run`)
        self._drawn = None  # what the last `draw` drew: its run and view settings, dots, run artists, colour bar
        self._mode = "all"  # what the last `draw` drew again: "t", "run", "sampler", "both" or "all" (`render`)
        super().__init__([self.sde_name, self.time, self.n_steps, self.sampler, self.corrector])
        self.observe(self.sde_name, self.time, self.sampler, self.corrector, self.n_steps)
        self.redraw()

    @staticmethod
    def half_width(sde, t: float) -> float:
        """Half the side of the left panel at time t: at least the data's 6, and wide enough for p_t (4 m(t) + 3 sigma(t),
        rounded up to a multiple of 6 so the window steps rather than creeps as t moves)."""
        mean, std = sde.marginal_coeffs(torch.tensor(float(t), dtype=torch.float64))
        return 6.0 * math.ceil(max(1.0, (4 * mean + 3 * std).item() / 6.0))

    def has_sde(self) -> bool:
        """Whether the chosen path is an SDE (it has a reverse SDE and a score to draw), or a path with only its ODE."""
        return hasattr(self.sdes[self.sde_name.value], "diffusion")

    def sampler_name(self) -> str:
        """The sampler that runs: the one chosen, or the ODE for a path without an SDE."""
        return self.sampler.value if self.has_sde() else "probability-flow ODE"

    def run(self) -> SamplerRun:
        """The current sampler's run, seeded; the last run is kept, so moving t alone (which the sampler does not
        depend on) does not run it again."""
        key = (self.sde_name.value, self.sampler.value, self.corrector.value, self.n_steps.value)
        if self._last_run is None or self._last_run[0] != key:
            self._last_run = key, self._run()
        return self._last_run[1]

    def _run(self):
        sde = self.sdes[self.sde_name.value]
        if not self.has_sde():
            return self._run_flow(sde)
        exact, nfe = self.mixture.marginal_score(sde), [0]

        def score(x, t):  # counted: the status line gives each run's cost in score evaluations
            nfe[0] += 1
            return exact(x, t)

        score.precompute = exact.precompute  # the samplers tell it their time grid (`marginal_score`)

        x_T = sde.prior_sample((self.n_particles, 2), generator=self.seed)
        if self.sampler.value == "probability-flow ODE":
            # compared at equal cost: the slider's N score evaluations, so RK4 (four per step) takes N / 4 steps. At the
            # default 200 (50 RK4 steps), for every SDE, the samples lie within 1e-2 of a 2000-step solution's (a
            # quarter of a pixel here) and the paths within 4e-2
            rk4_steps = self.n_steps.value // 4
            path = sampling.ode_sample(score, sde, x_T, method="rk4", n_steps=rk4_steps, n_saved=60, eps=self.EPS)
            x, paths, times = path[-1], path[:, : self.n_paths], np.linspace(sde.T, self.EPS, len(path))
        else:
            kept, times = [x_T[: self.n_paths]], [sde.T]

            def keep(state):
                kept.append(state["x"][: self.n_paths])
                times.append(state["t"])

            corrector = "langevin" if self.corrector.value else None  # one corrector step each: half the predictor steps
            n_predictor = self.n_steps.value // 2 if corrector else self.n_steps.value
            x = sampling.pc_sample(score, sde, x_T, n_predictor, corrector=corrector, eps=self.EPS, generator=self.seed + 1, callback=keep)
            paths, times = torch.stack(kept), np.array(times)
        return SamplerRun(x, paths, times, nfe[0], tv_grid(x, self.mixture, bounds=(-6, 6), bins=20))

    def _run_flow(self, path):
        """The ODE dx/dt = u_t(x) of a path without an SDE, by the same RK4 steps as the SDEs' probability-flow ODE
        (equal evaluations). u_t is the exact velocity, alpha_dot x0_hat + sigma_dot eps_hat with both posterior means
        from the exact score of p_t (Tweedie: `paths.to_x0_eps`), the mixture's fast shared-time score; dividing by
        alpha, so the run starts at t = T - EPS (alpha = EPS on the linear path; p_t there is N(0, I) to 1e-3)."""
        t_max, nfe = path.T - self.EPS, [0]

        def flow(t, y):
            nfe[0] += 1
            time = torch.tensor(t, dtype=torch.float64)
            coefficients = tuple(c.item() for c in (*path.marginal_coeffs(time), *path.marginal_coeffs_dot(time)))
            score = self.mixture._score_of_affine(y, *coefficients[:2])
            return from_x0_eps(*to_x0_eps(score, y, coefficients, "score"), coefficients, "velocity")

        x_T = path.prior_sample((self.n_particles, 2), generator=self.seed)
        with torch.no_grad():
            path_states = sampling.integrate_ode(
                flow, x_T, t_max, self.EPS, method="rk4", rtol=1e-5, atol=1e-5, n_steps=self.n_steps.value // 4,
                interval=(self.EPS, t_max), n_saved=60,
            )  # fmt: skip
        x, times = path_states[-1], np.linspace(t_max, self.EPS, len(path_states))
        return SamplerRun(x, path_states[:, : self.n_paths], times, nfe[0], tv_grid(x, self.mixture, bounds=(-6, 6), bins=20))

    def draw(self) -> Figure:
        sde = self.sdes[self.sde_name.value]
        t = self.time.value * sde.T
        self.corrector.disabled = self.sampler_name() != "reverse SDE"
        self.sampler.disabled = not self.has_sde()
        x, paths, times, nfe, tv = self.run()
        run, view = self._last_run[0], (self.sde_name.value, self.time.value, self.sampler.value)
        # what to draw again: only t moved ("t": the left panel and the dots), only the run changed with the same
        # SDE, t and sampler ("run": the paths, samples and dots), the sampler changed ("sampler": those and the right
        # panel's title), or the SDE changed ("both": all of these; the p_0 image and the right panel's frame stay);
        # the first draw is "all"
        drawn = self._drawn
        if drawn is None:
            self._mode = "all"
        elif drawn["run"] == run:
            self._mode = "t"
        else:
            self._mode = "run" if drawn["view"] == view else "sampler" if drawn["view"][:2] == view[:2] else "both"
        ode_only = "ODE dx/dt = u_t(x)" if not self.has_sde() else self.sampler_name()  # the linear path: its velocity's ODE
        right_title = f"{ode_only} over p_0\n(paths from T; dots at t)"
        if self._mode == "all":
            fig, (left, right) = self.panels("marginal, sampler", (8.4, 4.2))
            viz.plot_density(self.mixture, (-6, 6), 80, ax=right, title=right_title)
        else:
            fig, (left, right) = self._figures["marginal, sampler"]
            right.title.set_text(right_title)
            drawn["dots"].remove()
        if self._mode in ("run", "sampler", "both"):
            for artist in drawn["run artists"]:
                artist.remove()
        if self._mode != "t":
            run_artists = [viz.plot_paths(paths, ax=right), viz.plot_samples(x, ax=right, bounds=(-6, 6), s=3)]
        else:
            run_artists = drawn["run artists"]
        if self._mode not in ("run", "sampler"):
            if self._mode != "all":
                empty_panel(left)
            half = self.half_width(sde, t)
            mean_scale, std = (c.item() for c in sde.marginal_coeffs(t))
            title = f"{self.sde_name.value}: p_t at t = {t:.3g}\nmean scale m(t) = {mean_scale:.2f}, σ(t) = {std:.2f}"
            if self.has_sde():
                marginal = self.mixture.marginal(sde, t)
                field = marginal.score
            else:  # p_t = the mixture scaled by 1 - t plus noise t (N(0, I) at t = 1); arrows: the velocity u_t
                marginal, velocity = self.mixture.affine(max(mean_scale, 1e-12), std), mixture_field(self.mixture, sde)
                field = lambda x: velocity(x, t)  # noqa: E731
                title = title.replace(": p_t at", ": p_t, arrows u_t at", 1)  # u_t points towards noise: not a score
            viz.plot_density(marginal, (-half, half), 80, ax=left, title=title, colorbar="density p_t")
            viz.plot_field(field, (-half, half), 17, ax=left)
        density = left.images[0]
        now = int(np.abs(times - t).argmin())  # the saved state nearest to the slider's t
        dots = right.scatter(paths[now, :, 0], paths[now, :, 1], s=22, color="w", edgecolors="k", linewidths=0.8, zorder=3)
        self._drawn = {"run": run, "view": view, "dots": dots, "run artists": run_artists, "colorbar": density.colorbar.ax}
        n = self.n_steps.value
        if self.sampler_name() == "probability-flow ODE":
            steps = f" ({n // 4} RK4 step{'s' * (n // 4 != 1)})"
        elif self.corrector.value:
            steps = f" ({n // 2} predictor and {n // 2} corrector steps, then one to denoise)"
        else:
            steps = f" ({n} predictor steps, then one to denoise)"
        self.data = {
            "density": density.get_array().data.copy(), "samples": x.numpy(), "paths": paths.numpy(), "tv": tv, "now": now, "nfe": nfe
        }  # fmt: skip
        self.status.value = (
            f"TV(samples, p_0) = {tv.tv:.3f}; an exact sampler of {len(x)} points scores {tv.floor:.3f} ± {tv.spread:.3f}. "
            f"{nfe} {'score' if self.has_sde() else 'velocity'} evaluations{steps}. White dots: the paths at t = {times[now]:.3g}."
        )
        return fig

    def render(self, fig: Figure) -> bytes:
        """Only what a control changed is drawn again (`render_over`), over a saved image of the rest: moving t
        changes the left panel, its colour bar and the dots; a new run with the same SDE, t and sampler (steps, the
        corrector) changes the paths, samples and dots; a new sampler those and the right panel's title; a new SDE
        all of these. Each saved image is made the first time it serves, and dropped when what it holds changes."""
        drawn, (left, right) = self._drawn, self._figures["marginal, sampler"][1]
        if self._mode == "all":
            self._backgrounds.clear()
            for artist in fig.findobj(lambda a: a.get_animated()):
                artist.set_animated(False)
            return Explorer.render(self, fig)
        left_part, dots = [left, drawn["colorbar"]], [drawn["dots"]]
        # the right panel's frame is drawn with the run: a full render draws it over the paths (zorder 2.5 against 2)
        run_part = [*drawn["run artists"], *right.spines.values()]
        titled_run = run_part + dots + [right.title]
        changing = {"t": left_part + dots, "run": run_part + dots, "sampler": titled_run, "both": left_part + titled_run}[self._mode]
        # a saved image holds what the others redraw: the run ("t"'s) is stale when the run changed, the left panel
        # ("run"'s and "sampler"'s) when t or the SDE did, the right panel's title ("t"'s and "run"'s) when the sampler
        # did; "both"'s holds only what never changes
        stale_ones = {"t": ("run", "sampler"), "run": ("t",), "sampler": ("t", "run"), "both": ("t", "run", "sampler")}
        for stale in stale_ones[self._mode]:
            self._backgrounds.pop((id(fig), stale), None)
        return self.render_over(fig, changing, still=self._mode)
