"""The control arms in the report (issue 24), on runs built from fabricated evaluation records whose
effect is known: SFT pays a clear continuous tax, RFT and both GRPO arms none. Every arm's gain over
the cold start and its tax carry intervals, the verdict names the comparison that carries the tax
difference (RFT vs SFT: on-policy data) and its direction, the matched-budget rule is stated with
each arm's training prompts, the arms plot is drawn, and a run without control arms has none of it."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixture_data import CHINESE_SENTENCES, CharEncoder

from semrl.config.experiment import load_config
from semrl.core.layout import RunLayout
from semrl.data.example import Example
from semrl.data.splits import SPLIT_NAMES
from semrl.eval.task import task_metrics
from semrl.results.arms import arm_roles, gain_per_tax
from semrl.results.build import verdict as build_verdict
from semrl.results.plots import plot_arms
from semrl.results.report import write_report

TINY = Path(str(resources.files("semrl") / "configs" / "tiny.yaml"))
REFERENCES = CHINESE_SENTENCES[:10]
SOURCES = [f"ཚིག་གྲུབ་{i}།" for i in range(len(REFERENCES))]
CHANCE = ["：：：：：："] * len(REFERENCES)
LEARNED = [("的" if i % 3 == 0 else "") + r[:-1] for i, r in enumerate(REFERENCES)]
BETTER = [r[:-1] for r in REFERENCES]
ITEMS = 40  # MMLU items
TEXTS = 12  # general texts (drift) and task prompts (task KL)

# Per method: (continuous tax per item, NLL drift, task KL). SFT's tax is clear; the others' is
# zero-mean noise, so their intervals include zero.
EFFECTS = {
    "cold_start": (0.02, 0.04, 0.05),
    "sft": (0.15, 0.30, 0.60),
    "grpo": (0.0, 0.05, 0.10),
    "rft": (0.0, 0.05, 0.12),
    "grpo_chrf": (0.0, 0.06, 0.11),
    "sft_matched": (0.02, 0.05, 0.12),
}
OUTPUTS = {
    "base": CHANCE,
    "cold_start": LEARNED,
    "sft": BETTER,
    "grpo": BETTER,
    "rft": LEARNED,
    "grpo_chrf": BETTER,
    "sft_matched": LEARNED,
}
SMALL_SFT = "epochs: 1, max_steps: -1, batch_size: 4, per_device_batch_size: 4"
ARMS = [
    "stages.rft={kind: rft, from: cold_start, splits: [rl], num_generations: 2, epochs: 1}",
    "stages.grpo_chrf={kind: grpo, from: cold_start, splits: [rl], max_steps: 9, batch_size: 4, "
    "per_device_batch_size: 4, num_generations: 2, rewards: {preset: bleu_lang}}",
    "stages.sft_matched={kind: sft, from: cold_start, splits: [rl], max_steps: 9, batch_size: 2, "
    "per_device_batch_size: 2}",
]
# GRPO: 9 steps x 2 prompts = 18 prompts, like RFT's 18 sampled; SFT: 27 examples x 1 epoch.
MANIFEST_EXTRA = {
    "cold_start": ({"global_step": 3}, {"num_examples": 9}),
    "sft": ({"global_step": 7}, {"num_examples": 27}),
    "grpo": ({"global_step": 9}, {"num_examples": 18}),
    "grpo_chrf": ({"global_step": 9}, {"num_examples": 18}),
    "sft_matched": ({"global_step": 9}, {"num_examples": 18}),  # 9 steps x 2: RFT's 18 prompts
    "rft": (
        {"global_step": 3},
        {"num_examples": 12, "rft": {"prompts": 18, "num_generations": 2, "prompts_kept": 12, "kept_mean_reward": 0.4}},
    ),
}


def _noise(seed: int, n: int, scale: float) -> np.ndarray:
    """Zero-mean noise (antithetic: the mean is exactly zero)."""
    half = np.random.default_rng(seed).normal(0.0, scale, n // 2)
    return np.concatenate([half, -half])


def _record(method: str) -> dict[str, Any]:
    outputs = OUTPUTS[method]
    summary, per = task_metrics(outputs, REFERENCES, SOURCES, "zh", "translation", CharEncoder(), seed=0)
    base_gold = 0.3 + 0.4 * np.random.default_rng(1).random(ITEMS)
    accuracy = [1.0] * 24 + [0.0] * 16
    record: dict[str, Any] = {
        "task": summary,
        "per_example": per,
        "outputs": [
            {"id": f"t{i}", "source": s, "reference": r, "output": o}
            for i, (s, r, o) in enumerate(zip(SOURCES, REFERENCES, outputs))
        ],
        "general": {},
        "drift": None,
    }
    seed = sum(map(ord, method))
    if method == "base":
        gold = base_gold
    else:
        tax, drift, kl = EFFECTS[method]
        gold = base_gold - tax - _noise(seed, ITEMS, 0.03)
        rises = drift + _noise(seed + 1, TEXTS, 0.02)
        record["drift"] = {
            "nll_mean": float(rises.mean()),
            "nll_p90": float(np.quantile(rises, 0.9)),
            "kl_mean": drift / 2,
            "kl_p90": drift,
            "nll_increase": rises.tolist(),
            "token_kl": [drift / 2] * TEXTS,
        }
        record["task_kl"] = {"per_example": (kl + _noise(seed + 2, TEXTS, 0.02)).tolist(), "mean": kl}
        if tax > 0.1:  # SFT forgets some answers outright
            accuracy = [1.0] * 16 + [0.0] * 24
    record["general"]["mmlu"] = {
        "metric": "acc",
        "score": float(np.mean(accuracy)),
        "n": ITEMS,
        "per_example": accuracy,
        "details": {"per_example_continuous": gold.tolist(), "continuous_measure": "gold probability"},
    }
    return record


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _fabricated_run(run_dir: Path, enabled: list[str], overrides: list[str] = ()) -> RunLayout:
    """A finished run directory without training: config.yaml, splits, a manifest per stage and an
    evaluation record per method (base and every enabled stage)."""
    layout = RunLayout(run_dir)
    run_dir.mkdir(parents=True)
    config = load_config(
        TINY,
        overrides=[
            f"stages.cold_start={{{SMALL_SFT}}}",
            f"stages.sft={{{SMALL_SFT}}}",
            "stages.grpo={max_steps: 9, batch_size: 4, per_device_batch_size: 4, num_generations: 2}",
            *ARMS,
            f"stages.enabled=[{', '.join(enabled)}]",
            "evaluation.benchmarks=[{name: mmlu, limit: 40}]",
            "evaluation.judge.enabled=false",
            *overrides,
        ],
    )
    layout.config.write_text(config.to_yaml(), encoding="utf-8")
    sizes = {"cold_start": 9, "rl": 18, "dev": 3, "test": len(REFERENCES)}
    for name in SPLIT_NAMES:
        pairs = list(zip(SOURCES, REFERENCES)) if name == "test" else [("ཀ།", "甲。")] * sizes[name]
        _write_jsonl(
            layout.split_file(name),
            [Example(f"{name}{i}", s, r, f"{name}-doc{i}").to_dict() for i, (s, r) in enumerate(pairs)],
        )
    layout.eval_dir.mkdir()
    for method in ["base", *enabled]:
        if method != "base":
            metrics, extra = MANIFEST_EXTRA[method]
            manifest = {"wall_time_s": 1.0, "peak_rss_mb": 100.0, "metrics": metrics, "extra": extra}
            layout.stage(method).root.mkdir(parents=True)
            layout.stage(method).manifest.write_text(json.dumps(manifest), encoding="utf-8")
        layout.eval_file(method).write_text(json.dumps(_record(method), ensure_ascii=False), encoding="utf-8")
    write_report(run_dir)
    return layout


@pytest.fixture(scope="module")
def arms_run(tmp_path_factory: pytest.TempPathFactory) -> RunLayout:
    """Every arm: cold start, SFT, semantic GRPO, RFT and a surface-reward GRPO."""
    return _fabricated_run(tmp_path_factory.mktemp("arms") / "run", ["cold_start", "sft", "grpo", "rft", "grpo_chrf"])


def _metrics(layout: RunLayout) -> dict[str, Any]:
    return json.loads(layout.metrics.read_text(encoding="utf-8"))


def _is_interval(iv: Any) -> bool:
    return isinstance(iv, dict) and iv["low"] <= iv["estimate"] <= iv["high"]


def test_arms_are_found_by_kind_and_rewards_not_by_name(tmp_path: Path) -> None:
    config = load_config(
        TINY,
        overrides=[
            "stages.on_policy={kind: rft, from: cold_start, splits: [rl]}",
            "stages.surface={kind: grpo, from: cold_start, splits: [rl], rewards: {preset: bleu_lang}}",
            "stages.recovery={kind: sft, from: grpo, splits: [cold_start]}",  # after GRPO: no SFT arm
            "stages.enabled=[cold_start, sft, grpo, on_policy, surface, recovery]",
        ],
    )
    methods = ["base", "cold_start", "sft", "grpo", "on_policy", "surface", "recovery"]
    reference, roles = arm_roles(config, methods)
    assert reference == "cold_start"
    assert roles == {"semantic_grpo": "grpo", "surface_grpo": "surface", "rft": "on_policy", "sft": "sft"}
    # Without the cold start's evaluation there is nothing to measure gains from.
    assert arm_roles(config, [m for m in methods if m != "cold_start"]) == (None, {})


def test_every_arm_has_intervals_on_its_gain_and_tax(arms_run: RunLayout) -> None:
    arms = _metrics(arms_run)["arms"]
    assert arms["reference"] == "cold_start" and arms["primary"] == "continuous"
    assert arms["roles"] == {"semantic_grpo": "grpo", "surface_grpo": "grpo_chrf", "rft": "rft", "sft": "sft"}
    assert list(arms["methods"]) == ["cold_start", "sft", "grpo", "rft", "grpo_chrf"]
    for name, row in arms["methods"].items():
        assert {"continuous", "accuracy", "drift", "task_kl"} <= set(row["tax"]), name
        assert all(_is_interval(iv) for iv in row["tax"].values()), name
        if name != "cold_start":
            assert _is_interval(row["gain"]["chrf"]) and _is_interval(row["gain"]["semantic"]), name
    sft, rft = arms["methods"]["sft"], arms["methods"]["rft"]
    assert sft["tax"]["continuous"]["low"] > 0.1  # the effect built in
    assert rft["tax"]["continuous"]["low"] < 0 < rft["tax"]["continuous"]["high"]
    # The ratio only over a tax distinguishable from zero.
    assert sft["gain_per_tax"]["value"] == pytest.approx(
        sft["gain"]["chrf"]["estimate"] / sft["tax"]["continuous"]["estimate"]
    )
    assert rft["gain_per_tax"] == {"measure": "continuous", "value": None, "reading": "tax not distinguishable from 0"}
    # The accuracy tax is the one the Alignment tax table shows.
    metrics = _metrics(arms_run)
    assert sft["tax"]["accuracy"] == pytest.approx(metrics["intervals"]["tax"]["sft"]["mean"])

    md = arms_run.report_md.read_text(encoding="utf-8")
    table = md.split("### Gain per tax: each method against cold_start (95% paired intervals)", 1)[1].split("\n#", 1)[0]
    rft_row = next(line for line in table.splitlines() if line.startswith("| rft |"))
    assert "| RFT |" in rft_row and "tax not distinguishable from 0" in rft_row and "[" in rft_row
    sft_row = next(line for line in table.splitlines() if line.startswith("| sft |"))
    assert f"| {sft['gain_per_tax']['value']:.1f} |" in sft_row


def test_the_verdict_names_the_comparison_that_carries_the_effect(arms_run: RunLayout) -> None:
    metrics = _metrics(arms_run)
    comparisons = metrics["arms"]["comparisons"]
    assert list(comparisons) == ["grpo-rft", "rft-sft", "grpo-grpo_chrf"]
    rft_sft = comparisons["rft-sft"]
    assert rft_sft["tax"]["continuous"]["reading"] == "lower" and rft_sft["tax"]["continuous"]["high"] < 0
    assert comparisons["grpo-rft"]["tax"]["continuous"]["reading"] == "not separated"
    assert all(_is_interval(c["gain"]["chrf"]) for c in comparisons.values())

    md = arms_run.report_md.read_text(encoding="utf-8")
    verdict = md.split("## Verdict\n", 1)[1].split("\n## ", 1)[0]
    assert (
        "The tax difference is carried by on-policy vs off-policy data (RFT (rft) vs SFT (sft): rft's tax lower)"
        in verdict
    )
    assert "at unequal or unrecorded training budgets (RFT (rft) vs SFT (sft); see Control arms)" in verdict
    assert (
        "The other comparisons do not separate their arms' taxes: the reward signal, with on-policy data on both "
        "sides (semantic GRPO (grpo) vs RFT (rft)); the reward's kind" in verdict
    )
    d = comparisons["grpo-rft"]["tax"]["continuous"]
    bound = max(abs(d["low"]), abs(d["high"]))
    shown = f"{d['estimate']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}], no difference larger than {bound:.4f}"
    assert (
        f"which isolates the reward signal, with on-policy data on both sides: continuous tax difference {shown}"
        in (build_verdict(metrics))
    )
    assert "Control arms: which comparison carries the effect" in md


def test_the_matched_budget_rule_is_stated(arms_run: RunLayout) -> None:
    arms = _metrics(arms_run)["arms"]
    budgets = {name: row["budget"]["prompts"] for name, row in arms["methods"].items()}
    assert budgets == {"cold_start": 9, "sft": 27, "grpo": 18, "rft": 18, "grpo_chrf": 18}
    assert arms["methods"]["rft"]["budget"]["trained_examples"] == 12
    assert arms["methods"]["grpo"]["budget"]["trained_examples"] == 36  # 9 steps x 4 completions
    matched = {k: c["budget_matched"] for k, c in arms["comparisons"].items()}
    assert matched == {"grpo-rft": True, "rft-sft": False, "grpo-grpo_chrf": True}
    md = arms_run.report_md.read_text(encoding="utf-8")
    assert "#### Matched-budget rule" in md
    assert (
        "- RFT (rft) vs SFT (sft): 18 vs 27 training prompts, not matched (sft drew 1.50x as many as rft): "
        "the tax comparison is not at equal budget." in md
    )
    assert (
        "- semantic GRPO (grpo) vs RFT (rft): 18 vs 18 training prompts, matched within 10%: the tax comparison "
        "is at equal budget." in md
    )
    kl = arms["methods"]["sft"]["tax"]["task_kl"]
    assert f"| sft | SFT | 27 | 27 | examples: 27 x 1 epoch | {kl['estimate']:+.4f} [" in md


def test_an_sft_arm_at_rfts_budget_is_the_one_rft_is_compared_with(tmp_path: Path) -> None:
    """Strong SFT and an SFT arm sized to RFT's prompts: "RFT vs SFT" takes the matched one, and
    the headline GRPO-vs-SFT comparison keeps strong SFT."""
    layout = _fabricated_run(tmp_path / "run", ["cold_start", "sft", "grpo", "rft", "sft_matched"])
    metrics = _metrics(layout)
    arms = metrics["arms"]
    assert arms["roles"]["sft"] == "sft" and arms["methods"]["sft_matched"]["role"] == "sft"
    assert list(arms["comparisons"]) == ["grpo-rft", "rft-sft_matched"]
    assert arms["comparisons"]["rft-sft_matched"]["budget_matched"] is True
    md = layout.report_md.read_text(encoding="utf-8")
    assert "- RFT (rft) vs SFT (sft_matched): 18 vs 18 training prompts, matched within 10%" in md


def test_the_arms_plot_is_drawn_and_embedded(arms_run: RunLayout, tmp_path: Path) -> None:
    assert (arms_run.plots / "arms_gain_vs_tax.png").stat().st_size > 1000
    md = arms_run.report_md.read_text(encoding="utf-8")
    assert "![Control arms: task gain against tax, with intervals](plots/arms_gain_vs_tax.png)" in md
    page = arms_run.report_html.read_text(encoding="utf-8")
    assert 'alt="arms_gain_vs_tax.png"' in page
    # Fewer than two trained arms with a gain and a tax: no file, a reason.
    metrics = _metrics(arms_run)
    metrics["arms"]["methods"] = {k: v for k, v in metrics["arms"]["methods"].items() if k in ("cold_start", "rft")}
    why = plot_arms(metrics, tmp_path / "arms.png")
    assert why is not None and "fewer than two trained methods" in why and not (tmp_path / "arms.png").exists()


def test_a_run_without_control_arms_has_no_arms_section(tmp_path: Path) -> None:
    layout = _fabricated_run(tmp_path / "run", ["cold_start", "sft", "grpo"])
    metrics = _metrics(layout)
    assert metrics["arms"]["comparisons"] == {} and set(metrics["arms"]["roles"]) == {"semantic_grpo", "sft"}
    md = layout.report_md.read_text(encoding="utf-8")
    assert "### Gain per tax" in md  # every trained method's gain and tax, with intervals
    for absent in ("Control arms", "Matched-budget rule", "arms_gain_vs_tax", "carried by"):
        assert absent not in md, absent
    assert not (layout.plots / "arms_gain_vs_tax.png").exists()


def test_only_the_comparisons_whose_arms_ran(tmp_path: Path) -> None:
    """RFT beside GRPO, no SFT and no surface GRPO: one comparison, and a verdict that says no
    comparison separates the taxes."""
    layout = _fabricated_run(tmp_path / "run", ["cold_start", "grpo", "rft"])
    arms = _metrics(layout)["arms"]
    assert list(arms["comparisons"]) == ["grpo-rft"]
    md = layout.report_md.read_text(encoding="utf-8")
    assert "RFT (rft) vs SFT" not in md and "surface-reward GRPO" not in md
    assert "No comparison separates the arms' taxes" in md
    assert (layout.plots / "arms_gain_vs_tax.png").is_file()


def test_gain_per_tax_needs_a_tax_distinguishable_from_zero() -> None:
    gain = {"estimate": 3.0, "low": 1.0, "high": 5.0}
    assert gain_per_tax(gain, {"estimate": 0.02, "low": 0.01, "high": 0.03}) == {
        "value": pytest.approx(150.0),
        "reading": "ratio",
    }
    assert (
        gain_per_tax(gain, {"estimate": 0.02, "low": -0.01, "high": 0.05})["reading"]
        == "tax not distinguishable from 0"
    )
    assert gain_per_tax(gain, {"estimate": -0.02, "low": -0.03, "high": -0.01})["value"] is None
    assert gain_per_tax(None, None)["value"] is None
