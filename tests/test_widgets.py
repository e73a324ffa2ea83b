"""The explorers, driven headlessly: change a control, check the redraw, its data and the PNG it shows."""

import base64
import io

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from scorelab import viz
from scorelab.datasets import ring_mixture
from scorelab.widgets import PNG_SIGNATURE, LangevinPlayground, ScoreFieldExplorer, SDEExplorer, where_the_error_is


def redraw_and_check_image(explorer, control, value):
    """Set a control; the explorer must redraw once and show a new PNG (what a student sees, not just data)."""
    count, image = explorer.draw_count, explorer.image.value
    control.value = value
    assert explorer.draw_count == count + 1, control.description
    assert explorer.image.format == "png" and bytes(explorer.image.value).startswith(PNG_SIGNATURE), control.description
    assert bytes(explorer.image.value) != bytes(image), control.description


@pytest.mark.parametrize("make", [lambda: ScoreFieldExplorer(resolution=20, n_arrows=5), lambda: SDEExplorer(n_particles=200)])
def test_display_bundle_has_the_widget_and_a_static_figure(make):
    explorer = make()
    bundle = explorer._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == explorer.widget.model_id
    png = base64.b64encode(explorer.image.value).decode("ascii")
    assert f"data:image/png;base64,{png}" in bundle["text/html"]  # a static page shows the current figure
    assert "Figure size" not in bundle["text/plain"]


@pytest.fixture(scope="module")
def explorer():
    return ScoreFieldExplorer(resolution=40, n_arrows=9, train_steps=1500)


def test_each_control_redraws_with_new_data(explorer):
    for control, value in [(explorer.sigma, 0.5), (explorer.n_modes, 5), (explorer.spread, 2.0), (explorer.imbalance, 0.7)]:
        density = explorer.data["density"]
        redraw_and_check_image(explorer, control, value)
        assert not np.allclose(explorer.data["density"], density)


def test_density_panel_is_the_noised_mixture(explorer):
    explorer.sigma.value = 0.3
    noisy = explorer.mixture().convolve(explorer.sigma.value)
    expected = viz.evaluate_on_grid(lambda x: noisy.log_prob(x).exp(), explorer.bounds, explorer.resolution)
    np.testing.assert_allclose(explorer.data["density"], expected, rtol=1e-5, atol=1e-8)


def test_training_shows_the_learned_field_and_its_error(explorer):
    assert "error" not in explorer.data
    explorer.train()
    assert explorer.show_model.value
    assert "error" in explorer.data and np.isfinite(explorer.data["error"]).all()
    assert "Fisher divergence" in explorer.status.value
    # relative Fisher divergence: a zero field scores 1. sigma = 0.1 lies between two of the 12 training
    # levels, so the model must interpolate in sigma (too-fast Fourier features scored 1.9 there; now ~0.05)
    for sigma in (0.3, 0.1):
        explorer.sigma.value = sigma
        assert explorer.data["relative_fisher"] < 0.25, sigma
    # changing the mixture makes the model stale: no error map, a hint instead
    explorer.n_modes.value = explorer.n_modes.value - 1
    assert "error" not in explorer.data
    # the same mixture again: the trained model is shown again
    explorer.n_modes.value = explorer.n_modes.value + 1
    assert "error" in explorer.data


def test_status_says_where_the_error_is_from_its_numbers(explorer):
    """The claim in the status line follows the two averages it reports, at every sigma (not a fixed sentence)."""
    if explorer.model is None or not explorer.show_model.value:
        explorer.train()
    sentences = set()
    for sigma in (0.02, 0.3, 2.8):
        explorer.sigma.value = sigma
        ratio, status = explorer.data["box_over_weighted"], explorer.status.value
        if ratio >= 3:
            assert "lives where p_σ is small" in status, (sigma, ratio)
        else:
            assert "lives where p_σ is small" not in status, (sigma, ratio)
        assert ("poor even on the data" in status) == (explorer.data["relative_fisher"] > 0.5), sigma
        sentences.add(status.split("; ")[1].split(":")[0].split(" (")[0])
    assert len(sentences) > 1  # the text changes with sigma: small sigma is off-data error, sigma ~ spread is uniform


def test_error_colours_mean_the_same_at_every_sigma(explorer):
    """The error map keeps one logarithmic colour scale and one colour bar across redraws, while the error itself
    spans decades between a small and a large sigma (a per-redraw scale would stretch each map to its own range);
    the density, whose peak falls over 10-fold across the sigma range, says that its colours are scaled per view."""
    from matplotlib.colors import LogNorm

    if explorer.model is None or not explorer.show_model.value:
        explorer.train()
    bars, largest, peaks = set(), [], []
    for sigma in (0.02, 2.8):
        explorer.sigma.value = sigma
        left, right = explorer.draw().axes[:2]
        image = right.images[0]
        assert isinstance(image.norm, LogNorm) and (image.norm.vmin, image.norm.vmax) == ScoreFieldExplorer.ERROR_SCALE
        assert image.colorbar.norm is image.norm
        bars.add(id(image.colorbar))
        largest.append(float(explorer.data["error"].max()))
        peaks.append(float(explorer.data["density"].max()))
        assert "scaled to this view's maximum" in left.images[0].colorbar.ax.get_ylabel()
    assert len(bars) == 1  # the same bar, pointed at each new map
    assert largest[0] > 10 * largest[1]  # ...over errors decades apart
    assert peaks[0] > 10 * peaks[1]


def test_where_the_error_is_covers_each_case():
    assert where_the_error_is(10.0, 0.1).startswith("the error lives where p_σ is small")
    assert where_the_error_is(0.2, 0.1).startswith("the error is largest on the data")
    assert where_the_error_is(1.0, 0.1).startswith("the error is about as large")
    assert where_the_error_is(10.0, 1.9).endswith("poor even on the data at this σ")


def test_train_button_trains(explorer):
    explorer.spread.value = 3.0
    count = explorer.draw_count
    explorer.train_button.click()
    assert explorer.draw_count > count and "error" in explorer.data


@pytest.fixture(scope="module")
def playground():
    return LangevinPlayground(train_steps=300)


def test_playground_controls_rerun_the_sampler(playground):
    for control, value in [
        (playground.n_steps, 15),
        (playground.n_particles, 500),
        (playground.step_size, 1e-3),
        (playground.sigma_min, 0.2),
    ]:
        particles = playground.data["particles"]
        redraw_and_check_image(playground, control, value)
        assert not np.array_equal(playground.data["particles"], particles)
    assert playground.data["particles"].shape == (500, 2)


def test_playground_shows_the_annealing_effect(playground):
    playground.n_particles.value, playground.n_steps.value, playground.step_size.value = 2000, 20, 2e-3
    playground.sigma_max.value, playground.sigma_min.value = 20.0, 0.1
    annealed_small = playground.data["weights"][0]
    assert playground.data["reached"] > 0.95
    count = playground.draw_count
    playground.annealed.value = False  # loads plain Langevin's own settings, one redraw
    assert playground.draw_count == count + 1
    assert (playground.step_size.value, playground.n_steps.value) == LangevinPlayground.DEFAULTS[False]
    plain_small = playground.data["weights"][0]
    se = np.sqrt(0.16 / 2000)
    assert abs(annealed_small - 0.2) < 0.02 + 4 * se  # 30 levels: annealing bias 0.014 measured with 20 000 particles
    # plain Langevin from the uniform box converges within a mode and keeps the box's split: 1/2, not 1/5
    assert playground.data["reached"] > 0.95 and abs(plain_small - 0.5) < 4 * np.sqrt(0.25 / 2000)
    playground.annealed.value = True
    assert (playground.step_size.value, playground.n_steps.value) == LangevinPlayground.DEFAULTS[True]


def test_playground_says_when_particles_have_not_arrived(playground):
    """Weights of particles that never reached a mode are flagged, not shown as a result (the old default did that)."""
    playground.set_controls({playground.annealed: False, playground.step_size: 2e-3, playground.n_steps: 20})
    assert playground.data["reached"] < 0.5 and "the weights mean nothing" in playground.status.value
    playground.annealed.value = True


def test_playground_divergence_is_reported_not_drawn(playground):
    # annealed, eps = 1: alpha_0 = eps sigma_max^2 / sigma_min^2 = 40 000 on a level of variance ~401 diverges
    playground.sigma_max.value, playground.sigma_min.value, playground.annealed.value = 20.0, 0.1, True
    playground.step_size.value = 1.0
    assert "non-finite" in playground.status.value and "reduce step_size" in playground.status.value
    # no bars (neither NaN nor zero heights, which would read as "0 % reached"), a visible word instead
    *bars, diverged = playground._parts[3]
    assert playground.data["diverged"] and playground.data["reached"] is None
    assert not any(bar.get_visible() for bar in bars) and diverged.get_visible()
    playground.step_size.value = LangevinPlayground.DEFAULTS[True][0]  # a run that converges brings them back
    assert not playground.data["diverged"] and all(bar.get_visible() for bar in bars) and not diverged.get_visible()


def test_playground_learned_score(playground):
    playground.n_steps.value, playground.step_size.value, playground.n_particles.value = 20, 2e-3, 500
    playground.train()
    playground.score_source.value = "learned"
    assert np.isfinite(playground.data["particles"]).all() and "no learned model" not in playground.status.value


@pytest.fixture(scope="module")
def sde_explorer():
    return SDEExplorer(n_particles=500)


def test_sde_explorer_controls_redraw(sde_explorer):
    for control, value in [
        (sde_explorer.time, 0.8),
        (sde_explorer.sde_name, "VE"),
        (sde_explorer.n_steps, 100),
        (sde_explorer.corrector, True),
    ]:
        density, samples = sde_explorer.data["density"], sde_explorer.data["samples"]
        redraw_and_check_image(sde_explorer, control, value)
        changed = not np.array_equal(sde_explorer.data["density"], density) or not np.array_equal(sde_explorer.data["samples"], samples)
        assert changed, control.description


def test_sde_explorer_window_follows_t_and_the_dots_mark_it(sde_explorer):
    """The left panel is as wide as p_t needs (VE's exploding variance widens it; VP stays at the data's 6); the dots
    follow the slider."""
    ve, vp = sde_explorer.sdes["VE"], sde_explorer.sdes["VP"]
    assert SDEExplorer.half_width(ve, 0.3) == 6.0 and SDEExplorer.half_width(ve, 1.0) >= 30  # sigma(1) = 10
    assert {SDEExplorer.half_width(vp, t) for t in (0.0, 0.3, 1.0)} == {6.0}
    sde_explorer.set_controls({sde_explorer.sde_name: "VE", sde_explorer.time: 1.0})
    left = sde_explorer._figures["marginal, sampler"][1][0]
    assert left.get_xlim()[1] >= 30
    sde_explorer.time.value = 0.3
    assert left.get_xlim()[1] == pytest.approx(6.0, abs=0.5)
    sde_explorer.sde_name.value, sde_explorer.sampler.value = "VP", "reverse SDE"
    nows = []
    for fraction in (0.9, 0.5, 0.1):
        sde_explorer.time.value = fraction
        nows.append(sde_explorer.data["now"])
    assert nows == sorted(nows) and len(set(nows)) == 3  # paths run from T down: later index, smaller t


def test_sde_explorer_samplers_reach_the_mixture(sde_explorer):
    sde_explorer.sde_name.value, sde_explorer.n_steps.value, sde_explorer.corrector.value = "VP", 300, False
    for name in ("VP", "OU"):
        sde_explorer.sde_name.value = name
        for sampler in ("reverse SDE", "probability-flow ODE"):
            sde_explorer.sampler.value = sampler
            tv = sde_explorer.data["tv"]
            assert tv.tv < tv.floor + 4 * tv.spread, (name, sampler, tv)
            assert sde_explorer.data["paths"].shape[1:] == (15, 2)
        assert sde_explorer.corrector.disabled  # no corrector for the ODE
        sde_explorer.sampler.value = "reverse SDE"
        assert not sde_explorer.corrector.disabled


def test_sde_explorer_compares_the_samplers_at_equal_cost(sde_explorer):
    """The slider is the cost N in score evaluations: N predictor steps, or N / 2 with one corrector step each, plus
    the final denoising evaluation; RK4 takes N / 4 steps. The status line says the cost and the steps."""
    sde_explorer.set_controls({sde_explorer.sde_name: "VP", sde_explorer.n_steps: 120, sde_explorer.corrector: False})
    costs = {}
    for sampler, corrector in [("reverse SDE", False), ("reverse SDE", True), ("probability-flow ODE", True)]:
        sde_explorer.set_controls({sde_explorer.sampler: sampler, sde_explorer.corrector: corrector})
        costs[sampler, corrector] = sde_explorer.data["nfe"]
        assert f"{costs[sampler, corrector]} score evaluations" in sde_explorer.status.value
        if sampler == "reverse SDE":
            assert ("60 predictor and 60 corrector steps" if corrector else "120 predictor steps") in sde_explorer.status.value
    assert costs == {("reverse SDE", False): 121, ("reverse SDE", True): 121, ("probability-flow ODE", True): 120}
    assert "30 RK4 steps" in sde_explorer.status.value
    assert sde_explorer.n_steps.step == 4 and sde_explorer.n_steps.min % 4 == 0 and sde_explorer.n_steps.max % 4 == 0
    sde_explorer.set_controls({sde_explorer.sampler: "reverse SDE", sde_explorer.corrector: False})


def test_score_error_map_is_the_error_and_marks_the_data():
    """viz.plot_score_error: the image is |s - reference| on the grid, and the density's contours are drawn."""
    mix = ring_mixture(3, radius=3.5, std=0.5)
    shifted = lambda x: mix.score(x) + 1.0  # error sqrt(2) everywhere
    image = viz.plot_score_error(shifted, mix.score, (-6, 6), 20, density=mix)
    np.testing.assert_allclose(image.get_array().data, np.sqrt(2), rtol=1e-5)
    assert len(image.axes.collections) > 0  # the contours of log p


def test_paths_are_a_line_per_path_drawn_over_the_samples():
    paths = torch.randn(30, 5, 2, generator=torch.Generator().manual_seed(0))
    lines = viz.plot_paths(paths)
    samples = viz.plot_samples(paths[-1], ax=lines.axes)
    assert len(lines.get_segments()) == 5
    for segment, path in zip(lines.get_segments(), paths.unbind(1)):
        np.testing.assert_array_equal(segment, path.numpy())
    assert lines.get_zorder() > samples.get_zorder()
    plt.close(lines.axes.figure)


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png))).astype(int)


def test_redraws_that_draw_only_what_changed_equal_a_full_render_pixel_for_pixel():
    """The explorers redraw only what a control changed over a saved image of the rest (`Explorer.render_over`); the
    picture must be exactly the one a new explorer renders in full at the same settings, whatever came before."""
    explorer = SDEExplorer(n_particles=300)
    settings = ("sde_name", "time", "sampler", "corrector", "n_steps")
    moves = [("time", 0.6), ("n_steps", 100), ("time", 0.2), ("corrector", True), ("sde_name", "VE"), ("n_steps", 60)]
    moves += [("sampler", "probability-flow ODE"), ("time", 0.4), ("sampler", "reverse SDE"), ("n_steps", 80), ("sde_name", "OU")]
    for name, value in moves:
        getattr(explorer, name).value = value
        fresh = SDEExplorer(n_particles=300)
        fresh.set_controls({getattr(fresh, k): getattr(explorer, k).value for k in settings})
        assert np.array_equal(_pixels(explorer.image.value), _pixels(fresh.image.value)), (name, value, explorer._mode)
    playground = LangevinPlayground(train_steps=10)
    for name, value in [("n_particles", 300), ("step_size", 1.0), ("step_size", 3e-3)]:
        getattr(playground, name).value = value
        fresh = LangevinPlayground(train_steps=10)
        fresh.set_controls({fresh.n_particles: playground.n_particles.value, fresh.step_size: playground.step_size.value})
        assert np.array_equal(_pixels(playground.image.value), _pixels(fresh.image.value)), (name, value)


def test_sde_explorer_has_the_linear_path_with_its_velocity_and_ode_at_equal_cost(sde_explorer):
    """Flow matching's linear path beside the SDEs (lesson 10): no reverse SDE, so the ODE alone, by the same RK4 steps
    (equal evaluations); its exact velocity as the arrows; it reaches the mixture; t = 1 (alpha = 0) draws."""
    sde_explorer.set_controls({sde_explorer.sde_name: "VP", sde_explorer.n_steps: 200, sde_explorer.sampler: "probability-flow ODE"})
    vp_cost = sde_explorer.data["nfe"]
    redraw_and_check_image(sde_explorer, sde_explorer.sde_name, SDEExplorer.LINEAR)
    assert sde_explorer.sampler.disabled and sde_explorer.corrector.disabled
    assert sde_explorer.data["nfe"] == vp_cost == 200
    tv = sde_explorer.data["tv"]
    assert tv.tv < tv.floor + 4 * tv.spread
    sde_explorer.sampler.value = "reverse SDE"  # disabled in the browser; if set anyway, the ODE still runs
    right_title = sde_explorer._figures["marginal, sampler"][1][1].get_title()
    assert sde_explorer.data["nfe"] == 200 and right_title.startswith("ODE dx/dt = u_t(x)")
    assert "200 velocity evaluations" in sde_explorer.status.value
    redraw_and_check_image(sde_explorer, sde_explorer.time, 1.0)
    assert np.isfinite(sde_explorer.data["density"]).all()
    sde_explorer.set_controls({sde_explorer.sde_name: "VP", sde_explorer.time: 0.3})
    assert not sde_explorer.sampler.disabled
