"""The tax evidence on hand-built evaluation records: flips and McNemar, empty predictions and
format changes, continuous tax, chance margins and the GRPO - SFT reading."""

from __future__ import annotations

import pytest

from semrl.eval.stats import paired_flips
from semrl.results.evidence import benchmark_evidence, chance_margins, tax_difference

BOOT = {"n_resamples": 400, "confidence": 0.95, "seed": 0}


def _bench(per, continuous=None, predictions=None, em=None):
    details = {}
    if continuous is not None:
        details.update(per_example_continuous=continuous, continuous_measure="gold log-likelihood per character")
    if predictions is not None:
        details["predictions"] = predictions
    if em is not None:
        details["per_example_em"] = em
    return {"metric": "score", "score": sum(per) / len(per), "per_example": per, "n": len(per), "details": details}


def test_paired_flips_and_mcnemar_exact() -> None:
    f = paired_flips([1] * 10 + [0] * 10, [0] * 10 + [0] * 10)
    assert (f.n, f.lost, f.gained) == (20, 10, 0) and f.p_value == pytest.approx(2 * 0.5**10)
    assert paired_flips([1, 0, 1], [1, 0, 1]).p_value == 1.0  # no discordant items


def test_empty_answers_with_a_steady_gold_likelihood_are_a_format_change() -> None:
    n = 40
    base = _bench([0.6] * n, continuous=[-1.0] * n, predictions=["答案"] * n, em=[1.0] * 24 + [0.0] * 16)
    # The method answers nothing (score 0) but the gold answer is as likely as before.
    method = _bench(
        [0.0] * n, continuous=[-1.0 + 0.01 * (i % 3 - 1) for i in range(n)], predictions=[""] * n, em=[0.0] * n
    )
    ev = benchmark_evidence(base, method, "cmrc2018", BOOT)
    assert ev["accuracy_tax"]["low"] > 0 and ev["empty_share"] == {"base": 0.0, "method": 1.0}
    assert ev["flips"]["lost"] == 24 and ev["flips"]["gained"] == 0 and ev["flips"]["p_value"] < 1e-6
    assert ev["continuous_tax"]["low"] <= 0 <= ev["continuous_tax"]["high"] and ev["format_change"] is True
    # The same drop with the gold answer much less likely is forgetting, not format.
    forgot = _bench([0.0] * n, continuous=[-2.0] * n, predictions=[""] * n, em=[0.0] * n)
    lost = benchmark_evidence(base, forgot, "cmrc2018", BOOT)
    assert lost["format_change"] is False and lost["empty_rise"] is True and lost["continuous_tax"]["low"] > 0


def test_chance_margins_flag_outputs_at_chance() -> None:
    refs = [f"参考句子{i}号，内容不同。" for i in range(12)]
    order = [(i + 1) % 12 for i in range(12)]
    record = {
        "task": {
            "bleu": 1.0,
            "chrf": 5.0,
            "semantic": 0.86,
            "chance": {"bleu": 1.0, "chrf": 5.0, "semantic": 0.86, "reference_order": order},
        },
        "per_example": {"semantic": [0.86] * 12, "semantic_floor": [0.86] * 12},
        "outputs": [{"output": "无关的句子。", "reference": r} for r in refs],
    }
    margins = chance_margins(record, "zh", BOOT)
    assert margins["semantic"]["above_chance"] is False and margins["semantic"]["margin"]["estimate"] == 0.0
    assert {"bleu", "chrf", "semantic"} <= set(margins)
    # Outputs equal to their references are far above their shuffled floor.
    record["outputs"] = [{"output": r, "reference": r} for r in refs]
    assert chance_margins(record, "zh", BOOT)["chrf"]["above_chance"] is True


def test_tax_difference_reads_the_paired_interval() -> None:
    def evals(g, s):
        return {
            "grpo": {"general": {"mmlu": _bench([0.5] * 30, continuous=g)}},
            "sft": {"general": {"mmlu": _bench([0.5] * 30, continuous=s)}},
        }

    lower = tax_difference(evals([0.5] * 30, [0.3] * 30), "grpo", "sft", "continuous", BOOT)
    assert lower["reading"] == "lower" and lower["estimate"] == pytest.approx(-0.2)
    same = tax_difference(evals([0.5, 0.3] * 15, [0.3, 0.5] * 15), "grpo", "sft", "continuous", BOOT)
    assert same["reading"] == "not separated"
    assert tax_difference(evals([0.5] * 30, [0.3] * 30), "grpo", "sft", "task_kl", BOOT) is None
