"""The report's plots: task gain against tax, reward components, NLL drift, the tax meter, and
the control arms' gain against tax with intervals.

Each `plot_*` function draws its figure to `path` and returns None, or, when the run holds nothing
for it to show, writes no file and returns the reason in one line for the report (an empty set of
axes tells a reader nothing, and looks like a failure).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from semrl.core.layout import RunLayout
from semrl.results.arms import MEASURE_SHORT, ROLE_LABELS, headline_measure
from semrl.train.callbacks import read_log
from semrl.train.stages import BASE_METHOD, TREATMENT


def _save_figure(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gain_vs_tax(metrics: dict[str, Any], path: Path) -> str | None:
    import matplotlib.pyplot as plt

    methods = metrics["methods"]
    base_sem = methods.get(BASE_METHOD, {}).get("task", {}).get("semantic")
    points = {
        method: m["tax"]["mean"]
        for method, m in methods.items()
        if "mean" in m.get("tax", {}) and m["task"].get("semantic") is not None
    }
    if not any(m.get("general") for m in methods.values()):
        return "no general benchmark was evaluated (evaluation.benchmarks is empty), so there is no tax"
    if base_sem is None:
        return "the base model was not evaluated, so there is no tax (add base to evaluation.methods)"
    if not set(points) - {BASE_METHOD}:
        return "no trained method was scored on the base model's benchmark items, so there is no tax"
    fig, ax = plt.subplots(figsize=(5.5, 4))
    labels: dict[tuple[float, float], list[str]] = {}  # methods at one point share one label
    for method, tax in points.items():
        gain = methods[method]["task"]["semantic"] - base_sem
        iv = metrics["intervals"]["tax"].get(method, {}).get("mean")
        xerr = [[tax - iv["low"]], [iv["high"] - tax]] if iv else None
        ax.errorbar(tax, gain, xerr=xerr, fmt="o", capsize=3)
        labels.setdefault((round(tax, 6), round(gain, 6)), []).append(method)
    for (tax, gain), names in labels.items():
        ax.annotate(", ".join(names), (tax, gain), textcoords="offset points", xytext=(5, 5))
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("alignment tax: mean benchmark score lost vs base (lower is better)")
    ax.set_ylabel("task gain: semantic similarity vs base")
    ax.set_title("Task gain against alignment tax")
    _save_figure(fig, path)
    return None


def plot_arms(metrics: dict[str, Any], path: Path) -> str | None:
    """Each trained method's chrF gain over the arms' starting point (y) against its tax on the
    run's headline measure (x), both with their intervals (metrics.json's `arms`)."""
    import matplotlib.pyplot as plt

    arms = metrics.get("arms") or {}
    rows = {name: r for name, r in (arms.get("methods") or {}).items() if r["role"] != "reference"}
    measure = headline_measure(arms.get("primary", ""), [m for r in rows.values() for m in r["tax"]])
    points = {
        name: (r["tax"][measure], r["gain"]["chrf"])
        for name, r in rows.items()
        if measure in r["tax"] and "chrf" in r["gain"]
    }
    if len(points) < 2:
        return (
            f"fewer than two trained methods have both a chrF gain over {arms.get('reference', 'the cold start')} "
            "and a tax against the base model (a benchmark, drift or task KL measured for the base model)"
        )
    fig, ax = plt.subplots(figsize=(5.5, 4))
    conf = int(metrics["intervals"]["confidence"] * 100)
    for i, (name, (tax, gain)) in enumerate(points.items()):
        ax.errorbar(
            tax["estimate"],
            gain["estimate"],
            xerr=[[tax["estimate"] - tax["low"]], [tax["high"] - tax["estimate"]]],
            yerr=[[gain["estimate"] - gain["low"]], [gain["high"] - gain["estimate"]]],
            fmt="os^vD"[i % 5],
            capsize=3,
            label=f"{name} ({ROLE_LABELS[rows[name]['role']]})" if rows[name]["role"] in ROLE_LABELS else name,
        )
    ax.legend()
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel(f"{MEASURE_SHORT[measure]} against base (lower is better)")
    ax.set_ylabel(f"chrF gain over {arms['reference']}")
    ax.set_title(f"Task gain against tax ({conf}% intervals)")
    _save_figure(fig, path)
    return None


def plot_reward_components(run_dir: Path, path: Path) -> str | None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = [r for r in read_log(RunLayout(run_dir).stage(TREATMENT).log) if "step" in r]
    keys = sorted({k for r in rows for k in r if k.startswith("rewards/") and k.endswith("/mean")})
    if not keys:
        return "no GRPO stage logged rewards in this run"
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, k in enumerate(keys):
        pts = [(r["step"], r[k]) for r in rows if k in r]
        # A marker and a dash of its own per component: equal rewards draw one line over another.
        ax.plot(
            *zip(*pts),
            marker="os^vD"[i % 5],
            linestyle=("-", "--", ":", "-.")[i % 4],
            fillstyle="none",
            label=k.removeprefix("rewards/").removesuffix("/mean"),
        )
    ax.legend()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean reward")
    ax.set_title("Reward components over GRPO steps")
    _save_figure(fig, path)
    return None


def plot_drift(evals: dict[str, dict[str, Any]], path: Path) -> str | None:
    import matplotlib.pyplot as plt

    data = {m: e["drift"]["nll_increase"] for m, e in evals.items() if e.get("drift")}
    if not data:
        return "no trained method's drift from the base model was measured"
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.boxplot(list(data.values()), tick_labels=list(data.keys()), showmeans=True)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_ylabel("per-example NLL increase over base (nats/token)")
    ax.set_title("NLL drift on general text")
    _save_figure(fig, path)
    return None


# Why the tax-meter plots are missing when no stage logged the meter.
TAX_METER_OFF = "no stage logged the tax meter (it runs every evaluation.tax_meter_steps training steps; 0 is off)"


def plot_tax_meter(run_dir: Path, path: Path) -> str | None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    layout = RunLayout(run_dir)
    series = {}
    for folder in sorted(layout.stages.iterdir()) if layout.stages.is_dir() else []:
        rows = [r for r in read_log(layout.stage(folder.name).log) if "tax/nll_drift" in r]
        if rows:
            series[folder.name] = rows
    if not series:
        return TAX_METER_OFF
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for stage, rows in series.items():
        ax.plot([r["step"] for r in rows], [r["tax/nll_drift"] for r in rows], marker=".", label=stage)
    ax.legend()
    ax.axhline(0, color="grey", lw=0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("training step")
    ax.set_ylabel("mean NLL increase over base")
    ax.set_title("Tax meter during training")
    _save_figure(fig, path)
    return None


def plot_tradeoff(run_dir: Path, path: Path) -> str | None:
    """Task gain against tax along training, one curve per stage (RL's Razor's frontier plot): the
    tax meter's NLL drift on general text (x) and the dev references' log-likelihood gain (y), from
    the base model at (0, 0) to the stage's last measured step. Up and to the left is better."""
    import matplotlib.pyplot as plt

    layout = RunLayout(run_dir)
    series = {}
    for folder in sorted(layout.stages.iterdir()) if layout.stages.is_dir() else []:
        rows = [r for r in read_log(layout.stage(folder.name).log) if "tax/nll_drift" in r and "task/dev_gain" in r]
        if rows:
            series[folder.name] = rows
    if not series:
        return TAX_METER_OFF
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for stage, rows in series.items():
        xs = [0.0] + [r["tax/nll_drift"] for r in rows]
        ys = [0.0] + [r["task/dev_gain"] for r in rows]
        (line,) = ax.plot(xs, ys, marker=".", label=stage)
        ax.annotate(f"step {rows[-1]['step']}", (xs[-1], ys[-1]), fontsize=7, color=line.get_color())
    ax.legend()
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("tax: mean NLL increase on general text (nats/token)")
    ax.set_ylabel("task gain: dev reference log-lik. per char")
    ax.set_title("Task gain against tax along training")
    _save_figure(fig, path)
    return None


PLOTS = {
    "gain_vs_tax.png": "Task gain against alignment tax",
    "reward_components.png": "Reward components over GRPO steps",
    "nll_drift.png": "NLL drift distributions",
    "tax_meter.png": "Tax meter over training steps",
    "tradeoff.png": "Task gain against tax along training",
}
# Plots only a run with control arms gets (drawn, or left out with a reason); other runs never
# mention them.
CONTROL_ARM_PLOTS = {"arms_gain_vs_tax.png": "Control arms: task gain against tax, with intervals"}
REPORT_PLOTS = {**PLOTS, **CONTROL_ARM_PLOTS}
