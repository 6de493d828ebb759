"""`semrl report`: metrics.json, report.md, report.html and plots/ for one run directory."""

from __future__ import annotations

from pathlib import Path

from semrl.core.io import atomic_path, write_json, write_text
from semrl.core.layout import RunLayout
from semrl.eval.records import load_evaluations
from semrl.results.build import build_metrics
from semrl.results.plots import (
    plot_drift,
    plot_gain_vs_tax,
    plot_reward_components,
    plot_tax_meter,
    plot_tradeoff,
)
from semrl.results.render import render_html, render_markdown


def write_report(run_dir: str | Path) -> Path:
    """Write metrics.json, report.md, report.html and plots/ for a run; returns report.html's path."""
    run_dir = Path(run_dir)
    evals = load_evaluations(run_dir)
    metrics = build_metrics(run_dir, evals)
    layout = RunLayout(run_dir)
    with atomic_path(layout.plots) as plot_dir:
        plot_dir.mkdir()
        plot_gain_vs_tax(metrics, plot_dir / "gain_vs_tax.png")
        plot_reward_components(run_dir, plot_dir / "reward_components.png")
        plot_drift(evals, plot_dir / "nll_drift.png")
        plot_tax_meter(run_dir, plot_dir / "tax_meter.png")
        plot_tradeoff(run_dir, plot_dir / "tradeoff.png")
    plots = {p.name: str(p) for p in layout.plots.glob("*.png")}
    md = render_markdown(metrics, evals, plots)
    write_json(layout.metrics, metrics)
    write_text(layout.report_md, md)
    return write_text(layout.report_html, render_html(md, layout.plots))
