"""`semrl report`: metrics.json, report.md, report.html and plots/ for one run directory."""

from __future__ import annotations

from pathlib import Path

from semrl.core.errors import DataError
from semrl.core.io import atomic_paths, json_text, remove_stale_temps
from semrl.core.layout import RunLayout
from semrl.core.lock import directory_lock
from semrl.eval.records import load_evaluations
from semrl.results.arms import has_control_arms
from semrl.results.build import build_metrics
from semrl.results.plots import (
    plot_arms,
    plot_drift,
    plot_gain_vs_tax,
    plot_reward_components,
    plot_tax_meter,
    plot_tradeoff,
)
from semrl.results.render import SAMPLE_OUTPUTS, render_html, render_markdown


def write_report(run_dir: str | Path, samples: int = SAMPLE_OUTPUTS) -> Path:
    """Write metrics.json, report.md, report.html and plots/ for a run; returns report.html's path.
    The task section shows the first `samples` test outputs of each method.

    Holds the run directory's lock (a `semrl run` in it reports under its own lock)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such run directory")
    with directory_lock(RunLayout(run_dir).lock, f"run directory {run_dir}"):
        return _write_report(run_dir, samples)


def _write_report(run_dir: Path, samples: int) -> Path:
    metrics = build_metrics(run_dir)  # reads the evaluations in the run's method order
    evals = load_evaluations(run_dir, list(metrics["methods"]))
    layout = RunLayout(run_dir)
    outputs = (layout.plots, layout.metrics, layout.report_md, layout.report_html)
    for path in outputs:
        remove_stale_temps(path)  # left by a report killed mid-write
    # Everything is made first and renamed together at the end: a failure on the way (a plot, text
    # from the data) leaves the previous plots, metrics.json, report.md and report.html as they were.
    with atomic_paths(outputs) as (plot_dir, metrics_path, md_path, html_path):
        plot_dir.mkdir()
        # Each plot is drawn, or left out with the reason the report gives (file name -> why).
        skipped = {
            "gain_vs_tax.png": plot_gain_vs_tax(metrics, plot_dir / "gain_vs_tax.png"),
            "reward_components.png": plot_reward_components(run_dir, plot_dir / "reward_components.png"),
            "nll_drift.png": plot_drift(evals, plot_dir / "nll_drift.png"),
            "tax_meter.png": plot_tax_meter(run_dir, plot_dir / "tax_meter.png"),
            "tradeoff.png": plot_tradeoff(run_dir, plot_dir / "tradeoff.png"),
        }
        if has_control_arms(metrics.get("arms")):  # a run without control arms has no place for it
            skipped["arms_gain_vs_tax.png"] = plot_arms(metrics, plot_dir / "arms_gain_vs_tax.png")
        not_drawn = {name: why for name, why in skipped.items() if why is not None}
        plots = {p.name: str(layout.plots / p.name) for p in plot_dir.glob("*.png")}
        md = render_markdown(metrics, evals, plots, not_drawn, samples)
        page = render_html(md, plot_dir)
        metrics_path.write_text(json_text(metrics), encoding="utf-8")
        md_path.write_text(md, encoding="utf-8")
        html_path.write_text(page, encoding="utf-8")
    return layout.report_html
