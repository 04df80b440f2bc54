"""The self-contained HTML report of a study: its provenance, the pre-registered verdict, the estimates."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from generative_augmentation.core.plots import confusion_matrix_figure
from generative_augmentation.core.scenarios import StatisticsConfig

METRIC_LABELS = {
    "f1": "macro-F1",
    "balanced_accuracy": "balanced accuracy",
    "auc": "AUC (one-vs-rest)",
    "minority_recall": "minority-class recall",
    "accuracy": "accuracy",
    "precision": "macro precision",
}
TABLE_METRICS = ("f1", "balanced_accuracy", "auc", "minority_recall")
STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.45}
table{border-collapse:collapse;font-size:.88em;margin:1em 0}
td,th{border:1px solid #ccc;padding:.3em .55em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee}.note{background:#f6f8fa;border-left:4px solid #4a7;padding:.8em 1em}
.conclusion{font-size:1.15em;background:#fff8e6;border-left:4px solid #d90;padding:.8em 1em}
.provenance{color:#555;font-size:.85em}"""


KEPT_WEIGHTS = {
    "final": "its final weights",
    "best_val": "its best weights on the real validation split (early stopping)",
}


@dataclass
class ReportInputs:
    """Everything the report shows."""

    title: str
    primary: pd.DataFrame
    estimates: pd.DataFrame
    scenario_summary: pd.DataFrame
    split_audit: pd.DataFrame
    confusions: Mapping[str, np.ndarray]
    class_names: list[str]
    minority: list[str]
    statistics: StatisticsConfig
    figures: Mapping[str, Figure]
    provenance: Mapping[str, Any]
    replicates: int
    keep: str = "final"  # classifier.keep: the weights each classifier kept
    quality: pd.DataFrame | None = None
    probe: pd.DataFrame | None = None
    nearest_k: int = 3


def figure_to_img(figure: Figure) -> str:
    """An ``<img>`` tag holding the figure as an embedded PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def interval(mean: float, low: float, high: float, signed: bool = False) -> str:
    """``0.512 [0.480, 0.540]``; a value without an interval says so."""
    if not np.isfinite(mean):
        return "–"
    form = "{:+.3f}" if signed else "{:.3f}"
    if not (np.isfinite(low) and np.isfinite(high)):
        return form.format(mean) + " (no interval)"
    return f"{form.format(mean)} [{form.format(low)}, {form.format(high)}]"


def conclusion(primary: pd.DataFrame, metric: str) -> str:
    """One sentence a reader can cite: what the pre-registered contrasts show, and what they do not."""
    label = METRIC_LABELS.get(metric, metric)
    shown = primary[primary["verdict"].isin(["better", "worse"])]
    if shown.empty:
        mde = primary["mde"].dropna()
        size = (
            f" (it could detect differences of about {mde.max():.3f} {label} at the pre-registered power)"
            if len(mde)
            else ""
        )
        return f"No pre-registered contrast shows a difference in {label}{size}."
    parts = [
        f"{row.treatment} is {row.verdict} than {row.control} on {label}: "
        f"{interval(row.estimate, row.low, row.high, signed=True)}, Holm p = {row.p_holm:.3g}"
        for row in shown.itertuples()
    ]
    others = primary[~primary.index.isin(shown.index)]
    rest = f"; no difference is shown against {', '.join(others['control'])}" if len(others) else ""
    return "; ".join(parts) + rest + "."


def primary_table(primary: pd.DataFrame, statistics: StatisticsConfig) -> str:
    level = f"{1 - statistics.alpha:.0%}"
    header = (
        "<tr><th>treatment</th><th>control</th><th>difference [" + level + " interval]</th><th>p</th>"
        "<th>Holm p</th><th>verdict</th><th>smallest detectable difference</th><th>note</th></tr>"
    )
    body = "".join(
        f"<tr><td>{html.escape(row.treatment)}</td><td>{html.escape(row.control)}</td>"
        f"<td>{interval(row.estimate, row.low, row.high, signed=True)}</td><td>{_number(row.p_value)}</td>"
        f"<td>{_number(row.p_holm)}</td><td><b>{html.escape(row.verdict)}</b></td><td>{_number(row.mde)}</td>"
        f"<td>{html.escape(str(row.note))}</td></tr>"
        for row in primary.itertuples()
    )
    return f"<table>{header}{body}</table>"


def estimates_table(estimates: pd.DataFrame, scenario_summary: pd.DataFrame, level: float) -> str:
    """Training-set size, validation score and each headline metric with its interval and its difference to real."""
    header = (
        "<tr><th>arm</th><th>train images</th><th>val macro-F1</th>"
        + "".join(f"<th>{METRIC_LABELS[metric]} [{level:.0%}]</th><th>Δ vs real</th>" for metric in TABLE_METRICS)
        + "</tr>"
    )
    sizes = scenario_summary.set_index("scenario")["train_size"]
    body = []
    for scenario in scenario_summary["scenario"]:
        rows = estimates[estimates["scenario"] == scenario].set_index("metric")
        if rows.empty:
            continue
        cells = [
            f"<td>{html.escape(scenario)}</td><td>{int(sizes[scenario])}</td>",
            f"<td>{rows['validation_f1'].iloc[0]:.3f}</td>",
        ]
        for metric in TABLE_METRICS:
            if metric not in rows.index:
                cells.append("<td>–</td><td>–</td>")
                continue
            row = rows.loc[metric]
            cells.append(f"<td>{interval(row['mean'], max(row['low'], 0), min(row['high'], 1))}</td>")
            if scenario == "real" or "diff_vs_real" not in row or pd.isna(row.get("diff_vs_real")):
                cells.append("<td></td>")
            else:
                cells.append(
                    f"<td>{interval(row['diff_vs_real'], row['diff_low'], row['diff_high'], signed=True)}</td>"
                )
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>{header}{''.join(body)}</table>"


def build_report(inputs: ReportInputs) -> str:
    """One self-contained HTML page."""
    statistics = inputs.statistics
    level = 1 - statistics.alpha
    metric = METRIC_LABELS.get(statistics.primary_metric, statistics.primary_metric)
    figures = {name: figure_to_img(figure) for name, figure in inputs.figures.items()}
    matrices = "".join(
        f"<h3>{html.escape(name)}</h3>{figure_to_img(confusion_matrix_figure(matrix, inputs.class_names))}"
        for name, matrix in inputs.confusions.items()
    )
    provenance = ", ".join(
        f"{html.escape(str(key))}: {html.escape(str(value))}" for key, value in inputs.provenance.items()
    )
    quality = _frame(inputs.quality, "No synthetic images were evaluated.")
    probe = _frame(inputs.probe, "No arm of this study draws synthetic images.")
    minority = ", ".join(html.escape(name) for name in inputs.minority)
    contrasts = "; ".join(f"{html.escape(t)} vs {html.escape(c)}" for t, c in statistics.contrasts)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(inputs.title)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(inputs.title)}</h1>
<p class="provenance">{provenance}</p>
<p class="conclusion">{html.escape(conclusion(inputs.primary, statistics.primary_metric))}</p>
<p>Does a classifier trained on real plus synthetic images beat one trained on real images alone, one trained on
as many real images drawn again (the count-matched control), and one trained with ordinary flips and rotations?
Every arm trains {inputs.replicates} classifiers with the same number of optimiser steps, paired across arms by seed;
each keeps {KEPT_WEIGHTS.get(inputs.keep, html.escape(inputs.keep))} and is scored once on the real test split, which
nothing upstream (generator, labeler, memorisation guard, any setting) has seen.</p>
<h2>The pre-registered verdict</h2>
<p>Primary metric: <b>{metric}</b>. Primary contrasts, fixed in the parameters before the run: {contrasts}
(<i>best_synthetic</i> is the synthetic arm with the best validation macro-F1). Intervals come from a paired bootstrap
over classifier replicates and test images ({statistics.resamples} resamples, test images resampled within each
class); the family-wise error over these contrasts is held at {statistics.alpha:g} with Holm's method, and only a
Holm-adjusted p below it gives a verdict. The smallest detectable difference is the one these contrasts would
detect with {statistics.power:.0%} power.</p>
{primary_table(inputs.primary, statistics)}
{figures.get("primary_metric", "")}
<h2>Estimates</h2><div class="note">Estimates with {level:.0%} intervals, for description: they carry no verdict
and no multiplicity correction. Minority-class recall is the mean recall of {minority}. AUC intervals resample
classifiers only (AUC does not come from confusion counts).</div>
{estimates_table(inputs.estimates, inputs.scenario_summary, level)}
<h2>Data</h2><p>Images per class and split (patients never cross splits; identical images never cross splits).</p>
{inputs.split_audit.to_html(index=False, na_rep="")}
<h2>Real beside synthetic</h2>{figures.get("samples", "<p>No arm of this study draws synthetic images.</p>")}
<h2>Can synthetic images be told apart? (shortcut probe)</h2><p>The AUC of a small classifier telling kept synthetic
images from real train images of the same class, out of fold: near 1 means "looks synthetic" is a cue a classifier
could use for the classes that got synthetic images; near 0.5 means it is not.</p>{probe}
<h2>Per-class recall</h2>{figures.get("recall_bars", "")}
<h2>Saturation curves</h2>{figures.get("ratio_curves", "")}
<h2>Generative quality</h2><p>KID and FID (lower is better; FID only where both sets have more images than feature
dimensions) and k-NN precision/recall (k={inputs.nearest_k}) of the kept synthetic images against real validation
images, on offline ImageNet EfficientNet-Lite0 features; <i>real_train</i> rows are the floor a perfect generator
would reach.</p>{quality}
<h2>Confusion matrices (summed over replicates, row-normalised)</h2>{matrices}
</body></html>"""


def _number(value: float) -> str:
    return f"{value:.3g}" if isinstance(value, int | float) and np.isfinite(value) else "–"


def _frame(table: pd.DataFrame | None, empty: str) -> str:
    if table is None or not len(table):
        return f"<p>{empty}</p>"
    return table.to_html(index=False, float_format=lambda value: f"{value:.4f}", na_rep="")
