"""Counting generated images (lesson 09): the confusion matrix and nearest real neighbours."""

import numpy as np
import pytest
import torch

from scorelab import metrics


def test_confusion_matrix_counts_each_pair():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    predicted = torch.tensor([0, 1, 1, 1, 2, 2])
    matrix = metrics.confusion_matrix(labels, predicted, 3)
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 2, 1], [0, 0, 1]])
    assert matrix.sum() == 6 and np.trace(matrix) == 4
    # rows are true classes: transposing the roles transposes the matrix
    np.testing.assert_array_equal(metrics.confusion_matrix(predicted, labels, 3), matrix.T)


def test_confusion_matrix_of_random_labels_is_their_outer_product():
    g = torch.Generator().manual_seed(0)
    n = 40_000
    labels, predicted = torch.randint(4, (n,), generator=g), torch.randint(4, (n,), generator=g)
    matrix = metrics.confusion_matrix(labels, predicted, 4) / n
    se = np.sqrt(1 / 16 * (1 - 1 / 16) / n)
    assert np.abs(matrix - 1 / 16).max() < 4 * se


@pytest.mark.parametrize(
    "args, error, name",
    [
        ((torch.tensor([0, 1]), torch.tensor([0]), 2), ValueError, "predicted"),
        ((torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), 2), TypeError, "labels"),
        ((torch.tensor([0, 1]), torch.tensor([0, 2]), 2), ValueError, "predicted"),
        ((torch.tensor([0, 1]), torch.tensor([0, 1]), 0), ValueError, "n_classes"),
    ],
)
def test_confusion_matrix_refuses_bad_input(args, error, name):
    with pytest.raises(error, match=rf"\b{name}\b"):
        metrics.confusion_matrix(*args)


def test_nearest_neighbours_finds_the_closest_image_in_batches():
    g = torch.Generator().manual_seed(1)
    reference = torch.randn(50, 1, 4, 4, generator=g)
    x = reference[[7, 3, 3, 41]] + 0.01 * torch.randn(4, 1, 4, 4, generator=g)
    distance, index = metrics.nearest_neighbours(x, reference, batch_size=3)
    assert index.tolist() == [7, 3, 3, 41]
    torch.testing.assert_close(distance, (x - reference[index]).flatten(1).norm(dim=1))
    brute = (x.flatten(1)[:, None] - reference.flatten(1)[None]).norm(dim=2).min(1)
    torch.testing.assert_close(distance, brute.values)
    assert torch.equal(index, brute.indices)


@pytest.mark.parametrize(
    "x, reference, name",
    [
        (torch.zeros(2, 1, 4, 4), torch.zeros(3, 1, 4, 5), "reference"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, 1, 4, 4), "x"),
        (torch.zeros(2, 1, 4, 4), torch.full((3, 1, 4, 4), float("nan")), "reference"),
    ],
)
def test_nearest_neighbours_refuses_bad_input(x, reference, name):
    with pytest.raises((ValueError, TypeError), match=rf"\b{name}\b"):
        metrics.nearest_neighbours(x, reference)


def test_plot_confusion_colours_row_shares_and_writes_counts():
    import matplotlib

    matplotlib.use("Agg")
    from scorelab import viz

    matrix = np.array([[8, 2], [1, 3]])
    artist = viz.plot_confusion(matrix, ["a", "b"])
    np.testing.assert_allclose(artist.get_array(), [[0.8, 0.2], [0.25, 0.75]])
    assert artist.get_clim() == (0, 1) and artist.colorbar is not None
    assert sorted(t.get_text() for t in artist.axes.texts) == ["1", "2", "3", "8"]
    with pytest.raises(ValueError, match=r"\bmatrix\b"):
        viz.plot_confusion(np.ones((2, 3)), ["a", "b"])


def test_plot_masked_images_tints_exactly_the_unknown_pixels():
    import matplotlib

    matplotlib.use("Agg")
    from scorelab import viz

    images = torch.zeros(3, 1, 4, 4)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[..., :2, :] = True  # the upper two rows known
    tint = viz.plot_masked_images(images, mask, n_cols=3).get_array()
    alpha = np.asarray(tint)[..., 3] > 0
    expected = viz.image_grid((~mask).expand(3, 1, 4, 4).to(torch.uint8) * 255, n_cols=3) == 255
    np.testing.assert_array_equal(alpha, expected)
    assert alpha.sum() == 3 * 8
    with pytest.raises(TypeError, match=r"\bmask\b"):
        viz.plot_masked_images(images, mask.float())
    with pytest.raises(ValueError, match=r"\bmask\b"):
        viz.plot_masked_images(images, torch.ones(2, 1, 4, 4, dtype=torch.bool))
