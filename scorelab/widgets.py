"""Interactive explorers for the `toy/` notebooks (ipywidgets 8).

The logic lives here, not in the notebooks, so pytest can drive every explorer
headlessly: set a control's value, and check that `draw_count` went up and the arrays
in `data` changed. Each explorer shows itself when it is the last expression of a cell.
"""

from __future__ import annotations

import ipywidgets as W
import numpy as np
import torch
from IPython.display import clear_output, display
from matplotlib.figure import Figure

from . import losses, viz
from .datasets import ring_mixture
from .metrics import fisher_divergence
from .nets import ScoreMLP
from .train import TrainConfig, fit


class Explorer:
    """Shared plumbing: controls in a box above an output area, redrawn on every change."""

    def __init__(self, controls: list, status: bool = True):
        self.output = W.Output()
        self.status = W.HTML()
        self.draw_count = 0
        self.data: dict[str, np.ndarray] = {}
        rows = [W.HBox(controls[i : i + 3]) for i in range(0, len(controls), 3)]
        self.widget = W.VBox(rows + ([self.status] if status else []) + [self.output])

    def observe(self, *controls) -> None:
        for control in controls:
            control.observe(lambda _change: self.redraw(), names="value")

    def redraw(self) -> None:
        fig = self.draw()
        self.draw_count += 1
        with self.output:
            clear_output(wait=True)
            display(fig)

    def draw(self) -> Figure:
        raise NotImplementedError

    def _ipython_display_(self):
        display(self.widget)


class ScoreFieldExplorer(Explorer):
    """The exact score field of a ring mixture after Gaussian noise of level sigma, and a learned one.

    Controls: number of modes, spread (ring radius), imbalance (weight of mode k is
    proportional to (1 - imbalance)^k), noise level sigma, and whether to show a small
    noise-conditional network trained on the same mixture (button: train on the current
    mixture, a few seconds). Left panel: p_sigma and its exact score. Right panel: the
    error |s_theta(x, sigma) - grad log p_sigma(x)| with the learned field on top.
    Used by `toy/score_field_explorer.ipynb`; lesson 01 explains what it shows.
    """

    def __init__(self, bounds=(-7.0, 7.0), resolution: int = 90, n_arrows: int = 19, train_steps: int = 2000, seed: int = 0):
        self.bounds, self.resolution, self.n_arrows = bounds, resolution, n_arrows
        self.train_config = TrainConfig(n_steps=train_steps, batch_size=512, lr=2e-3, seed=seed)
        self.sigmas = torch.logspace(np.log10(0.02), np.log10(3.0), 12)
        self.n_modes = W.IntSlider(value=3, min=1, max=8, description="modes")
        self.spread = W.FloatSlider(value=3.5, min=0.5, max=5.0, step=0.1, description="spread")
        self.imbalance = W.FloatSlider(value=0.3, min=0.0, max=0.9, step=0.05, description="imbalance")
        self.sigma = W.FloatLogSlider(value=0.1, base=10, min=-1.7, max=0.45, step=0.05, description="σ")
        self.show_model = W.Checkbox(value=False, description="learned field")
        self.train_button = W.Button(description="train on this mixture", icon="play")
        self.train_button.on_click(lambda _button: self.train())
        self.model: ScoreMLP | None = None
        self._trained_on = None
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
        self.show_model.value = True  # redraws through the observer when it changes
        self.redraw()
        return history

    def draw(self) -> Figure:
        sigma = self.sigma.value
        noisy = self.mixture().convolve(sigma)
        fig = Figure(figsize=(8.4, 4.2), layout="constrained")
        left, right = fig.subplots(1, 2)
        density = viz.plot_density(noisy, self.bounds, self.resolution, ax=left, title=f"p_σ and its score, σ = {sigma:.3g}")
        viz.plot_field(noisy.score, self.bounds, self.n_arrows, ax=left)
        self.data = {"density": density.get_array().data.copy()}
        model_ready = self.model is not None and self._trained_on == self._mixture_params()
        if self.show_model.value and model_ready:
            sigma_batch = torch.tensor(sigma)

            def learned(x):
                return self.model(x, sigma_batch.expand(len(x)))

            error = viz.plot_heatmap(
                lambda x: (learned(x) - noisy.score(x)).norm(dim=1),
                self.bounds,
                self.resolution,
                ax=right,
                cmap=viz.ERROR_CMAP,
                title="learned field over its error |s_θ − ∇log p_σ|",
            )
            viz.plot_field(learned, self.bounds, self.n_arrows, ax=right, color="k")
            fig.colorbar(error, ax=right, shrink=0.8)
            fisher = fisher_divergence(learned, noisy, n=2000, generator=0)
            scale = fisher_divergence(lambda x: 0 * x, noisy, n=2000, generator=0).value  # E|grad log p_sigma|^2
            self.data["error"] = error.get_array().data.copy()
            self.data["relative_fisher"] = fisher.value / scale
            self.status.value = (
                f"Fisher divergence E_pσ|s_θ − ∇log p_σ|² = {fisher.value:.3g} ± {fisher.se:.1g}, "
                f"{100 * fisher.value / scale:.1f}% of E_pσ|∇log p_σ|²: the error lives where p_σ is small"
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
