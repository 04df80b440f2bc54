"""Shared figure helpers: each returns a renderable Figure with the expected content."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from generative_augmentation.core.plots import (
    bar_groups,
    confusion_matrix_figure,
    embedding_scatter,
    image_grid,
    loss_curve,
)


def _renders_as_png(fig: Figure) -> bool:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=40)
    return buffer.getvalue().startswith(b"\x89PNG")


def test_embedding_scatter_colours_groups_and_rings_the_highlight() -> None:
    coords = np.random.default_rng(0).normal(size=(30, 2))
    groups = np.repeat(["grade 0", "grade 1", "grade 2"], 10)

    fig = embedding_scatter(coords, groups, "t-SNE", highlight=np.arange(0, 30, 3), highlight_label="kept")

    ax = fig.axes[0]
    assert [text.get_text() for text in ax.get_legend().get_texts()] == [
        "grade 0",
        "grade 1",
        "grade 2",
        "kept",
    ]
    ringed = [c for c in ax.collections if len(c.get_offsets()) and c.get_linewidths()[0] == pytest.approx(0.8)]
    assert sum(len(c.get_offsets()) for c in ringed) == 10
    assert ax.get_title() == "t-SNE"
    assert _renders_as_png(fig)


def test_embedding_scatter_accepts_a_boolean_mask_and_checks_shapes() -> None:
    coords = np.zeros((4, 2))
    fig = embedding_scatter(coords, [0, 0, 1, 1], "map", highlight=np.array([True, False, False, True]))
    assert _renders_as_png(fig)
    with pytest.raises(ValueError, match="coords"):
        embedding_scatter(np.zeros((4, 3)), [0, 0, 1, 1], "map")


def test_image_grid_has_one_labelled_row_per_entry() -> None:
    rng = np.random.default_rng(1)
    rows = {
        "real grade 2": rng.integers(0, 256, size=(3, 28, 28, 3), dtype=np.uint8),
        "synthetic grade 2": rng.integers(0, 256, size=(12, 28, 28, 1), dtype=np.uint8),
    }

    fig = image_grid(rows, "Grade 2", max_per_row=5)

    assert len(fig.axes) == 10
    assert [fig.axes[0].get_ylabel(), fig.axes[5].get_ylabel()] == ["real grade 2", "synthetic grade 2"]
    assert sum(len(ax.images) for ax in fig.axes[:5]) == 3
    assert sum(len(ax.images) for ax in fig.axes[5:]) == 5
    assert fig.axes[5].images[0].get_cmap().name == "gray"
    assert _renders_as_png(fig)


def test_confusion_matrix_rows_are_normalised() -> None:
    fig = confusion_matrix_figure(np.array([[3, 1], [0, 0]]), ["healthy", "disease"])

    texts = [text.get_text() for text in fig.axes[0].texts]
    assert texts == ["0.75", "0.25", "0.00", "0.00"]
    assert [label.get_text() for label in fig.axes[0].get_xticklabels()] == ["healthy", "disease"]
    assert _renders_as_png(fig)
    with pytest.raises(ValueError, match="matrix"):
        confusion_matrix_figure(np.eye(3), ["a", "b"])


def test_confusion_matrix_can_show_counts() -> None:
    fig = confusion_matrix_figure(np.array([[3, 1], [0, 2]]), ["a", "b"], normalise=False)
    assert [text.get_text() for text in fig.axes[0].texts] == ["3", "1", "0", "2"]


def test_bar_groups_draws_one_bar_per_cell() -> None:
    values = pd.DataFrame(
        {"baseline": [0.5, 0.6, 0.4], "synthetic": [0.55, 0.7, 0.5]}, index=["grade 0", "grade 1", "grade 2"]
    )

    fig = bar_groups(values, "Per-class F1", "F1", errors=values * 0.1)

    ax = fig.axes[0]
    assert len(ax.patches) == 6
    assert [label.get_text() for label in ax.get_xticklabels()] == ["grade 0", "grade 1", "grade 2"]
    assert sorted(round(patch.get_height(), 2) for patch in ax.patches) == sorted(values.to_numpy().ravel())
    assert _renders_as_png(fig)
    with pytest.raises(ValueError, match="errors"):
        bar_groups(values, "t", "F1", errors=values.iloc[:2])


def test_loss_curve_plots_raw_values_and_their_moving_average() -> None:
    values = np.array([4.0, 2.0, 6.0, 0.0, 2.0])

    fig = loss_curve(values, "DDPM loss", window=2)

    raw, smoothed = fig.axes[0].lines
    np.testing.assert_array_equal(raw.get_ydata(), values)
    np.testing.assert_allclose(smoothed.get_ydata(), [4.0, 3.0, 4.0, 3.0, 1.0])
    assert _renders_as_png(fig)
    with pytest.raises(ValueError, match="window"):
        loss_curve(values, "loss", window=0)
