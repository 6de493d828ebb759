"""The report: one `metrics.json`, `report.md` and `report.html` per run directory.

`metrics.json` schema (version 1)::

    {
      "schema_version": 1,
      "methods": {"<method>": {                       # base, cold_start, sft, grpo
          "task": {"bleu", "chrf", "semantic", "lang_rate", "length_ratio", ...},
          "general": {"<benchmark>": score},
          "tax": {"<benchmark>": score(base) - score(method), "mean": mean over benchmarks},
          "drift": {"nll_mean", "nll_p90", "kl_mean", "kl_p90"} | null (base)}},
      "intervals": {
          "task": {"<method>": {"<metric>": {"estimate", "low", "high"}}},
          "differences": {"<a>-<b>": {"<metric>": {"estimate", "low", "high"}}},
          "tax": {"<method>": {"<benchmark>" | "mean": {"estimate", "low", "high"}}}},
      "signatures": {"bleu": "...", "chrf": "..."},
      "judge": {                                      # only when RUN_DIR/eval/judge.json exists
          "judge": {"kind": "local" | "endpoint", "model", "mode", "url"?},
          "confidence": 0.95,
          "stale": bool,                              # a compared method was re-evaluated since
          "pairs": {"<a>-<b>": {                      # rates from a's side: win = a preferred
              "first": a, "second": b, "n", "judge_prompts",
              "counts": {"win", "tie", "loss", "inconsistent", "identical", "unparsed"},
              "rates": {"win" | "tie" | "loss": {"estimate", "low", "high"}},
              "inconsistent_rate", "first_position_rate"}}},
      "scale": {"model", "train_examples", "test_examples", "steps", ...},
      "training": {"<stage>": {"wall_time_s", "peak_rss_mb", "tau", ...}},
      "monitors": {                                   # null when the run has no GRPO log
          "rows": n logged GRPO steps, "window": rows per window,
          "series": {"<monitor>": {"first", "last", "change"}},
          "thresholds": {"<name>": value},
          "flags": [{"monitor", "statistic", "value", "threshold", "message"}]},
      "config": {...}, "versions": {...}
    }

Intervals are bootstrap percentile intervals at `evaluation.confidence` over test examples
(task, judge) or benchmark items (tax), paired where two methods are compared. Judge pairs are
asked in both orders: a win needs both orders to prefer a, a loss both to prefer b, anything else
is a tie; `inconsistent` counts pairs whose two orders preferred opposite outputs (see semrl.judge).

(task) or benchmark items (tax), paired where two methods are compared.

Reward-hacking monitors: the GRPO log's ``monitor/*`` values (see `semrl.training`), averaged over
the first and the last window of logged steps (a quarter of them, at least one). `<monitor>` is
one of length_ratio, mixed_script_rate, source_copy_rate, repetition_rate, zero_std_group_share
(``monitor/frac_groups_equal_reward``) and language_pass_rate. A flag is raised when the last
window's value (or, for the mixed-script rate, its rise) crosses the threshold named in
`MONITOR_FLAGS`; the report states every threshold. Task summaries carry `semantic_valid: false`
(and `semantic_note`) when the encoder cannot represent the output language.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from semrl.config import ExperimentConfig, load_config
from semrl.errors import SemrlError
from semrl.evaluation import load_evaluations
from semrl.io import atomic_path, write_json, write_text
from semrl.training import read_log

SCHEMA_VERSION = 1
# Per-example task metrics that get intervals, and the corpus metrics that get paired bootstrap.
PER_EXAMPLE_METRICS = ("semantic", "semantic_2", "lang_pass", "length_ratio", "rouge_l")
CORPUS_METRICS = ("bleu", "chrf")
COMPARISONS = (("grpo", "sft"), ("grpo", "cold_start"), ("sft", "base"), ("grpo", "base"), ("cold_start", "base"))
PER_TO_SUMMARY = {"lang_pass": "lang_rate"}

# Reward-hacking monitors: report name -> GRPO log key.
MONITOR_KEYS = {
    "length_ratio": "monitor/length_ratio",
    "mixed_script_rate": "monitor/mixed_script_rate",
    "source_copy_rate": "monitor/source_copy_rate",
    "repetition_rate": "monitor/repetition_rate",
    "zero_std_group_share": "monitor/frac_groups_equal_reward",
    "language_pass_rate": "monitor/language_pass_rate",
}
MONITOR_WINDOW_FRACTION = 0.25  # first and last quarter of the logged GRPO steps
# Flag thresholds. SG-SRL saw unguarded RL outputs grow to 3x the reference length.
LENGTH_RATIO_MAX = 2.0  # completions (characters) / reference, last window
MIXED_SCRIPT_RISE_MAX = 0.1  # rise of the mixed-script rate from the first to the last window
SOURCE_COPY_RATE_MAX = 0.2  # share of completions copied from their source, last window
REPETITION_RATE_MAX = 0.3  # share of completions with repeated 4-grams, last window
ZERO_STD_SHARE_MAX = 0.5  # share of groups whose rewards are all equal (no learning signal), last window
# (monitor, statistic, threshold, message): flagged when the statistic exceeds the threshold.
MONITOR_FLAGS: tuple[tuple[str, str, float, str], ...] = (
    ("length_ratio", "last", LENGTH_RATIO_MAX, "completions reached {value:.2f}x the reference length"),
    ("mixed_script_rate", "change", MIXED_SCRIPT_RISE_MAX, "the mixed-script rate rose by {value:+.2f}"),
    ("source_copy_rate", "last", SOURCE_COPY_RATE_MAX, "{value:.0%} of completions copy their source"),
    ("repetition_rate", "last", REPETITION_RATE_MAX, "{value:.0%} of completions repeat 4-grams"),
    ("zero_std_group_share", "last", ZERO_STD_SHARE_MAX, "{value:.0%} of groups got equal rewards (no learning signal)"),
)


def _interval_dict(iv: Any) -> dict[str, float]:
    return {"estimate": float(iv.estimate), "low": float(iv.low), "high": float(iv.high)}


def task_intervals(per_example: dict[str, list[float]], boot: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Bootstrap intervals of the per-example task metrics of one evaluation."""
    from semrl import metrics as M

    return {
        PER_TO_SUMMARY.get(k, k): _interval_dict(M.bootstrap_ci(per_example[k], **boot))
        for k in PER_EXAMPLE_METRICS
        if per_example.get(k)
    }


def paired_differences(ea: dict[str, Any], eb: dict[str, Any], target_lang: str, boot: dict[str, Any]) -> dict[str, Any]:
    """Paired bootstrap intervals of evaluation a minus evaluation b on the same test examples:
    per-example task metrics, and corpus BLEU/chrF."""
    from semrl import metrics as M

    d: dict[str, Any] = {}
    for k in PER_EXAMPLE_METRICS:
        if k in ea["per_example"] and k in eb["per_example"] and ea["per_example"][k]:
            d[PER_TO_SUMMARY.get(k, k)] = _interval_dict(M.paired_bootstrap(ea["per_example"][k], eb["per_example"][k], **boot))
    hyps_a = [o["output"] for o in ea["outputs"]]
    hyps_b = [o["output"] for o in eb["outputs"]]
    refs = [o["reference"] for o in ea["outputs"]]
    for k in CORPUS_METRICS:
        d[k] = _interval_dict(M.paired_corpus_bootstrap(k, hyps_a, hyps_b, refs, target_lang, **boot))
    return d


def bootstrap_args(config: ExperimentConfig) -> dict[str, Any]:
    """The bootstrap settings of a config's evaluation (resamples, confidence, seed)."""
    ev = config.evaluation
    return {"n_resamples": ev.bootstrap_samples, "confidence": ev.confidence, "seed": config.seed}


def summarize_monitors(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """First- vs last-window means of each reward-hacking monitor in GRPO log rows, and the flags
    they raise (see the module docstring). None when no row carries a monitor."""
    series: dict[str, dict[str, float]] = {}
    window = 0
    n_rows = 0
    for name, key in MONITOR_KEYS.items():
        values = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if not values:
            continue
        k = max(1, math.ceil(len(values) * MONITOR_WINDOW_FRACTION))
        first, last = float(np.mean(values[:k])), float(np.mean(values[-k:]))
        series[name] = {"first": first, "last": last, "change": last - first}
        window, n_rows = max(window, k), max(n_rows, len(values))
    if not series:
        return None
    flags = []
    for name, statistic, threshold, message in MONITOR_FLAGS:
        if name in series and series[name][statistic] > threshold:
            value = series[name][statistic]
            flags.append({
                "monitor": name, "statistic": statistic, "value": value, "threshold": threshold,
                "message": message.format(value=value) + f" ({statistic} > {threshold})",
            })
    thresholds = {f"{name}_{statistic}": threshold for name, statistic, threshold, _ in MONITOR_FLAGS}
    return {"rows": n_rows, "window": window, "series": series, "thresholds": thresholds, "flags": flags}


def build_metrics(run_dir: str | Path, evals: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Assemble metrics.json's content from a run directory's evaluations (read from
    `RUN_DIR/eval` unless given) and manifests."""
    from semrl import metrics as M

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise SemrlError(f"{run_dir}: not a semrl run directory (no config.yaml). Run `semrl run CONFIG --out {run_dir}` first.")
    config = load_config(config_path)
    if evals is None:
        evals = load_evaluations(run_dir)
    if not evals:
        raise SemrlError(f"{run_dir}: no evaluations in {run_dir / 'eval'}; `semrl run` evaluates after training.")
    ev = config.evaluation
    boot = bootstrap_args(config)
    target = config.task.target_lang

    methods: dict[str, Any] = {}
    iv_task: dict[str, Any] = {}
    iv_tax: dict[str, Any] = {}
    base = evals.get("base")
    for method, e in evals.items():
        general = {name: r["score"] for name, r in e["general"].items()}
        entry: dict[str, Any] = {"task": e["task"], "general": general, "drift": None}
        if e.get("drift"):
            entry["drift"] = {k: e["drift"][k] for k in ("nll_mean", "nll_p90", "kl_mean", "kl_p90")}
        iv_task[method] = task_intervals(e["per_example"], boot)
        if base is not None:
            tax: dict[str, float] = {}
            tax_iv: dict[str, Any] = {}
            diffs = []
            for name, r in e["general"].items():
                if name not in base["general"]:
                    continue
                b = np.asarray(base["general"][name]["per_example"], dtype=float)
                m = np.asarray(r["per_example"], dtype=float)
                if len(b) != len(m):
                    continue  # different subsets cannot be paired
                tax[name] = float(base["general"][name]["score"] - r["score"])
                tax_iv[name] = _interval_dict(M.paired_bootstrap(b, m, **boot))
                diffs.append(b - m)
            if tax:
                tax["mean"] = float(np.mean([v for k, v in tax.items()]))
                tax_iv["mean"] = _interval_dict(M.mean_of_paired_means_ci(diffs, **boot))
            entry["tax"] = tax
            iv_tax[method] = tax_iv
        methods[method] = entry

    differences: dict[str, Any] = {}
    for a, b in COMPARISONS:
        if a not in evals or b not in evals:
            continue
        differences[f"{a}-{b}"] = paired_differences(evals[a], evals[b], target, boot)

    training: dict[str, Any] = {}
    for stage in ("cold_start", "sft", "grpo"):
        manifest = run_dir / "stages" / stage / "manifest.json"
        if manifest.is_file():
            m = json.loads(manifest.read_text(encoding="utf-8"))
            training[stage] = {k: m.get(k) for k in ("wall_time_s", "peak_rss_mb", "metrics", "extra")}
    any_eval = next(iter(evals.values()))
    from semrl.data import load_splits

    splits = load_splits(run_dir)
    scale = {
        "model": config.model.name,
        "lora": config.model.lora.enabled,
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "test_examples_evaluated": any_eval["task"]["n"],
        "benchmark_items": {name: r["n"] for name, r in any_eval["general"].items()},
        "steps": {s: (t.get("metrics") or {}).get("global_step") for s, t in training.items()},
        "encoder": config.rewards.encoder.name or config.rewards.encoder.backend,
    }
    from semrl.judge import judge_summary, load_judge
    from semrl.runner import package_versions

    judged = load_judge(run_dir)
    return {
        "schema_version": SCHEMA_VERSION,
        "methods": methods,
        "intervals": {"task": iv_task, "differences": differences, "tax": iv_tax, "confidence": ev.confidence},
        "signatures": {k: any_eval["task"].get(f"{k}_signature") for k in CORPUS_METRICS},
        **({"judge": judge_summary(judged, evals)} if judged is not None else {}),
        "scale": scale,
        "training": training,
        "monitors": summarize_monitors(read_log(run_dir / "stages" / "grpo" / "log.jsonl")),
        "config": config.to_dict(),
        "versions": package_versions(),
    }


# ---------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------
def _save_figure(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_gain_vs_tax(metrics: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    base_sem = metrics["methods"].get("base", {}).get("task", {}).get("semantic")
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


def _plot_reward_components(run_dir: Path, path: Path) -> bool:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = [r for r in read_log(run_dir / "stages" / "grpo" / "log.jsonl") if "step" in r]
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


def _plot_drift(evals: dict[str, dict[str, Any]], path: Path) -> bool:
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


def _plot_tax_meter(run_dir: Path, path: Path) -> bool:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(5.5, 4))
    found = False
    for stage in ("cold_start", "sft", "grpo"):
        rows = [r for r in read_log(run_dir / "stages" / stage / "log.jsonl") if "tax/nll_drift" in r]
        if rows:
            found = True
            ax.plot([r["step"] for r in rows], [r["tax/nll_drift"] for r in rows], marker=".", label=stage)
    if found:
        ax.legend()
        ax.axhline(0, color="grey", lw=0.5)
    else:
        ax.text(0.5, 0.5, "tax meter off (evaluation.tax_meter_steps: 0)", ha="center", va="center", transform=ax.transAxes)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("training step")
    ax.set_ylabel("mean NLL increase over base")
    ax.set_title("Tax meter during training")
    _save_figure(fig, path)
    return found


PLOTS = {
    "gain_vs_tax.png": "Task gain against alignment tax",
    "reward_components.png": "Reward components over GRPO steps",
    "nll_drift.png": "NLL drift distributions",
    "tax_meter.png": "Tax meter over training steps",
}


# ---------------------------------------------------------------------------------------------
# Markdown / HTML
# ---------------------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _fmt_iv(iv: dict[str, float] | None, digits: int = 3) -> str:
    if not iv:
        return "–"
    return f"{iv['estimate']:+.{digits}f} [{iv['low']:+.{digits}f}, {iv['high']:+.{digits}f}]"


def _fmt_with_iv(value: float | None, iv: dict[str, float] | None) -> str:
    """A value with its interval, "0.812 [0.790, 0.834]"; the bare value when there is no interval."""
    if value is None:
        return "–"
    return f"{value:.3f} [{iv['low']:.3f}, {iv['high']:.3f}]" if iv else f"{value:.3f}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def verdict(metrics: dict[str, Any]) -> str:
    """One honest sentence: at this scale, was GRPO's tax and drift lower than SFT's?"""
    m = metrics["methods"]
    if "grpo" not in m or "sft" not in m or "mean" not in m["grpo"].get("tax", {}) or "mean" not in m["sft"].get("tax", {}):
        return "GRPO and SFT were not both evaluated against the base model, so no tax comparison is made."
    conf = int(metrics["intervals"]["confidence"] * 100)
    g, s = m["grpo"]["tax"]["mean"], m["sft"]["tax"]["mean"]
    gi, si = metrics["intervals"]["tax"]["grpo"]["mean"], metrics["intervals"]["tax"]["sft"]["mean"]
    overlap = not (gi["high"] < si["low"] or si["high"] < gi["low"])
    tax_part = (
        f"mean alignment tax: GRPO {g:+.3f} [{gi['low']:+.3f}, {gi['high']:+.3f}] vs SFT {s:+.3f} "
        f"[{si['low']:+.3f}, {si['high']:+.3f}] ({conf}% intervals); "
        + ("GRPO's tax was lower" if g < s else "GRPO's tax was not lower")
        + (", but the intervals overlap, so this run does not separate them." if overlap else ", and the intervals do not overlap.")
    )
    dg, ds = m["grpo"].get("drift"), m["sft"].get("drift")
    drift_part = ""
    if dg and ds:
        drift_part = (
            f" NLL drift on general text: GRPO mean {dg['nll_mean']:+.3f} (P90 {dg['nll_p90']:+.3f}) vs SFT "
            f"{ds['nll_mean']:+.3f} (P90 {ds['nll_p90']:+.3f}): "
            + ("lower for GRPO." if dg["nll_mean"] < ds["nll_mean"] else "not lower for GRPO.")
        )
    return "At this scale, " + tax_part + drift_part + _learning_part(metrics, conf)


def _learning_part(metrics: dict[str, Any], conf: int) -> str:
    """Did GRPO learn the task beyond its cold-start starting point? (semantic similarity on test)"""
    d = metrics["intervals"]["differences"].get("grpo-cold_start", {}).get("semantic")
    if d is None:
        return ""
    if d["low"] > 0:
        outcome = "GRPO learned beyond its cold-start model (the interval lies above zero)."
    elif d["high"] < 0:
        outcome = "GRPO ended below its cold-start model (the interval lies below zero)."
    else:
        outcome = "the interval includes zero, so this run does not show that GRPO learned beyond its cold-start model."
    return (
        f" Test semantic similarity, GRPO minus cold-start: {d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] "
        f"({conf}% paired interval): " + outcome
    )


def render_markdown(metrics: dict[str, Any], evals: dict[str, dict[str, Any]], plots: dict[str, str]) -> str:
    methods = metrics["methods"]
    sc = metrics["scale"]
    out = [f"# semrl report: {metrics['config']['name']}", ""]
    out += [
        "## Scale",
        "",
        f"Model `{sc['model']}` ({'LoRA' if sc['lora'] else 'full fine-tuning'}), reward encoder `{sc['encoder']}`; "
        f"splits {sc['split_sizes']}; {sc['test_examples_evaluated']} test examples evaluated; "
        f"benchmark items {sc['benchmark_items']}; training steps {sc['steps']}.",
        "",
        "This is a small-scale check of the paper's claim (GRPO with a semantic reward keeps general skills "
        "better than strong SFT), not a reproduction of its numbers.",
        "",
        "GRPO reward: " + " + ".join(f"{c['weight']:g} {c['name']}" for c in metrics["config"]["rewards"]["components"]) + ".",
        "",
        "## Verdict",
        "",
        verdict(metrics),
        "",
        *_flag_summary(metrics.get("monitors")),
        "## Task quality",
        "",
    ]
    task_cols = ["bleu", "chrf", "semantic", "semantic_2", "rouge_l", "lang_rate", "length_ratio", "source_copy_rate"]
    present = [c for c in task_cols if any(c in m["task"] for m in methods.values())]
    out.append(_md_table(["method"] + present, [[k] + [_fmt(m["task"].get(c)) for c in present] for k, m in methods.items()]))
    out += ["", f"BLEU signature: `{metrics['signatures'].get('bleu')}`; chrF signature: `{metrics['signatures'].get('chrf')}`.", ""]
    for key in ("semantic", "semantic_2"):
        note = next((m["task"].get(f"{key}_note") for m in methods.values() if m["task"].get(f"{key}_valid") is False), None)
        if note:
            out += [f"WARNING: `{key}` similarity is not meaningful in this run: {note}.", ""]
    conf = int(metrics["intervals"]["confidence"] * 100)
    diffs = metrics["intervals"]["differences"]
    if diffs:
        cols = sorted({k for d in diffs.values() for k in d})
        out += [f"### Differences between methods (paired bootstrap, {conf}% intervals)", ""]
        out.append(_md_table(["comparison"] + cols, [[k] + [_fmt_iv(d.get(c)) for c in cols] for k, d in diffs.items()]))
        out.append("")
    if "judge" in metrics:
        out += _judge_section(metrics["judge"])
    out += ["## Alignment tax", "", "Tax = score(base) − score(method); positive means the method lost general competence.", ""]
    benches = sorted({b for m in methods.values() for b in m["general"]})
    rows = []
    for k, m in methods.items():
        row = [k] + [_fmt(m["general"].get(b)) for b in benches]
        tiv = metrics["intervals"]["tax"].get(k, {})
        row += [_fmt_iv(tiv.get(b)) for b in benches + ["mean"]]
        rows.append(row)
    out.append(_md_table(["method"] + benches + [f"tax {b}" for b in benches] + ["tax mean"], rows))
    out += ["", "## Drift from the base model on general text", ""]
    out.append(_md_table(
        ["method", "NLL increase mean", "NLL increase P90", "token KL mean", "token KL P90"],
        [[k] + [_fmt((m.get("drift") or {}).get(c), 4) for c in ("nll_mean", "nll_p90", "kl_mean", "kl_p90")] for k, m in methods.items()],
    ))
    out += ["", *_monitor_section(metrics.get("monitors")), "## Training", ""]
    tr = metrics["training"]
    out.append(_md_table(
        ["stage", "wall time (s)", "peak RSS (MiB)", "tau"],
        [[s, _fmt(t.get("wall_time_s"), 1), _fmt(t.get("peak_rss_mb"), 0), _fmt(((t.get("extra") or {}).get("tau") or {}).get("value"), 4)] for s, t in tr.items()],
    ))
    out += ["", "## Plots", ""]
    for name, title in PLOTS.items():
        if name in plots:
            out += [f"### {title}", "", f"![{title}](plots/{name})", ""]
    out += ["## Sample outputs", ""]
    first = next(iter(evals.values()))
    rows = []
    for i, o in enumerate(first["outputs"][:8]):
        row = [_short(o["source"]), _short(o["reference"])]
        for k, e in evals.items():
            sem = e["per_example"]["semantic"][i]
            row.append(f"{_short(e['outputs'][i]['output'])} (sim {sem:.2f}, lang {int(e['per_example']['lang_pass'][i])})")
        rows.append(row)
    out.append(_md_table(["source", "reference"] + list(evals), rows))
    out += ["", "## Versions", "", "`" + json.dumps(metrics["versions"]) + "`", ""]
    return "\n".join(out)


def _judge_section(judge: dict[str, Any]) -> list[str]:
    """The report's judge table: win/tie/loss rates with intervals per compared pair."""
    who = judge["judge"]
    conf = int(round((judge.get("confidence") or 0.95) * 100))
    out = [
        "## LLM judge: pairwise preference",
        "",
        f"Judge `{who['model']}` ({who['kind']}{', ' + who['url'] if who.get('url') else ''}; verdicts by {who['mode']}). "
        "Each pair was shown in both orders: a win needs both orders to prefer the first method's output, a loss both "
        "to prefer the second's; anything else is a tie. Inconsistent: the two orders preferred opposite outputs "
        f"(position bias). Rates from the first method's side, with {conf}% bootstrap intervals over examples.",
        "",
    ]
    if judge.get("stale"):
        out += ["Stale: a compared method was evaluated again after this judge pass; rerun `semrl judge RUN_DIR`.", ""]

    def rate(iv: dict[str, float]) -> str:
        return _fmt_with_iv(iv["estimate"], iv)

    rows = [
        [f"{p['first']} vs {p['second']}", str(p["n"]), rate(p["rates"]["win"]), rate(p["rates"]["tie"]), rate(p["rates"]["loss"]),
         f"{p['counts']['inconsistent']} ({p['inconsistent_rate']:.2f})", str(p["counts"]["identical"]),
         _fmt(p.get("first_position_rate"), 2)]
        for p in judge["pairs"].values()
    ]
    out.append(_md_table(["comparison", "n", "win", "tie", "loss", "inconsistent", "identical outputs", "verdicts for position A"], rows))
    return out + [""]


def _flag_summary(monitors: dict[str, Any] | None) -> list[str]:
    flags = (monitors or {}).get("flags") or []
    if not flags:
        return []
    names = ", ".join(f["monitor"] for f in flags)
    return [f"GRPO raised {len(flags)} reward-hacking flag(s) ({names}): see Reward-hacking monitors.", ""]


def _monitor_section(monitors: dict[str, Any] | None) -> list[str]:
    out = ["## Reward-hacking monitors", ""]
    if not monitors:
        return out + ["No GRPO monitors were logged in this run.", ""]
    out += [
        f"Means over the first and the last {monitors['window']} of {monitors['rows']} logged GRPO steps.",
        "",
        _md_table(
            ["monitor", "first", "last", "change"],
            [[k, _fmt(v["first"]), _fmt(v["last"]), f"{v['change']:+.3f}"] for k, v in monitors["series"].items()],
        ),
        "",
        "Flag thresholds: "
        + "; ".join(f"{name} {stat} > {thr}" for name, stat, thr, _ in MONITOR_FLAGS)
        + " (statistic 'change' is last minus first).",
        "",
    ]
    if monitors["flags"]:
        out += ["Flags:", ""] + [f"- FLAG {f['monitor']}: {f['message']}" for f in monitors["flags"]] + [""]
    else:
        out += ["No monitor crossed its threshold.", ""]
    return out


def _short(text: str, n: int = 60) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= n else text[: n - 1] + "…"


def render_html(markdown_text: str, plot_dir: Path) -> str:
    """A self-contained HTML page: the Markdown's tables and text, plots embedded as data URIs."""
    body: list[str] = []
    lines = markdown_text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            table = []
            while i < len(lines) and lines[i].startswith("|"):
                table.append(lines[i])
                i += 1
            body.append(_html_table(table))
            continue
        if line.startswith("!["):
            name = line[line.index("(") + 1 : -1].split("/")[-1]
            data = base64.b64encode((plot_dir / name).read_bytes()).decode()
            body.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.strip():
            body.append(f"<p>{html.escape(line).replace('`', '')}</p>")
        i += 1
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;padding:4px 8px}"
        "th{background:#f4f4f4}img{max-width:560px;display:block;margin:1em 0}"
    )
    return f"<!doctype html><html><head><meta charset='utf-8'><title>semrl report</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"


def _html_table(rows: list[str]) -> str:
    def cells(row: str) -> list[str]:
        return [c.strip().replace("\\|", "|") for c in row.strip().strip("|").split(" | ")]

    head = cells(rows[0])
    out = ["<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"]
    for r in rows[2:]:
        out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells(r)) + "</tr>")
    return "".join(out) + "</table>"


def write_report(run_dir: str | Path) -> Path:
    """Write metrics.json, report.md, report.html and plots/ for a run; returns report.html's path."""
    run_dir = Path(run_dir)
    evals = load_evaluations(run_dir)
    metrics = build_metrics(run_dir, evals)
    with atomic_path(run_dir / "plots") as plot_dir:
        plot_dir.mkdir()
        _plot_gain_vs_tax(metrics, plot_dir / "gain_vs_tax.png")
        _plot_reward_components(run_dir, plot_dir / "reward_components.png")
        _plot_drift(evals, plot_dir / "nll_drift.png")
        _plot_tax_meter(run_dir, plot_dir / "tax_meter.png")
    plots = {p.name: str(p) for p in (run_dir / "plots").glob("*.png")}
    md = render_markdown(metrics, evals, plots)
    write_json(run_dir / "metrics.json", metrics)
    write_text(run_dir / "report.md", md)
    return write_text(run_dir / "report.html", render_html(md, run_dir / "plots"))
