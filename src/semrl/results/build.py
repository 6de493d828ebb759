"""metrics.json: every number of a run, built from its evaluations and manifests.

`metrics.json` schema (version 2)::

    {
      "schema_version": 2,
      "methods": {"<method>": {                       # base and every evaluated stage
          "task": {"bleu", "chrf", "semantic", "lang_rate", "length_ratio", ...,
                   "chance": {"bleu", "chrf", "semantic", "reference_order"}},  # shuffled-reference floors
          "chance": {"<metric>": {"value", "floor", "margin": {"estimate", "low", "high"},
                                  "above_chance": bool}},               # margin interval above zero
          "general": {"<benchmark>": score},
          "tax": {"<benchmark>": score(base) - score(method), "mean": mean over benchmarks},
          "tax_evidence": {"<benchmark>": {                              # not for base
              "metric", "n", "accuracy_tax": {"estimate", "low", "high"},
              "flips": {"n", "lost", "gained", "p_value"},               # McNemar exact test
              "continuous_measure", "continuous": {"base", "method"},    # when the benchmark has one
              "continuous_tax": {"estimate", "low", "high"},             # per item, base - method
              "empty_share": {"base", "method"}, "format_change": bool}},  # generative benchmarks
          "task_kl": {"n", "estimate", "low", "high"},                   # forward KL from base on the task
          "distinct_output_rate": share of distinct test outputs,
          "repetitive_output_rate": share of test outputs over 15% repeated 4-grams,
          "drift": {"nll_mean", "nll_p90", "kl_mean", "kl_p90"} | null (base)}},
      "comparison": {"primary": "continuous" | "accuracy" | "drift" | "task_kl", "pair": [grpo, sft],
          "measures": {"<measure>": {"estimate", "low", "high", "reading"}}},  # tax(grpo) - tax(sft);
                                                      # reading: lower | higher | not separated
      "arms": {                                       # when a grpo or rft stage and its parent were evaluated
          "reference", "primary", "budget_tolerance", "roles": {"<role>": stage},
          "methods": {"<method>": {"kind", "role", "gain": {"<metric>": interval},  # over the reference
                                   "tax": {"<measure>": interval}, "gain_per_tax": {"measure", "value", "reading"},
                                   "budget": {"steps", "prompts", "trained_examples", "counted"} | null}},
          "comparisons": {"<a>-<b>": {"a", "b", "roles", "isolates", "gain": {"<metric>": interval},
                                      "tax": {"<measure>": {"estimate", "low", "high", "reading"}},
                                      "headline", "budget_matched"}}},   # see semrl.results.arms
      "intervals": {
          "task": {"<method>": {"<metric>": {"estimate", "low", "high"}}},
          "differences": {"<a>-<b>": {"<metric>": {"estimate", "low", "high"}}},
          "tax": {"<method>": {"<benchmark>" | "mean": {"estimate", "low", "high"}}}},
      "signatures": {"bleu": "...", "chrf": "..."},
      "extra_tasks": {"<test>": {                     # only with evaluation.extra_tests
          "source": {...}, "scale": {"examples", "documents", "loaded", "available", "cleaning",
                                     "leakage", "limit", "max_source_chars"},
          "methods": {"<method>": {"task", "chance", "distinct_output_rate"}},   # as methods.<method>
          "intervals": {"task": {...}, "differences": {...}}}},                  # as intervals
      "judge": {                                      # only when RUN_DIR/eval/judge.json exists
          "judge": {"kind": "local" | "endpoint", "model", "mode", "url"?},
          "confidence": 0.95,
          "stale": bool,                              # a compared method was re-evaluated since
          "pairs": {"<a>-<b>": {                      # rates from a's side: win = a preferred
              "first": a, "second": b, "n", "judge_prompts",
              "counts": {"win", "tie", "loss", "inconsistent", "identical", "unparsed"},
              "rates": {"win" | "tie" | "loss": {"estimate", "low", "high"}},
              "inconsistent_rate", "first_position_rate"}}},
      "scale": {"model", "lora", "split_sizes": {"<split>": n}, "test_examples_evaluated",
                "benchmark_items": {"<benchmark>": n}, "steps": {"<stage>": n}, "grpo_stages": [...],
                "stage_rewards"?: {"<stage>": [{"name", "weight", ...}]}, "encoder", "hardware", "eval_dtype"},
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
is a tie; `inconsistent` counts pairs whose two orders preferred opposite outputs (see semrl.eval.judge).
The tax measures and chance floors are explained in `semrl.results.evidence`.

Reward-hacking monitors: the GRPO log's ``monitor/*`` values (see `semrl.train.callbacks`), averaged over
the first and the last window of logged steps (a quarter of them, at least one). `<monitor>` is
one of length_ratio, mixed_script_rate, source_copy_rate, repetition_rate, zero_std_group_share
(``monitor/frac_groups_equal_reward``) and language_pass_rate. A flag is raised when the last
window's value (or, for the mixed-script rate, its rise) crosses the threshold named in
`MONITOR_FLAGS`; the report states every threshold. Task summaries carry `semantic_valid: false`
(and `semantic_note`) when the encoder cannot represent the output language.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from semrl.config.experiment import ExperimentConfig, load_config
from semrl.core.errors import SemrlError
from semrl.core.io import read_manifest
from semrl.core.layout import RunLayout
from semrl.eval.records import load_evaluations
from semrl.eval.stats import (
    mean_of_paired_means_ci,
    paired_bootstrap,
    paired_corpus_bootstrap,
)
from semrl.results.arms import arms_reading, arms_summary
from semrl.results.evidence import (
    PRIMARY_TAX_MEASURES,
    benchmark_evidence,
    chance_margins,
    distinct_output_rate,
    output_sources,
    repetitive_output_rate,
    task_kl_summary,
    tax_difference,
)
from semrl.rewards.guards import GUARD_NGRAM, REPETITION_THRESHOLD
from semrl.train.callbacks import read_log
from semrl.train.stages import (
    BASE_METHOD,
    BASELINE,
    COLD_START,
    TREATMENT,
    evaluated_methods,
    stage_order,
    stage_rewards,
    stage_specs,
)

SCHEMA_VERSION = 2
# Per-example task metrics that get intervals, and the corpus metrics that get paired bootstrap.
PER_EXAMPLE_METRICS = ("semantic", "semantic_2", "lang_pass", "length_ratio", "rouge_l")
CORPUS_METRICS = ("bleu", "chrf")
COMPARISONS = (
    (TREATMENT, BASELINE),
    (TREATMENT, COLD_START),
    (BASELINE, BASE_METHOD),
    (TREATMENT, BASE_METHOD),
    (COLD_START, BASE_METHOD),
)
PER_TO_SUMMARY = {"lang_pass": "lang_rate"}


# From this share of repetitive test outputs on, a method's reading says so (a gamed reward shows as
# repetition: 98 of the 120 outputs of the canon demo's first GRPO run, against 13 of its cold start's).
REPETITIVE_NOTE_RATE = 0.2


def comparisons(methods: Iterable[str]) -> list[tuple[str, str]]:
    """The method pairs whose paired task differences metrics.json records, among `methods`: the
    paper's roles (`COMPARISONS`), then each further trained method (a control arm such as RFT or a
    surface-reward GRPO, a recovery stage) against the cold start it is measured from and against
    GRPO."""
    present = list(methods)
    pairs = [(a, b) for a, b in COMPARISONS if a in present and b in present]
    for m in present:
        if m in (BASE_METHOD, COLD_START, BASELINE, TREATMENT):
            continue
        pairs += [(a, b) for a, b in ((m, COLD_START), (TREATMENT, m)) if a in present and b in present]
    return pairs


# Reward-hacking monitors: report name -> GRPO log key.
MONITOR_KEYS = {
    "length_ratio": "monitor/length_ratio",
    "mixed_script_rate": "monitor/mixed_script_rate",
    "source_copy_rate": "monitor/source_copy_rate",
    "repetition_rate": "monitor/repetition_rate",
    "zero_std_group_share": "monitor/frac_groups_equal_reward",
    "language_pass_rate": "monitor/language_pass_rate",
}


# What says GRPO learned the task beyond its cold start: (difference key, how the verdict names it).
LEARNING_MEASURES = (
    ("semantic", "semantic similarity (reward encoder)"),
    ("semantic_2", "semantic similarity (second encoder)"),
    ("chrf", "chrF"),
)
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
    (
        "zero_std_group_share",
        "last",
        ZERO_STD_SHARE_MAX,
        "{value:.0%} of groups got equal rewards (no learning signal)",
    ),
)


def _interval_dict(iv: Any) -> dict[str, float]:
    return {"estimate": float(iv.estimate), "low": float(iv.low), "high": float(iv.high)}


def task_intervals(per_example: dict[str, list[float]], boot: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Bootstrap intervals of the per-example task metrics of one evaluation."""
    from semrl.eval.stats import (
        bootstrap_ci,
    )

    return {
        PER_TO_SUMMARY.get(k, k): _interval_dict(bootstrap_ci(per_example[k], **boot))
        for k in PER_EXAMPLE_METRICS
        if per_example.get(k)
    }


def paired_differences(
    ea: dict[str, Any], eb: dict[str, Any], target_lang: str, boot: dict[str, Any]
) -> dict[str, Any]:
    """Paired bootstrap intervals of evaluation a minus evaluation b on the same test examples:
    per-example task metrics, and corpus BLEU/chrF."""

    d: dict[str, Any] = {}
    for k in PER_EXAMPLE_METRICS:
        if k in ea["per_example"] and k in eb["per_example"] and ea["per_example"][k]:
            d[PER_TO_SUMMARY.get(k, k)] = _interval_dict(
                paired_bootstrap(ea["per_example"][k], eb["per_example"][k], **boot)
            )
    hyps_a = [o["output"] for o in ea["outputs"]]
    hyps_b = [o["output"] for o in eb["outputs"]]
    refs = [o["reference"] for o in ea["outputs"]]
    for k in CORPUS_METRICS:
        d[k] = _interval_dict(paired_corpus_bootstrap(k, hyps_a, hyps_b, refs, target_lang, **boot))
    return d


def task_evidence(record: dict[str, Any], target_lang: str, boot: dict[str, Any]) -> dict[str, Any]:
    """What a method's task table shows beside its summary: the chance floors with their margins
    (`evidence.chance_margins`), the share of distinct outputs and of outputs that repeat
    themselves, for the test split's record or an extra test's."""
    outputs = [o["output"] for o in record["outputs"]]
    sources = output_sources(record["outputs"])
    evidence = {
        "chance": chance_margins(record, target_lang, boot),
        "distinct_output_rate": distinct_output_rate(outputs, sources),
        "repetitive_output_rate": repetitive_output_rate(outputs, target_lang),
    }
    if sources is not None:
        evidence["distinct_sources"] = len(set(sources))
    return evidence


def method_differences(records: dict[str, dict[str, Any]], target_lang: str, boot: dict[str, Any]) -> dict[str, Any]:
    """Paired differences ("<a>-<b>") between the methods' task records (`comparisons`), each pair
    only when both were evaluated on the same examples."""
    out: dict[str, Any] = {}
    for a, b in comparisons(records):
        ids_a = [o["id"] for o in records[a]["outputs"]]
        if ids_a == [o["id"] for o in records[b]["outputs"]]:
            out[f"{a}-{b}"] = paired_differences(records[a], records[b], target_lang, boot)
    return out


# What metrics.json's extra_tasks.<test>.scale takes from the extra test's manifest (data.extra).
EXTRA_SCALE_KEYS = ("examples", "documents", "loaded", "available", "cleaning", "leakage", "limit", "max_source_chars")


def extra_task_metrics(
    config: ExperimentConfig, layout: RunLayout, evals: dict[str, dict[str, Any]], boot: dict[str, Any]
) -> dict[str, Any]:
    """Per extra test set (`evaluation.extra_tests`) that some method was evaluated on: where its
    rows came from (its manifest), each method's task summary with its chance floors and distinct
    outputs, and the same intervals as the test split's (per method, and paired differences)."""
    target = config.task.target_lang
    out: dict[str, Any] = {}
    for test in config.evaluation.extra_tests:
        records = {
            m: e["extra_tasks"][test.name] for m, e in evals.items() if test.name in (e.get("extra_tasks") or {})
        }
        if not records:
            continue
        manifest = read_manifest(layout.extra_test_manifest(test.name)) or {}
        scale = {k: manifest[k] for k in EXTRA_SCALE_KEYS if k in manifest}
        scale.setdefault("examples", next(iter(records.values()))["task"]["n"])
        out[test.name] = {
            # As the config writes it: its kind and the keys set away from their defaults.
            "source": {"kind": test.source.kind, **test.source.model_dump(mode="json", exclude_defaults=True)},
            "scale": scale,
            "methods": {m: {"task": r["task"], **task_evidence(r, target, boot)} for m, r in records.items()},
            "intervals": {
                "task": {m: task_intervals(r["per_example"], boot) for m, r in records.items()},
                "differences": method_differences(records, target, boot),
            },
        }
    return out


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
            flags.append(
                {
                    "monitor": name,
                    "statistic": statistic,
                    "value": value,
                    "threshold": threshold,
                    "message": message.format(value=value) + f" ({statistic} > {threshold})",
                }
            )
    thresholds = {f"{name}_{statistic}": threshold for name, statistic, threshold, _ in MONITOR_FLAGS}
    return {"rows": n_rows, "window": window, "series": series, "thresholds": thresholds, "flags": flags}


def _stage_rewards(config: ExperimentConfig) -> dict[str, Any]:
    """{"stage_rewards": {stage: its own reward components}} for the enabled stages with their own
    `rewards:` section, or {} when none has one (metrics.json then stays as before)."""
    own = {
        spec.name: [c.model_dump(mode="json", exclude_none=True) for c in stage_rewards(config, spec.name).components]
        for spec in stage_order(config.stages)
        if getattr(config.stages.section(spec.name), "rewards", None) is not None
    }
    return {"stage_rewards": own} if own else {}


def build_metrics(run_dir: str | Path, evals: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Assemble metrics.json's content from a run directory's evaluations (read from
    `RUN_DIR/eval` unless given) and manifests."""

    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    config_path = layout.config
    if not config_path.is_file():
        raise SemrlError(
            f"{run_dir}: not a semrl run directory (no config.yaml). Run `semrl run CONFIG --out {run_dir}` first."
        )
    config = load_config(config_path)
    if evals is None:
        evals = load_evaluations(run_dir, evaluated_methods(config))
    if not evals:
        raise SemrlError(f"{run_dir}: no evaluations in {layout.eval_dir}; `semrl run` evaluates after training.")
    ev = config.evaluation
    boot = bootstrap_args(config)
    target = config.task.target_lang

    methods: dict[str, Any] = {}
    iv_task: dict[str, Any] = {}
    iv_tax: dict[str, Any] = {}
    base = evals.get(BASE_METHOD)
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
                tax_iv[name] = _interval_dict(paired_bootstrap(b, m, **boot))
                diffs.append(b - m)
            if tax:
                tax["mean"] = float(np.mean([v for k, v in tax.items()]))
                tax_iv["mean"] = _interval_dict(mean_of_paired_means_ci(diffs, **boot))
            entry["tax"] = tax
            iv_tax[method] = tax_iv
            if method != BASE_METHOD:
                entry["tax_evidence"] = {
                    name: benchmark_evidence(base["general"][name], r, name, boot)
                    for name, r in e["general"].items()
                    if name in base["general"]
                }
        entry.update(task_evidence(e, target, boot))
        kl = task_kl_summary(e, boot)
        if kl is not None:
            entry["task_kl"] = kl
        methods[method] = entry

    comparison = {
        "primary": ev.primary_tax,
        "pair": [TREATMENT, BASELINE],
        "measures": {
            m: d for m in PRIMARY_TAX_MEASURES if (d := tax_difference(evals, TREATMENT, BASELINE, m, boot)) is not None
        },
    }

    differences = method_differences(evals, target, boot)

    training: dict[str, Any] = {}
    for stage in stage_specs(config.stages):
        m = read_manifest(layout.stage(stage).manifest)
        if m is not None:
            training[stage] = {k: m.get(k) for k in ("wall_time_s", "peak_rss_mb", "metrics", "extra")}
    # Control arms: gains over the arms' starting point and taxes with intervals, budgets, and the
    # comparisons that each change one factor (semrl.results.arms).
    arms = arms_summary(
        config,
        evals,
        training,
        boot,
        lambda a, b: differences.get(f"{a}-{b}") or paired_differences(evals[a], evals[b], target, boot),
    )
    any_eval = next(iter(evals.values()))
    from semrl.data.splits import load_splits

    splits = load_splits(run_dir)
    scale = {
        "model": config.model.name,
        "lora": config.model.lora.enabled,
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "test_examples_evaluated": any_eval["task"]["n"],
        "benchmark_items": {name: r["n"] for name, r in any_eval["general"].items()},
        "steps": {s: (t.get("metrics") or {}).get("global_step") for s, t in training.items()},
        # The enabled GRPO-kind stages: the report names the reward only when one trains with it.
        "grpo_stages": [s.name for s in stage_order(config.stages) if s.kind == "grpo"],
        # Enabled stages that score with their own rewards (control arms), when there are any.
        **_stage_rewards(config),
        "encoder": config.rewards.encoder.name or config.rewards.encoder.backend,
        # Where and in which dtype the stages trained (their manifests), and the evaluation's dtype.
        "hardware": next((t["extra"]["hardware"] for t in training.values() if "hardware" in (t["extra"] or {})), None),
        "compiled_layers": [s for s, t in training.items() if (t["extra"] or {}).get("compiled_layers")],
        "eval_dtype": ev.dtype,
    }
    from semrl.core.provenance import package_versions
    from semrl.eval.judge import judge_summary, load_judge

    judged = load_judge(run_dir)
    return {
        "schema_version": SCHEMA_VERSION,
        "methods": methods,
        "intervals": {"task": iv_task, "differences": differences, "tax": iv_tax, "confidence": ev.confidence},
        "comparison": comparison,
        **({"arms": arms} if arms is not None else {}),
        "signatures": {k: any_eval["task"].get(f"{k}_signature") for k in CORPUS_METRICS},
        **({"judge": judge_summary(judged, evals)} if judged is not None else {}),
        **({"extra_tasks": extra} if (extra := extra_task_metrics(config, layout, evals, boot)) else {}),
        "scale": scale,
        "training": training,
        "monitors": summarize_monitors(read_log(layout.stage(TREATMENT).log)),
        "config": config.to_dict(),
        "versions": package_versions(),
    }


MEASURE_NAMES = {
    "continuous": "mean per-item continuous tax over the benchmarks",
    "accuracy": "mean accuracy-style tax over the benchmarks",
    "drift": "NLL increase on general text",
    "task_kl": "forward KL from the base model on the task distribution",
}


def _primary_part(metrics: dict[str, Any], conf: int) -> str:
    """The headline: GRPO's tax minus SFT's on the primary measure, and its reading."""
    comparison = metrics.get("comparison") or {}
    primary = comparison.get("primary", "continuous")
    d = (comparison.get("measures") or {}).get(primary)
    if d is None:
        return (
            f"The primary tax measure ({MEASURE_NAMES.get(primary, primary)}) is not available for both GRPO and SFT. "
        )
    reading = {"lower": "GRPO lower", "higher": "SFT lower", "not separated": "not separated"}[d["reading"]]
    return (
        f"Primary tax measure ({MEASURE_NAMES.get(primary, primary)}), GRPO minus SFT: {d['estimate']:+.4f} "
        f"[{d['low']:+.4f}, {d['high']:+.4f}] ({conf}% paired interval): {reading}. "
    )


def verdict(metrics: dict[str, Any]) -> str:
    """The honest reading of a run: the primary tax measure first (GRPO lower, SFT lower or not
    separated), then the accuracy-style tax, drift and whether GRPO learned above chance. A run
    without both taxes reads what it has instead (`_reading_without_comparison`). A run with
    control arms ends with which comparison carries the tax difference (`arms_reading`)."""
    conf = int(metrics["intervals"]["confidence"] * 100)
    return _paper_verdict(metrics, conf) + arms_reading(metrics, conf)


def _paper_verdict(metrics: dict[str, Any], conf: int) -> str:
    """The paper's comparison: GRPO's tax against SFT's, and whether GRPO learned."""
    m = metrics["methods"]
    if (
        TREATMENT not in m
        or BASELINE not in m
        or "mean" not in m[TREATMENT].get("tax", {})
        or "mean" not in m[BASELINE].get("tax", {})
    ):
        return _reading_without_comparison(metrics, conf)
    g, s = m[TREATMENT]["tax"]["mean"], m[BASELINE]["tax"]["mean"]
    gi, si = metrics["intervals"]["tax"][TREATMENT]["mean"], metrics["intervals"]["tax"][BASELINE]["mean"]
    overlap = not (gi["high"] < si["low"] or si["high"] < gi["low"])
    tax_part = (
        f"mean accuracy-style tax: GRPO {g:+.3f} [{gi['low']:+.3f}, {gi['high']:+.3f}] vs SFT {s:+.3f} "
        f"[{si['low']:+.3f}, {si['high']:+.3f}] ({conf}% intervals); "
        + ("GRPO's tax was lower" if g < s else "GRPO's tax was not lower")
        + (
            ", but the intervals overlap, so this run does not separate them."
            if overlap
            else ", and the intervals do not overlap."
        )
    )
    formats = sorted(
        {
            name
            for method in (TREATMENT, BASELINE)
            for name, ev in m[method].get("tax_evidence", {}).items()
            if ev.get("format_change")
        }
    )
    if formats:
        tax_part += (
            f" On {', '.join(formats)} the accuracy drop comes with a rise in empty predictions while the "
            "gold answer's likelihood holds: a change of output format, not forgetting."
        )
    empties = sorted(
        {
            name
            for method in (TREATMENT, BASELINE)
            for name, ev in m[method].get("tax_evidence", {}).items()
            if ev.get("empty_rise") and not ev.get("format_change")
        }
    )
    if empties:
        tax_part += (
            f" On {', '.join(empties)} most answers became empty after fine-tuning, so their accuracy measures the "
            "output format as much as the skill; the gold answer's likelihood fell as well (see the continuous tax), "
            "so the loss is not format alone."
        )
    dg, ds = m[TREATMENT].get("drift"), m[BASELINE].get("drift")
    drift_part = ""
    if dg and ds:
        drift_part = (
            f" NLL drift on general text: GRPO mean {dg['nll_mean']:+.3f} (P90 {dg['nll_p90']:+.3f}) vs SFT "
            f"{ds['nll_mean']:+.3f} (P90 {ds['nll_p90']:+.3f}): "
        )
        d = ((metrics.get("comparison") or {}).get("measures") or {}).get("drift")
        if d is not None:  # the paired interval decides; the means alone would call noise a difference
            reading = "lower for GRPO" if d["high"] < 0 else "higher for GRPO" if d["low"] > 0 else "not separated"
            drift_part += f"{reading} (paired difference {d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}])."
        else:
            drift_part += "lower for GRPO." if dg["nll_mean"] < ds["nll_mean"] else "not lower for GRPO."
    return _primary_part(metrics, conf) + "At this scale, " + tax_part + drift_part + _learning_part(metrics, conf)


def _reading_without_comparison(metrics: dict[str, Any], conf: int) -> str:
    """The verdict of a run that cannot compare GRPO's tax with SFT's (a cold-start pilot, a run
    without benchmarks): what each trained method's test outputs show, why no tax comparison is
    made, and GRPO against its cold start when GRPO ran."""
    m = metrics["methods"]
    trained = [name for name in m if name != BASE_METHOD]
    parts = [] if trained else ["Only the base model was evaluated, so this run measures no training."]
    parts += [_method_reading(metrics, name, conf) for name in trained or list(m)]
    if len(trained) <= 1:
        parts.append(
            "No tax comparison is possible without a second trained method: the verdict compares GRPO's tax "
            "with SFT's, each measured against the base model."
        )
    elif TREATMENT in m and BASELINE in m and BASE_METHOD not in m:
        parts.append("The base model was not evaluated, so no tax comparison is made (add base to evaluation.methods).")
    elif TREATMENT in m and BASELINE in m:
        parts.append(
            "No general benchmark was scored for both GRPO and SFT against the base model "
            "(evaluation.benchmarks), so no tax comparison is made."
        )
    else:
        parts.append("GRPO and SFT were not both evaluated against the base model, so no tax comparison is made.")
    learning = _learning_part(metrics, conf) if TREATMENT in m else ""
    return " ".join(p for p in parts if p) + learning


def _method_reading(metrics: dict[str, Any], name: str, conf: int) -> str:
    """One method's test outputs in sentences: chrF against its chance floor (is it above chance?),
    the share of distinct outputs, and, for a trained method, chrF and the mean tax against the
    base model. Empty when the metrics hold none of these."""
    entry = metrics["methods"][name]
    task = entry.get("task") or {}
    out = []
    c = (entry.get("chance") or {}).get("chrf")
    if c is not None:
        margin = c["margin"]
        shown = (
            f"chrF {c['value']:.2f} against {c['floor']:.2f} for the same outputs scored against shuffled "
            f"references, a margin of {margin['estimate']:+.2f} [{margin['low']:+.2f}, {margin['high']:+.2f}] "
            f"({conf}% paired interval)"
        )
        if c["above_chance"]:
            out.append(f"{name}'s test outputs are above chance: {shown}.")
        else:
            out.append(
                f"{name}'s test outputs are not above chance: {shown}, which reaches zero: they are no closer to "
                "their own references than to unrelated ones."
            )
    elif task.get("n") is not None and task["n"] < 2:
        out.append(f"{name} was evaluated on {task['n']} test example(s): a chance floor needs two or more.")
    rate, n = entry.get("distinct_output_rate"), task.get("n")
    if rate is not None and n:
        sources = entry.get("distinct_sources") or n  # a record without its sources: counted per output
        distinct = round(rate * sources)
        if distinct == 1 and n > 1:
            out.append(f"All {n} of {name}'s test outputs are the same text.")
        else:
            few = rate < 0.5
            if sources < n:  # a source on several rows (several references) has one greedy output
                only = "only " if few else ""
                counted = f"{name} gave {only}{distinct} distinct outputs for the test's {sources} distinct sources ({n} rows)"
            else:
                counted = f"{'Only ' if few else ''}{distinct} of {name}'s {n} test outputs are distinct"
            out.append(counted + (": it answers most sources alike." if few else "."))
    repetitive = entry.get("repetitive_output_rate")
    if repetitive is not None and n and repetitive >= REPETITIVE_NOTE_RATE:
        out.append(
            f"{round(repetitive * n)} of {name}'s {n} test outputs repeat themselves (over "
            f"{REPETITION_THRESHOLD:.0%} of their {GUARD_NGRAM}-grams repeated): read its samples before its scores."
        )
    if name != BASE_METHOD:
        d = metrics["intervals"].get("differences", {}).get(f"{name}-{BASE_METHOD}", {}).get("chrf")
        if d is not None:
            out.append(
                f"Against the base model, {name}'s chrF moved {d['estimate']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] "
                f"({conf}% paired interval)."
            )
        tax = metrics["intervals"].get("tax", {}).get(name, {}).get("mean")
        if tax is not None:
            out.append(
                f"{name}'s mean accuracy-style tax against the base model is {tax['estimate']:+.3f} "
                f"[{tax['low']:+.3f}, {tax['high']:+.3f}] ({conf}% interval)."
            )
    return " ".join(out)


def _learning_part(metrics: dict[str, Any], conf: int) -> str:
    """Did GRPO learn the task beyond its cold-start starting point? (semantic similarity on test)"""
    chance = metrics["methods"].get(TREATMENT, {}).get("chance", {}).get("semantic")
    if chance is not None and not chance["above_chance"]:
        return (
            f" GRPO's test outputs are not above chance: semantic similarity {chance['value']:.3f} against "
            f"{chance['floor']:.3f} for the same outputs with shuffled references (margin {chance['margin']['estimate']:+.3f} "
            f"[{chance['margin']['low']:+.3f}, {chance['margin']['high']:+.3f}]), so no claim that GRPO learned is made."
        )
    diffs = metrics["intervals"].get("differences", {}).get(f"{TREATMENT}-{COLD_START}", {})
    # The reward's own encoder grades "semantic": a rise there alone may be GRPO fitting its
    # reward, so a gain is claimed only when every independent measure agrees.
    measures = [(label, diffs[key]) for key, label in LEARNING_MEASURES if diffs.get(key)]
    if not measures:
        return ""
    shown = "; ".join(f"{label} {d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" for label, d in measures)
    up = [label for label, d in measures if d["low"] > 0]
    down = [label for label, d in measures if d["high"] < 0]
    if len(up) == len(measures):
        outcome = "GRPO learned beyond its cold-start model (every interval lies above zero)."
    elif up and down:
        outcome = f"{' and '.join(up)} rose while {' and '.join(down)} fell: GRPO moved towards what its reward measures, not towards better outputs."
    elif up:
        outcome = (
            f"only {' and '.join(up)} rose, the other intervals include zero: this run does not show that GRPO "
            "learned beyond its cold-start model."
        )
    elif down:
        outcome = f"GRPO ended below its cold-start model on {' and '.join(down)} (the intervals lie below zero)."
    else:
        outcome = (
            "every interval includes zero, so this run does not show that GRPO learned beyond its cold-start model."
        )
    return f" Test outputs, GRPO minus cold-start ({conf}% paired intervals): {shown}: " + outcome
