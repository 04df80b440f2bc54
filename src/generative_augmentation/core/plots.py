"""Small, generic matplotlib figures shared by all pipelines.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot state, no GUI backend), so they
render with Agg in any process and are garbage-collected like ordinary objects. Save them with
``fig.savefig`` or a Kedro ``matplotlib.MatplotlibDataset``.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)


def embedding_scatter(
    coords: np.ndarray,
    groups: Sequence[Hashable] | np.ndarray,
    title: str,
    highlight: np.ndarray | None = None,
    highlight_label: str = "selected",
) -> Figure:
    """2-D map coloured by group; ``highlight`` (boolean mask or row indices) is drawn ringed in black
    while the other points fade, e.g. selected vs dropped images."""
    coords = np.asarray(coords, dtype=float)
    groups = np.asarray(groups)
    if coords.ndim != 2 or coords.shape[1] != 2 or len(groups) != len(coords):
        raise ValueError(f"coords must be (N, 2) with one group per row, got {coords.shape} and {len(groups)} groups")
    mask = _highlight_mask(highlight, len(coords))
    fig = Figure(figsize=(6.5, 5.5), layout="constrained")
    ax = fig.add_subplot()
    unique_groups = np.unique(groups)
    palette = colormaps["tab10" if len(unique_groups) <= 10 else "tab20"]
    for position, group in enumerate(unique_groups):
        in_group = groups == group
        colour = palette(position % palette.N)
        ax.scatter(*coords[in_group & ~mask].T, s=14, color=colour, alpha=0.35 if mask.any() else 0.8, label=group)
        if mask.any():
            ax.scatter(*coords[in_group & mask].T, s=30, color=colour, edgecolors="black", linewidths=0.8)
    if mask.any():
        ax.scatter([], [], s=30, facecolors="none", edgecolors="black", label=highlight_label)
    ax.set(title=title, xticks=[], yticks=[])
    ax.legend(fontsize="small", markerscale=1.2, loc="best")
    return fig


def image_grid(images_by_row: Mapping[str, np.ndarray], title: str, max_per_row: int = 8) -> Figure:
    """One labelled row per entry (e.g. "real grade 2", "synthetic grade 2"), up to ``max_per_row``
    ``(N, H, W, C)`` / ``(N, H, W)`` uint8 images each; grayscale is drawn in gray."""
    if not images_by_row:
        raise ValueError("images_by_row must contain at least one row")
    if max_per_row < 1:
        raise ValueError(f"max_per_row must be at least 1, got {max_per_row}")
    n_rows = len(images_by_row)
    width, height, label_width = 1.3 * max_per_row + 1.6, 1.4 * n_rows + 0.6, 1.6
    fig = Figure(figsize=(width, height))
    # A fixed grid with room for the row labels: constrained layout costs seconds on grids of many images.
    gridspec = {
        "left": label_width / width,
        "right": 0.99,
        "bottom": 0.02,
        "top": 1 - 0.55 / height,
        "wspace": 0.05,
        "hspace": 0.1,
    }
    axes = fig.subplots(n_rows, max_per_row, squeeze=False, gridspec_kw=gridspec)
    for row_axes, (row_label, images) in zip(axes, images_by_row.items(), strict=True):
        shown = np.asarray(images)[:max_per_row]
        for column, ax in enumerate(row_axes):
            ax.set(xticks=[], yticks=[])
            ax.spines[:].set_visible(False)
            if column < len(shown):
                _draw_image(ax, shown[column])
        row_axes[0].set_ylabel(row_label, rotation=0, ha="right", va="center", fontsize="small")
    fig.suptitle(title)
    return fig


def confusion_matrix_figure(
    matrix: np.ndarray,
    class_names: Sequence[str],
    normalise: bool = True,
    title: str = "Confusion matrix",
) -> Figure:
    """Annotated confusion matrix (rows = true, columns = predicted); ``normalise`` divides each row by
    its total (empty rows stay 0)."""
    matrix = np.asarray(matrix, dtype=float)
    n_classes = len(class_names)
    if matrix.shape != (n_classes, n_classes):
        raise ValueError(f"matrix must be square with one row per class name ({n_classes}), got {matrix.shape}")
    if normalise:
        totals = matrix.sum(axis=1, keepdims=True)
        matrix = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    fig = Figure(figsize=(1.0 + 0.8 * n_classes, 0.8 + 0.8 * n_classes), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1 if normalise else None)
    fig.colorbar(image, ax=ax, shrink=0.8)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), value in np.ndenumerate(matrix):
        text = f"{value:.2f}" if normalise else f"{value:g}"
        colour = "white" if value > threshold else "black"
        ax.text(column, row, text, ha="center", va="center", color=colour, fontsize="small")
    ticks = np.arange(n_classes)
    ax.set(xticks=ticks, yticks=ticks, xlabel="Predicted", ylabel="True", title=title)
    ax.set_xticklabels(class_names, rotation=45, ha="right")
    ax.set_yticklabels(class_names)
    return fig


def bar_groups(
    values: pd.DataFrame,
    title: str,
    ylabel: str,
    errors: pd.DataFrame | None = None,
    xlabel: str = "",
    upper_errors: pd.DataFrame | None = None,
) -> Figure:
    """Grouped bars from a wide table: one group per index entry (e.g. class), one bar per column
    (e.g. scenario). ``errors`` (same shape) adds error bars, symmetric unless ``upper_errors`` gives the upper
    side."""
    if values.empty:
        raise ValueError("values must have at least one row and one column")
    for table in (errors, upper_errors):
        if table is not None and table.shape != values.shape:
            raise ValueError(f"errors must match values' shape {values.shape}, got {table.shape}")
    n_groups, n_bars = values.shape
    width = 0.8 / n_bars
    positions = np.arange(n_groups)
    fig = Figure(figsize=(max(5.0, 0.5 + n_groups * n_bars * 0.35), 4.5), layout="constrained")
    ax = fig.add_subplot()
    for bar, column in enumerate(values.columns):
        offsets = positions - 0.4 + width * (bar + 0.5)
        yerr = None if errors is None else errors[column].to_numpy(dtype=float)
        if yerr is not None and upper_errors is not None:
            yerr = np.vstack([yerr, upper_errors[column].to_numpy(dtype=float)])
        ax.bar(offsets, values[column].to_numpy(dtype=float), width, yerr=yerr, capsize=2, label=str(column))
    ax.set_xticks(positions)
    ax.set_xticklabels([str(name) for name in values.index], rotation=30 if n_groups > 6 else 0, fontsize="medium")
    ax.set(title=title, ylabel=ylabel, xlabel=xlabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def loss_curve(values: Sequence[float] | np.ndarray, title: str, window: int | None = None) -> Figure:
    """Raw per-step values (faint) and their trailing moving average (default window: len / 20)."""
    raw = pd.Series(np.asarray(values, dtype=float))
    window = max(1, len(raw) // 20) if window is None else window
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    fig = Figure(figsize=(6.5, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(raw.index, raw, alpha=0.3, linewidth=0.8, label="raw")
    ax.plot(
        raw.index,
        raw.rolling(window, min_periods=1).mean(),
        linewidth=1.5,
        label=f"moving average ({window})",
    )
    ax.set(title=title, xlabel="step", ylabel="loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def _highlight_mask(highlight: np.ndarray | None, n_rows: int) -> np.ndarray:
    if highlight is None:
        return np.zeros(n_rows, dtype=bool)
    highlight = np.asarray(highlight)
    if highlight.dtype == bool:
        if highlight.shape != (n_rows,):
            raise ValueError(f"highlight mask must have one entry per point ({n_rows}), got {highlight.shape}")
        return highlight
    mask = np.zeros(n_rows, dtype=bool)
    mask[highlight.astype(int)] = True
    return mask


def _draw_image(ax: Axes, image: np.ndarray) -> None:
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        ax.imshow(image, cmap="gray", vmin=0, vmax=255 if image.dtype == np.uint8 else 1)
    else:
        ax.imshow(image)


def ratio_curves(estimates: pd.DataFrame, level: float) -> Figure:
    """Macro-F1 and minority-class recall against the added-image ratio, one line per kind that has ratios
    (synthetic, reduced_synthetic), with the real-only arm at ratio 0."""
    panels = (("f1", "macro-F1"), ("minority_recall", "minority-class recall"))
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    for index, (metric, label) in enumerate(panels):
        axis = figure.add_subplot(1, len(panels), index + 1)
        rows = estimates[estimates["metric"] == metric]
        base = rows[rows["scenario"] == "real"]
        for kind, added in rows[rows["ratio"] > 0].groupby("kind"):
            series = pd.concat([base, added.sort_values("ratio")])
            axis.plot(series["ratio"], series["mean"], marker="o", label=kind)
            axis.fill_between(series["ratio"], series["low"], series["high"], alpha=0.2)
        axis.set(
            xlabel="added images per real image of the class (ratio; 0 = real only)",
            ylabel=f"test {label}",
            title=f"{label} vs ratio (mean, {level:.0%} interval)",
        )
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize="small")
    return figure


def recall_bars(estimates: pd.DataFrame, class_names: Sequence[str], level: float) -> Figure:
    """Per-class test recall of every arm (mean and interval, clipped to [0, 1])."""
    rows = estimates[estimates["metric"].isin([f"recall.{name}" for name in class_names])]
    rows = rows.assign(class_name=rows["metric"].str.removeprefix("recall."))
    order = list(class_names)
    values = rows.pivot(index="class_name", columns="scenario", values="mean").reindex(order)
    low = rows.pivot(index="class_name", columns="scenario", values="low").reindex(order)
    high = rows.pivot(index="class_name", columns="scenario", values="high").reindex(order)
    figure = bar_groups(
        values,
        title=f"Per-class test recall by arm (mean, {level:.0%} interval)",
        ylabel="recall",
        errors=(values - low.clip(lower=0)).fillna(0),
        upper_errors=(high.clip(upper=1) - values).fillna(0),
    )
    figure.axes[0].set_ylim(0, 1.02)
    return figure


def metric_by_scenario(scenario_metrics: pd.DataFrame, metric: str) -> Figure:
    """One box per arm of a macro metric over its classifiers (each replicate a dot)."""
    rows = scenario_metrics[(scenario_metrics["metric"] == metric) & (scenario_metrics["class_name"] == "macro")]
    order = list(dict.fromkeys(rows["scenario"]))
    values = [rows.loc[rows["scenario"] == name, "value"].to_numpy() for name in order]
    figure = Figure(figsize=(max(5.0, 1.2 * len(order) + 1.5), 4.2), layout="constrained")
    axis = figure.add_subplot()
    axis.boxplot(values, tick_labels=order, showmeans=True)
    for position, points in enumerate(values, start=1):
        axis.scatter(np.full(len(points), position) + np.linspace(-0.12, 0.12, len(points)), points, s=10, alpha=0.5)
    axis.set(ylabel=f"test {metric} (macro)", title=f"Test {metric} of every classifier, by arm")
    axis.tick_params(axis="x", labelrotation=20, labelsize="medium")
    axis.grid(axis="y", alpha=0.3)
    return figure


def real_beside_synthetic(
    real: Mapping[str, np.ndarray], synthetic: Mapping[str, np.ndarray], title: str, max_per_row: int = 8
) -> Figure:
    """A row of real images above a row of synthetic images, for every class that has synthetic images."""
    rows: dict[str, np.ndarray] = {}
    for name, images in synthetic.items():
        rows[f"real\n{name}"] = real[name]
        rows[f"synthetic\n{name}"] = images
    return image_grid(rows, title=title, max_per_row=max_per_row)


def message_figure(text: str) -> Figure:
    """A small figure that says ``text``, where a plot has nothing to show."""
    figure = Figure(figsize=(6, 2), layout="constrained")
    figure.text(0.5, 0.5, text, ha="center", va="center")
    return figure
