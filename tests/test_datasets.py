"""Toy samplers: shapes, determinism, and the geometry each one promises."""

import math

import pytest
import torch

from scorelab import datasets


@pytest.mark.parametrize("name", sorted(datasets.SAMPLERS))
def test_sampler_shape_dtype_and_determinism(name):
    sampler = datasets.SAMPLERS[name]
    x = sampler(300, generator=1)
    assert x.shape == (300, 2) and x.dtype == torch.get_default_dtype() and torch.isfinite(x).all()
    assert torch.equal(x, sampler(300, generator=1))
    assert not torch.equal(x, sampler(300, generator=2))
    assert sampler(10, generator=0, dtype=torch.float64).dtype == torch.float64


def test_curve_points_lie_exactly_on_the_curve():
    x = datasets.curve(500, generator=0, amplitude=0.8)
    torch.testing.assert_close(x[:, 1], 0.8 * torch.sin(2 * x[:, 0]))


def test_checkerboard_points_are_on_dark_squares():
    x = datasets.checkerboard(2000, generator=0, n_squares=4, size=4.0)
    idx = ((x + 2.0) // 1.0).long()
    assert ((idx.sum(1) % 2) == 0).all()


def test_concentric_rings_radii():
    x = datasets.concentric_rings(4000, generator=0, radii=(1.0, 2.5), noise=0.0)
    r = x.norm(dim=1)
    on_ring = torch.minimum((r - 1.0).abs(), (r - 2.5).abs())
    assert on_ring.max() < 1e-5
    frac_inner = (r < 1.75).double().mean().item()
    assert abs(frac_inner - 1 / 3.5) < 4 * math.sqrt((1 / 3.5) * (2.5 / 3.5) / 4000)


def test_far_apart_mixture_is_the_song_ermon_pair():
    mix = datasets.far_apart_mixture()
    torch.testing.assert_close(mix.weights, torch.tensor([0.2, 0.8]))
    torch.testing.assert_close(mix.means, torch.tensor([[-5.0, -5.0], [5.0, 5.0]]))
    torch.testing.assert_close(mix.covs, torch.eye(2).expand(2, 2, 2))


def test_curve_with_noise_and_noisy_curve():
    """lesson 03: scale 0 is the curve itself; the noisy curve's mixture has the noise as its covariance."""
    on = datasets.curve_with_noise(0.0)(500, torch.Generator().manual_seed(0))
    assert torch.allclose(on[:, 1], torch.sin(2 * on[:, 0]))
    off = datasets.curve_with_noise(0.1)(20_000, torch.Generator().manual_seed(0))
    residual = off - datasets.curve(20_000, generator=torch.Generator().manual_seed(0))
    assert abs(residual.std().item() - 0.1) < 0.005
    law = datasets.noisy_curve(0.1)
    assert len(law.weights) == 160 and torch.allclose(law.weights.sum(), torch.tensor(1.0, dtype=law.weights.dtype))
    with pytest.raises(ValueError, match="scale"):
        datasets.curve_with_noise(-1.0)
    with pytest.raises(ValueError, match="sigma"):
        datasets.noisy_curve(0.0)


# --- procedural shapes (lesson 09) ------------------------------------------------------------------------------


def _extent(pixels):
    """Per image: the lit rows' and columns' first and last index (pixels > 127)."""
    lit = pixels[:, 0] > 127
    rows, cols = lit.any(2), lit.any(1)
    first = lambda m: m.float().argmax(1)  # noqa: E731
    last = lambda m: m.shape[1] - 1 - m.flip(1).float().argmax(1)  # noqa: E731
    return first(rows), last(rows), first(cols), last(cols)


def test_shapes_radius_and_spread_set_size_and_position():
    size = 24
    centred, labels = datasets.shapes(400, size, classes=("square",), radius=(0.3, 0.3001), spread=0.0, generator=0)
    assert (labels == 0).all()
    top, bottom, left, right = _extent(centred)
    # a square of half-side 0.8 r = 5.76 px centred at 12: lit rows 6..17, the same for every image
    assert (top == 6).all() and (bottom == 17).all() and (left == 6).all() and (right == 17).all()
    spread, _ = datasets.shapes(400, size, classes=("square",), radius=(0.3, 0.3001), spread=1.0, generator=0)
    top, bottom, left, right = _extent(spread)
    # the same size (11.5 px, so 11 or 12 lit rows at a sub-pixel position), many positions
    assert ((bottom - top - 11).abs() <= 1).all() and len(top.unique()) > 3
    small, _ = datasets.shapes(400, size, classes=("circle",), radius=(0.1, 0.15), generator=1)
    large, _ = datasets.shapes(400, size, classes=("circle",), radius=(0.35, 0.4), generator=1)
    # a disk of radius r lights about pi r^2 pixels
    for images, (lo, hi) in ((small, (0.1, 0.15)), (large, (0.35, 0.4))):
        area = (images > 127).flatten(1).sum(1).double()
        assert math.pi * (lo * size - 0.5) ** 2 < area.min() and area.max() < math.pi * (hi * size + 0.5) ** 2


def test_shapes_defaults_keep_their_draws_and_other_radii_keep_labels():
    pixels, labels = datasets.shapes(300, 16, generator=3)
    again, same_labels = datasets.shapes(300, 16, radius=(0.22, 0.34), spread=1.0, generator=3)
    assert torch.equal(pixels, again) and torch.equal(labels, same_labels)
    _, other_labels = datasets.shapes(300, 16, radius=(0.3, 0.4), spread=0.5, generator=3)
    assert torch.equal(labels, other_labels)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(radius=(0.3, 0.2)), "radius"),
        (dict(radius=(0.0, 0.2)), "radius"),
        (dict(radius=(0.3, 0.6)), "radius"),
        (dict(radius=0.3), "radius"),
        (dict(spread=-0.1), "spread"),
        (dict(spread=1.5), "spread"),
    ],
)
def test_shapes_refuse_bad_radius_and_spread(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=rf"\b{name}\b"):
        datasets.shapes(10, 16, **kwargs)
