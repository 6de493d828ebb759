"""The evidence behind the verdict: chance floors of the task metrics, and the alignment-tax
measures that can see a small tax.

- Chance floors: each task metric of a method beside the same outputs scored against shuffled
  references (`eval.task.task_metrics`); the margin gets a paired interval, and a method whose
  margin interval reaches zero is "not above chance".
- Per benchmark and method: the accuracy-style tax (base - method), the per-item continuous tax
  (MMLU: probability of the gold choice; CMRC 2018 and GSM8K: per-character log-likelihood of the
  gold answer; `eval.tax.likelihood`), paired flips with McNemar's exact test (arXiv 2510.17776),
  and the share of empty predictions. A rise of empty predictions is always named (`empty_rise`:
  the accuracy then measures the output format as much as the skill); a drop in accuracy that
  comes with it while the continuous score holds is labelled a format change, not forgetting
  ("pseudo-forgetting", arXiv 2411.11932).
- Per method: the forward KL from the base model on the task's own distribution (RL's Razor,
  arXiv 2509.04259), drift on general text, and the share of distinct test outputs (a model that
  answers every source with the same text can still clear a chance floor on a few examples).
- The primary tax measure (`evaluation.primary_tax`) decides "GRPO lower", "SFT lower" or
  "not separated" from the paired interval of GRPO's tax minus SFT's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from semrl.eval.stats import (
    bootstrap_ci,
    mean_of_paired_means_ci,
    paired_bootstrap,
    paired_corpus_bootstrap,
    paired_flips,
)
from semrl.rewards.guards import is_repetitive

# Benchmarks whose score comes from generated text (their predictions can be empty).
GENERATIVE_BENCHMARKS = ("cmrc2018", "gsm8k")
# A format change: empty predictions rise by at least this share of items.
EMPTY_RISE_MIN = 0.25
PRIMARY_TAX_MEASURES = ("continuous", "accuracy", "drift", "task_kl")


def _iv(interval: Any) -> dict[str, float]:
    return {"estimate": float(interval.estimate), "low": float(interval.low), "high": float(interval.high)}


def chance_margins(record: dict[str, Any], target_lang: str, boot: dict[str, Any]) -> dict[str, Any]:
    """Per task metric: its chance floor, the margin over it with a paired interval, and whether
    the method is above chance (the margin's interval lies above zero). Empty when the record has
    no floor (fewer than two test examples)."""
    chance = record["task"].get("chance")
    if not chance:
        return {}
    per = record["per_example"]
    out: dict[str, Any] = {}
    for key in ("semantic", "semantic_2"):
        if per.get(key) and per.get(f"{key}_floor"):
            margin = _iv(paired_bootstrap(per[key], per[f"{key}_floor"], **boot))
            out[key] = {"value": record["task"][key], "floor": chance[key], "margin": margin}
    hyps = [o["output"] for o in record["outputs"]]
    refs = [o["reference"] for o in record["outputs"]]
    shuffled = [refs[j] for j in chance["reference_order"]]
    for key in ("bleu", "chrf"):
        margin = _iv(paired_corpus_bootstrap(key, hyps, hyps, refs, target_lang, refs_b=shuffled, **boot))
        out[key] = {"value": record["task"][key], "floor": chance[key], "margin": margin}
    for entry in out.values():
        entry["above_chance"] = entry["margin"]["low"] > 0
    return out


def distinct_output_rate(outputs: list[str], sources: list[str] | None = None) -> float | None:
    """Distinct output texts per distinct source: each distinct source's output (its first row's),
    and the share of distinct texts among them (1.0: no two different sources answered alike).

    A source that occurs on several rows, as when a corpus aligns one sentence with several
    translations (MITRA does: the study's 220 test rows hold 186 distinct Tibetan sources), gets
    the same greedy output on each, which is no collapse; counted per row, such a test set could
    not reach 1.0. Without `sources`: the share of distinct texts among the outputs. None for none.
    """
    if not outputs:
        return None
    if sources is not None:
        first: dict[str, str] = {}
        for source, output in zip(sources, outputs, strict=True):
            first.setdefault(source, output)
        outputs = list(first.values())
    return len(set(outputs)) / len(outputs)


def output_sources(outputs: list[dict[str, Any]]) -> list[str] | None:
    """The sources of a record's outputs, or None when a record does not keep them."""
    sources = [o.get("source") for o in outputs]
    return sources if all(isinstance(s, str) for s in sources) else None


def repetitive_output_rate(outputs: list[str], lang: str) -> float | None:
    """The share of a method's test outputs that repeat themselves: over 15% of their 4-grams
    repeated, SG-SRL's repetition-guard rule (`rewards.guards.is_repetitive`). The training monitors
    see sampled completions; this sees the greedy outputs, where a gamed reward shows most. None
    for no outputs."""
    return sum(is_repetitive(o, lang) for o in outputs) / len(outputs) if outputs else None


def _correct(result: dict[str, Any]) -> list[float]:
    """Per-item correctness of a benchmark result (CMRC: exact match; others: their own score)."""
    details = result.get("details") or {}
    return list(details.get("per_example_em") or result["per_example"])


def _empty_share(result: dict[str, Any]) -> float | None:
    predictions = (result.get("details") or {}).get("predictions")
    if predictions is None:
        return None
    return float(np.mean([not str(p).strip() for p in predictions])) if predictions else 0.0


def benchmark_evidence(base: dict[str, Any], result: dict[str, Any], name: str, boot: dict[str, Any]) -> dict[str, Any]:
    """The tax measures of one benchmark for one method against the base model's result."""
    b, m = np.asarray(base["per_example"], float), np.asarray(result["per_example"], float)
    out: dict[str, Any] = {"metric": result["metric"], "n": int(m.size)}
    if b.size != m.size:
        out["note"] = "different item subsets: not paired"
        return out
    out["accuracy_tax"] = _iv(paired_bootstrap(b, m, **boot))
    out["flips"] = paired_flips(_correct(base), _correct(result)).as_dict()
    cb = (base.get("details") or {}).get("per_example_continuous")
    cm = (result.get("details") or {}).get("per_example_continuous")
    if cb and cm and len(cb) == len(cm):
        pairs = np.asarray([(x, y) for x, y in zip(cb, cm) if np.isfinite(x) and np.isfinite(y)], float)
        if pairs.size:
            out["continuous_measure"] = (result.get("details") or {}).get("continuous_measure")
            out["continuous"] = {"base": float(pairs[:, 0].mean()), "method": float(pairs[:, 1].mean())}
            out["continuous_tax"] = _iv(paired_bootstrap(pairs[:, 0], pairs[:, 1], **boot))
    if name in GENERATIVE_BENCHMARKS:
        eb, em = _empty_share(base), _empty_share(result)
        if eb is not None and em is not None:
            out["empty_share"] = {"base": eb, "method": em}
            dropped = out["accuracy_tax"]["estimate"] > 0
            holds = "continuous_tax" in out and out["continuous_tax"]["low"] <= 0  # not significantly worse
            out["empty_rise"] = bool(em - eb >= EMPTY_RISE_MIN)
            out["format_change"] = bool(dropped and out["empty_rise"] and holds)
    return out


def _continuous_diffs(evals: dict[str, dict[str, Any]], a: str, b: str) -> list[np.ndarray]:
    """Per benchmark, per item: method b's continuous score minus method a's (= tax(a) - tax(b))."""
    diffs = []
    for name, ra in evals[a]["general"].items():
        rb = evals[b]["general"].get(name)
        ca = (ra.get("details") or {}).get("per_example_continuous")
        cb = (rb or {}).get("details", {}).get("per_example_continuous") if rb else None
        if ca and cb and len(ca) == len(cb):
            d = np.asarray(cb, float) - np.asarray(ca, float)
            d = d[np.isfinite(d)]
            if d.size:
                diffs.append(d)
    return diffs


def _accuracy_diffs(evals: dict[str, dict[str, Any]], a: str, b: str) -> list[np.ndarray]:
    diffs = []
    for name, ra in evals[a]["general"].items():
        rb = evals[b]["general"].get(name)
        if rb and len(ra["per_example"]) == len(rb["per_example"]):
            diffs.append(np.asarray(rb["per_example"], float) - np.asarray(ra["per_example"], float))
    return diffs


def tax_difference(
    evals: dict[str, dict[str, Any]], a: str, b: str, measure: str, boot: dict[str, Any]
) -> dict[str, Any] | None:
    """Method a's tax minus method b's on the named measure, with a paired interval (negative:
    a paid less). None when the measure is missing for either method."""
    if a not in evals or b not in evals:
        return None
    if measure in ("continuous", "accuracy"):
        diffs = (_continuous_diffs if measure == "continuous" else _accuracy_diffs)(evals, a, b)
        if not diffs:
            return None
        iv = mean_of_paired_means_ci(diffs, **boot)
    elif measure == "drift":
        da, db = evals[a].get("drift"), evals[b].get("drift")
        if not da or not db or len(da["nll_increase"]) != len(db["nll_increase"]):
            return None
        iv = paired_bootstrap(da["nll_increase"], db["nll_increase"], **boot)
    elif measure == "task_kl":
        ka, kb = evals[a].get("task_kl"), evals[b].get("task_kl")
        if not ka or not kb or len(ka["per_example"]) != len(kb["per_example"]):
            return None
        iv = paired_bootstrap(ka["per_example"], kb["per_example"], **boot)
    else:
        raise ValueError(f"unknown tax measure {measure!r}; measures are {', '.join(PRIMARY_TAX_MEASURES)}")
    out = {"measure": measure, **_iv(iv)}
    out["reading"] = "lower" if iv.high < 0 else ("higher" if iv.low > 0 else "not separated")
    return out


def method_tax(
    evals: dict[str, dict[str, Any]], method: str, base: str, measure: str, boot: dict[str, Any]
) -> dict[str, float] | None:
    """One method's own tax against the base model on the named measure, with an interval:
    continuous and accuracy are `tax_difference` against the base (per item, base - method, mean
    over benchmarks); drift is the mean NLL increase on general text and task_kl the forward KL,
    both already measured against the base per text or prompt. None when not measured."""
    if method not in evals:
        return None
    if measure in ("continuous", "accuracy"):
        d = tax_difference(evals, method, base, measure, boot)
        return None if d is None else {k: d[k] for k in ("estimate", "low", "high")}
    if measure == "drift":
        rises = (evals[method].get("drift") or {}).get("nll_increase")
        return _iv(bootstrap_ci(rises, **boot)) if rises else None
    if measure == "task_kl":
        kl = task_kl_summary(evals[method], boot)
        return None if kl is None else {k: kl[k] for k in ("estimate", "low", "high")}
    raise ValueError(f"unknown tax measure {measure!r}; measures are {', '.join(PRIMARY_TAX_MEASURES)}")


def task_kl_summary(record: dict[str, Any], boot: dict[str, Any]) -> dict[str, Any] | None:
    """The forward KL from the base model on the task distribution, with an interval."""
    kl = record.get("task_kl")
    if not kl or not kl.get("per_example"):
        return None
    return {"n": len(kl["per_example"]), **_iv(bootstrap_ci(kl["per_example"], **boot))}
