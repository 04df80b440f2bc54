"""The self-contained HTML report of the scenario study."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from generative_augmentation.core.images import stack_partitions
from generative_augmentation.core.plots import confusion_matrix_figure, image_grid
from generative_augmentation.core.runtime import numpy_rng

REPORT_METRICS = [("f1", "macro", "macro-F1"), ("balanced_accuracy", "macro", "balanced accuracy"),
                  ("auc", "macro", "AUC (one-vs-rest)"), ("recall", "minority", "minority-class recall")]  # fmt: skip
STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.45}
table{border-collapse:collapse;font-size:.88em;margin:1em 0}
td,th{border:1px solid #ccc;padding:.3em .55em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.win{background:#e3f4e3}.lose{background:#f8e1e1}
img{max-width:100%;border:1px solid #eee}.verdict{background:#f6f8fa;border-left:4px solid #4a7;padding:.8em 1em}"""


def figure_to_img(figure: Figure) -> str:
    """An ``<img>`` tag holding the figure as an embedded PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def scenario_rows(summary: pd.DataFrame, scenario_summary: pd.DataFrame) -> str:
    """The scenario table: training-set size and each headline metric with its interval and paired difference."""
    header = "<tr><th>scenario</th><th>train images</th>" + "".join(
        f"<th>{label}</th><th>Δ vs real [95% CI]</th>" for *_, label in REPORT_METRICS
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
            css = "win" if r["wins"] else "lose" if r["loses"] else ""
            cells.append(f"<td>{r['mean']:.3f} [{r['low']:.3f}, {r['high']:.3f}]</td>")
            diff = (
                "" if scenario == "real" else f"{r['diff_vs_real']:+.3f} [{r['diff_low']:+.3f}, {r['diff_high']:+.3f}]"
            )
            cells.append(f'<td class="{css}">{diff}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>{header}{''.join(body)}</table>"


def verdict(summary: pd.DataFrame) -> str:
    """Plain-language verdict: which scenario wins on which metric, by how much, and against traditional."""
    lines = []
    for metric, class_name, label in REPORT_METRICS:
        rows = summary[(summary["metric"] == metric) & (summary["class_name"] == class_name)]
        others = rows[rows["scenario"] != "real"].sort_values("diff_vs_real", ascending=False)
        if others.empty:
            continue
        best = others.iloc[0]
        winners = others[others["wins"]]["scenario"].tolist()
        traditional = rows[rows["kind"] == "traditional"].sort_values("mean", ascending=False)
        against = ""
        if best["kind"] != "traditional" and not traditional.empty:
            gap = best["mean"] - traditional.iloc[0]["mean"]
            against = f" Against the best traditional augmentation ({traditional.iloc[0]['scenario']}): {gap:+.3f}."
        significance = (f"Scenarios whose paired interval excludes zero: {', '.join(winners)}." if winners
                        else "No scenario beats real-only with an interval that excludes zero.")  # fmt: skip
        lines.append(
            f"<li><b>{label}</b>: best is <b>{html.escape(best['scenario'])}</b> at {best['mean']:.3f} "
            f"({best['diff_vs_real']:+.3f} vs real, 95% CI [{best['diff_low']:+.3f}, {best['diff_high']:+.3f}]). "
            f"{significance}{against}</li>"
        )
    return "<ul>" + "".join(lines) + "</ul>"


def sample_grid(
    manifest: pd.DataFrame, real_images: dict, labeled_synthetic: pd.DataFrame, synthetic_images: dict,
    image: dict[str, Any], seed: int, per_row: int = 8,
) -> Figure:  # fmt: skip
    """Real train images beside kept synthetic images, one pair of rows per synthetic class."""
    size, mode, rng = int(image["size"]), image["mode"], numpy_rng(seed)
    rows = {}
    kept = labeled_synthetic[labeled_synthetic["verdict"] == "keep"]
    for class_name in sorted(set(kept["final_class"])):
        real = manifest[(manifest["split"] == "train") & (manifest["class_name"] == class_name)]["image_key"]
        synthetic = kept[kept["final_class"] == class_name]["image_key"]
        for label, keys, source in (("real", real, real_images), ("synthetic", synthetic, synthetic_images)):
            picked = rng.choice(keys.to_numpy(), size=min(per_row, len(keys)), replace=False)
            rows[f"{label} {class_name}"] = stack_partitions(source, picked, size, mode)
    return image_grid(rows, title="Real train (top) beside kept synthetic (bottom), per class", max_per_row=per_row)


def build_report(
    summary: pd.DataFrame,
    scenario_summary: pd.DataFrame,
    quality: pd.DataFrame | None,
    split_audit: pd.DataFrame,
    curves: Figure,
    bars: Figure,
    samples: Figure | None,
    confusions: dict[str, np.ndarray],
    class_names: list[str],
    title: str,
) -> str:
    """One self-contained HTML page: data, samples, scenario table with intervals, curves, verdict."""
    matrices = "".join(
        f"<h3>{html.escape(name)}</h3>{figure_to_img(confusion_matrix_figure(matrix, class_names, normalise=True))}"
        for name, matrix in confusions.items()
    )
    seeds = int(summary["seeds"].max()) if len(summary) else 0
    samples_html = figure_to_img(samples) if samples is not None else "<p>No synthetic scenario in this study.</p>"
    quality_html = (
        quality.to_html(index=False, float_format=lambda v: f"{v:.4f}")
        if quality is not None and len(quality)
        else "<p>No synthetic images were evaluated.</p>"
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Does a classifier trained on real plus synthetic images beat one trained on real images alone, and one trained
with ordinary flips and rotations? Every classifier is selected on the real validation split and scored once on the
real test split, which nothing upstream (generator, labeler, selection) has seen. Each scenario is trained with
{seeds} seeds; intervals are 95% Student-t intervals over seeds, and differences to <i>real</i> are paired by seed.</p>
<h2>Verdict</h2><div class="verdict">{verdict(summary)}</div>
<h2>Data</h2><p>Images per class and split (patients never cross splits; identical images never cross splits).</p>
{split_audit.to_html(index=False)}
<h2>Real beside synthetic</h2>{samples_html}
<h2>Scenarios</h2><p>Green: the paired interval of the difference to real excludes zero in favour of the scenario;
red: against it.</p>{scenario_rows(summary, scenario_summary)}
<h2>Saturation curves</h2>{figure_to_img(curves)}
<h2>Per-class recall</h2>{figure_to_img(bars)}
<h2>Generative quality</h2><p>KID and FID (lower is better) and k-NN precision/recall (k=3) of the kept synthetic
images against real test images, on offline ImageNet EfficientNet-Lite0 features; <i>real_train</i> rows are the
floor a perfect generator would reach. FID is left empty where either set is too small for a stable estimate.</p>
{quality_html}
<h2>Confusion matrices (summed over seeds, row-normalised)</h2>{matrices}
</body></html>"""
