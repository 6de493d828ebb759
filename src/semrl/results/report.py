"""`semrl report`: metrics.json, report.md, report.html and plots/ for one run directory."""

from __future__ import annotations

from pathlib import Path

from semrl.core.errors import DataError
from semrl.core.io import atomic_path, remove_stale_temps, write_json, write_text
from semrl.core.layout import RunLayout
from semrl.core.lock import directory_lock
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
    """Write metrics.json, report.md, report.html and plots/ for a run; returns report.html's path.

    Holds the run directory's lock (a `semrl run` in it reports under its own lock)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such run directory")
    with directory_lock(RunLayout(run_dir).lock, f"run directory {run_dir}"):
        return _write_report(run_dir)


def _write_report(run_dir: Path) -> Path:
    metrics = build_metrics(run_dir)  # reads the evaluations in the run's method order
    evals = load_evaluations(run_dir, list(metrics["methods"]))
    layout = RunLayout(run_dir)
    for path in (layout.plots, layout.metrics, layout.report_md, layout.report_html):
        remove_stale_temps(path)  # left by a report killed mid-write
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
