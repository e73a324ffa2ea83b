"""The explorers, driven headlessly: change a control, check the redraw and its data."""

import numpy as np
import pytest

from scorelab.widgets import ScoreFieldExplorer


@pytest.fixture(scope="module")
def explorer():
    return ScoreFieldExplorer(resolution=40, n_arrows=9, train_steps=1500)


def test_each_control_redraws_with_new_data(explorer):
    for control, value in [(explorer.sigma, 0.5), (explorer.n_modes, 5), (explorer.spread, 2.0), (explorer.imbalance, 0.7)]:
        count, density = explorer.draw_count, explorer.data["density"]
        control.value = value
        assert explorer.draw_count == count + 1
        assert not np.allclose(explorer.data["density"], density)


def test_density_panel_is_the_noised_mixture(explorer):
    explorer.sigma.value = 0.3
    expected = explorer.mixture().convolve(explorer.sigma.value)
    assert explorer.data["density"].max() == pytest.approx(expected.log_prob(expected.means).exp().max().item(), rel=0.2)


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


def test_train_button_trains(explorer):
    explorer.spread.value = 3.0
    count = explorer.draw_count
    explorer.train_button.click()
    assert explorer.draw_count > count and "error" in explorer.data
