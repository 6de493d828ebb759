"""benchmarks/step_time.py holds each step against the roofline of its own tokens: the first steps
of a `group_by_length` epoch are its longest batches, and against the mean batch's roofline they
read as further from the machine's limit than they are."""

from __future__ import annotations

import statistics

import pytest
from test_bench_scripts import load_benchmark

ADAPTERS = 15_000_000
SHAPE = {
    "N": 100_000_000,
    "V": 262_144,
    "d": 640,
    "intermediate": 2048,
    "adapters": ADAPTERS,
    "weight_gradients": ADAPTERS,
}
GFLOPS, BANDWIDTH = 400.0, 30.0


@pytest.fixture(scope="module")
def step_time():
    return load_benchmark("step_time")


def _rooflines(step_time, rows, kind):
    return step_time.step_rooflines(
        rows, kind, SHAPE, GFLOPS, BANDWIDTH, 2, labelled_share=0.2, grpo_batch=16, grpo_group=4, beta=0.0
    )


def test_each_sft_step_is_held_against_the_roofline_of_its_own_tokens(step_time) -> None:
    # TRL logs cumulative tokens; this epoch starts with its longest batches.
    rows = [{"num_tokens": n} for n in (3000, 5400, 6600, 7800, 9000)]
    tokens = step_time.step_tokens(rows)
    assert tokens == [3000, 2400, 1200, 1200, 1200]
    roofs = _rooflines(step_time, rows, "sft")
    labelled = 0.2 * 2400
    layers = 4 * SHAPE["N"] + 6 * ADAPTERS  # LoRA: forward, input gradient and weight gradient
    assert roofs[1] == pytest.approx((layers * 2400 + 4 * SHAPE["V"] * SHAPE["d"] * labelled) / (GFLOPS * 1e9))
    assert roofs[1] == pytest.approx(2 * roofs[2])

    times = [2.5 * r for r in roofs]  # every step 2.5x its own roofline
    summary = step_time.against_rooflines(times, roofs, tokens)
    assert summary["median_step_vs_own_roofline"] == 2.5
    assert summary["steps_vs_their_rooflines"] == 2.5
    # The old reading held a long batch against the mean batch's roofline: 2.5 x 2400/1800 tokens.
    mean_tokens = statistics.fmean(tokens)
    mean_roof = step_time.sft_roofline(SHAPE, mean_tokens, 0.2 * mean_tokens, GFLOPS)
    assert times[1] / mean_roof == pytest.approx(2.5 * 2400 / mean_tokens)


def test_a_grpo_step_takes_its_prompt_length_from_its_tokens_and_completions(step_time) -> None:
    rows = [
        {"num_tokens": 16 * (70 + 20), "completions/mean_length": 20.0},
        {"num_tokens": 16 * (70 + 20) + 16 * (90 + 30), "completions/mean_length": 30.0},
    ]
    roofs = _rooflines(step_time, rows, "grpo")
    expected = step_time.grpo_roofline(SHAPE, 4, 4, 90.0, 30.0, GFLOPS, BANDWIDTH, 2, 0.0)["step_s"]
    assert roofs[1] == pytest.approx(expected)
    assert roofs[1] > roofs[0]


def test_a_single_step_gives_no_ratio(step_time) -> None:
    assert step_time.against_rooflines([3.0], [1.0], [100.0]) == {}


def test_the_roofline_counts_the_adapters_flops(step_time) -> None:
    """At r=64 LoRA is 15% of Gemma 3 270M's layer parameters: leaving its FLOPs out made every step
    look ~1.2x further from the machine's limit than it was."""
    from semrl.config.experiment import ExperimentConfig

    config = ExperimentConfig.model_validate({"model": {"name": "gemma-3-270m", "lora": {"r": 64}}})
    shape = step_time.model_shape(config)
    assert shape["adapters"] == 15_187_968  # 18 layers x 64 x (q, k, v, o, gate, up, down: in + out)
    frozen = {**shape, "adapters": 0, "weight_gradients": 0}
    extra = step_time.sft_roofline(shape, 1000, 0, GFLOPS) - step_time.sft_roofline(frozen, 1000, 0, GFLOPS)
    assert extra == pytest.approx(6 * shape["adapters"] * 1000 / (GFLOPS * 1e9))
    full = step_time.model_shape(
        ExperimentConfig.model_validate({"model": {"name": "gemma-3-270m", "lora": {"enabled": False}}})
    )
    assert full["adapters"] == 0 and full["weight_gradients"] == full["N"]
