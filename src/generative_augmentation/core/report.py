"""The self-contained HTML report of a study."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from generative_augmentation.core.plots import confusion_matrix_figure

REPORT_METRICS = (("f1", "macro", "macro-F1"), ("balanced_accuracy", "macro", "balanced accuracy"),
                  ("auc", "macro", "AUC (one-vs-rest)"), ("recall", "minority", "minority-class recall"))  # fmt: skip
STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.45}
table{border-collapse:collapse;font-size:.88em;margin:1em 0}
td,th{border:1px solid #ccc;padding:.3em .55em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee}.note{background:#f6f8fa;border-left:4px solid #4a7;padding:.8em 1em}"""


@dataclass
class ReportInputs:
    """Everything the report shows."""

    title: str
    summary: pd.DataFrame
    scenario_summary: pd.DataFrame
    split_audit: pd.DataFrame
    confusions: Mapping[str, np.ndarray]
    class_names: list[str]
    minority: list[str]
    confidence: float
    figures: Mapping[str, Figure]
    quality: pd.DataFrame | None = None
    nearest_k: int = 3


def figure_to_img(figure: Figure) -> str:
    """An ``<img>`` tag holding the figure as an embedded PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _interval(mean: float, low: float, high: float, signed: bool = False) -> str:
    if not np.isfinite(mean):
        return "–"
    form = "{:+.3f}" if signed else "{:.3f}"
    if not (np.isfinite(low) and np.isfinite(high)):
        return form.format(mean) + " (no interval)"
    return f"{form.format(mean)} [{form.format(low)}, {form.format(high)}]"


def scenario_table(summary: pd.DataFrame, scenario_summary: pd.DataFrame, confidence: float) -> str:
    """Training-set size and each headline metric with its interval and its paired difference to real."""
    level = f"{confidence:.0%}"
    header = "<tr><th>scenario</th><th>train images</th>" + "".join(
        f"<th>{label} [{level}]</th><th>Δ vs real [{level}]</th>" for *_, label in REPORT_METRICS
    ) + "</tr>"  # fmt: skip
    sizes = scenario_summary.set_index("scenario")["train_size"]
    body = []
    for scenario in scenario_summary["scenario"]:
        cells = [f"<td>{html.escape(scenario)}</td><td>{int(sizes[scenario])}</td>"]
        for metric, class_name, _ in REPORT_METRICS:
            row = summary[(summary["scenario"] == scenario) & (summary["metric"] == metric)
                          & (summary["class_name"] == class_name)]  # fmt: skip
            if row.empty:
                cells.append("<td>–</td><td>–</td>")
                continue
            r = row.iloc[0]
            cells.append(f"<td>{_interval(r['mean'], max(r['low'], 0), min(r['high'], 1))}</td>")
            diff = (
                "" if scenario == "real" else _interval(r["diff_vs_real"], r["diff_low"], r["diff_high"], signed=True)
            )
            cells.append(f"<td>{diff}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>{header}{''.join(body)}</table>"


def build_report(inputs: ReportInputs) -> str:
    """One self-contained HTML page: data, samples, the scenario table with intervals, curves, quality."""
    level = f"{inputs.confidence:.0%}"
    replicates = int(inputs.summary["replicates"].max()) if len(inputs.summary) else 0
    matrices = "".join(
        f"<h3>{html.escape(name)}</h3>{figure_to_img(confusion_matrix_figure(matrix, inputs.class_names))}"
        for name, matrix in inputs.confusions.items()
    )
    figures = {name: figure_to_img(figure) for name, figure in inputs.figures.items()}
    quality = inputs.quality
    quality_html = (
        quality.to_html(index=False, float_format=lambda value: f"{value:.4f}", na_rep="")
        if quality is not None and len(quality)
        else "<p>No synthetic images were evaluated.</p>"
    )
    samples = figures.get("samples", "<p>No synthetic arm in this study.</p>")
    minority = ", ".join(html.escape(name) for name in inputs.minority)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(inputs.title)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(inputs.title)}</h1>
<p>Does a classifier trained on real plus synthetic images beat one trained on real images alone, and one trained
with ordinary flips and rotations? Every classifier is selected on the real validation split and scored once on the
real test split, which nothing upstream (generator, labeler, guard, selection) has seen. Each arm trains
{replicates} classifiers; intervals are {level} Student-t intervals over them, and differences to <i>real</i> are
paired by replicate seed. Minority-class recall is the mean recall of {minority}.</p>
<h2>Data</h2><p>Images per class and split (patients never cross splits; identical images never cross splits).</p>
{inputs.split_audit.to_html(index=False)}
<h2>Real beside synthetic</h2>{samples}
<h2>Scenarios</h2><div class="note">Estimates with {level} intervals; a difference whose interval excludes zero is
not by itself a finding: these are many comparisons without a multiplicity correction.</div>
{scenario_table(inputs.summary, inputs.scenario_summary, inputs.confidence)}
<h2>Saturation curves</h2>{figures.get("ratio_curves", "")}
<h2>Per-class recall</h2>{figures.get("recall_bars", "")}
<h2>Generative quality</h2><p>KID and FID (lower is better; FID only where both sets are large enough) and k-NN
precision/recall (k={inputs.nearest_k}) of the kept synthetic images against real reference images, on offline
ImageNet EfficientNet-Lite0 features; <i>real_train</i> rows are the floor a perfect generator would reach.</p>
{quality_html}
<h2>Confusion matrices (summed over replicates, row-normalised)</h2>{matrices}
</body></html>"""
