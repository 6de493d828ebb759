"""The report's plots: task gain against tax, reward components, NLL drift, the tax meter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from semrl.core.layout import RunLayout
from semrl.train.callbacks import read_log
from semrl.train.stages import BASE_METHOD, TREATMENT


def _save_figure(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gain_vs_tax(metrics: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    base_sem = metrics["methods"].get(BASE_METHOD, {}).get("task", {}).get("semantic")
    for method, m in metrics["methods"].items():
        tax = m.get("tax", {}).get("mean")
        if tax is None or base_sem is None:
            continue
        gain = m["task"]["semantic"] - base_sem
        iv = metrics["intervals"]["tax"].get(method, {}).get("mean")
        xerr = [[tax - iv["low"]], [iv["high"] - tax]] if iv else None
        ax.errorbar(tax, gain, xerr=xerr, fmt="o", capsize=3)
        ax.annotate(method, (tax, gain), textcoords="offset points", xytext=(5, 5))
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("alignment tax: mean benchmark score lost vs base (lower is better)")
    ax.set_ylabel("task gain: semantic similarity vs base")
    ax.set_title("Task gain against alignment tax")
    _save_figure(fig, path)


def plot_reward_components(run_dir: Path, path: Path) -> bool:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = [r for r in read_log(RunLayout(run_dir).stage(TREATMENT).log) if "step" in r]
    keys = sorted({k for r in rows for k in r if k.startswith("rewards/") and k.endswith("/mean")})
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for k in keys:
        pts = [(r["step"], r[k]) for r in rows if k in r]
        ax.plot(*zip(*pts), marker=".", label=k.removeprefix("rewards/").removesuffix("/mean"))
    if not keys:
        ax.text(0.5, 0.5, "no GRPO reward logs in this run", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean reward")
    ax.set_title("Reward components over GRPO steps")
    _save_figure(fig, path)
    return bool(keys)


def plot_drift(evals: dict[str, dict[str, Any]], path: Path) -> bool:
    import matplotlib.pyplot as plt

    data = {m: e["drift"]["nll_increase"] for m, e in evals.items() if e.get("drift")}
    fig, ax = plt.subplots(figsize=(5.5, 4))
    if data:
        ax.boxplot(list(data.values()), tick_labels=list(data.keys()), showmeans=True)
        ax.axhline(0, color="grey", lw=0.5)
    else:
        ax.text(0.5, 0.5, "no drift measured", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("per-example NLL increase over base (nats/token)")
    ax.set_title("NLL drift on general text")
    _save_figure(fig, path)
    return bool(data)


def plot_tax_meter(run_dir: Path, path: Path) -> bool:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(5.5, 4))
    found = False
    stages = RunLayout(run_dir).stages
    for folder in sorted(stages.iterdir()) if stages.is_dir() else []:
        stage = folder.name
        rows = [r for r in read_log(RunLayout(run_dir).stage(stage).log) if "tax/nll_drift" in r]
        if rows:
            found = True
            ax.plot([r["step"] for r in rows], [r["tax/nll_drift"] for r in rows], marker=".", label=stage)
    if found:
        ax.legend()
        ax.axhline(0, color="grey", lw=0.5)
    else:
        ax.text(
            0.5, 0.5, "tax meter off (evaluation.tax_meter_steps: 0)", ha="center", va="center", transform=ax.transAxes
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("training step")
    ax.set_ylabel("mean NLL increase over base")
    ax.set_title("Tax meter during training")
    _save_figure(fig, path)
    return found


def plot_tradeoff(run_dir: Path, path: Path) -> bool:
    """Task gain against tax along training, one curve per stage (RL's Razor's frontier plot): the
    tax meter's NLL drift on general text (x) and the dev references' log-likelihood gain (y), from
    the base model at (0, 0) to the stage's last measured step. Up and to the left is better."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    found = False
    layout = RunLayout(run_dir)
    for folder in sorted(layout.stages.iterdir()) if layout.stages.is_dir() else []:
        rows = [r for r in read_log(layout.stage(folder.name).log) if "tax/nll_drift" in r and "task/dev_gain" in r]
        if rows:
            found = True
            xs = [0.0] + [r["tax/nll_drift"] for r in rows]
            ys = [0.0] + [r["task/dev_gain"] for r in rows]
            (line,) = ax.plot(xs, ys, marker=".", label=folder.name)
            ax.annotate(f"step {rows[-1]['step']}", (xs[-1], ys[-1]), fontsize=7, color=line.get_color())
    if found:
        ax.legend()
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
    else:
        ax.text(
            0.5, 0.5, "tax meter off (evaluation.tax_meter_steps: 0)", ha="center", va="center", transform=ax.transAxes
        )
    ax.set_xlabel("tax: mean NLL increase on general text (nats/token)")
    ax.set_ylabel("task gain: dev reference log-lik. per char")
    ax.set_title("Task gain against tax along training")
    _save_figure(fig, path)
    return found


PLOTS = {
    "gain_vs_tax.png": "Task gain against alignment tax",
    "reward_components.png": "Reward components over GRPO steps",
    "nll_drift.png": "NLL drift distributions",
    "tax_meter.png": "Tax meter over training steps",
    "tradeoff.png": "Task gain against tax along training",
}
