"""`stages.<stage>.trl`: further TRL config fields, passed through verbatim; names checked when the
config loads, values when the trainer config is built."""

from __future__ import annotations

from pathlib import Path

import pytest

from semrl.config.experiment import ExperimentConfig, parse_config
from semrl.core.errors import ConfigError
from semrl.train.common import default_report_to
from semrl.train.grpo import grpo_args
from semrl.train.sft import sft_args


def test_unknown_trl_field_fails_at_load_with_a_suggestion() -> None:
    with pytest.raises(
        ConfigError,
        match=r"stages\.grpo\.trl\.epsilon_hi: not a field of trl\.GRPOConfig "
        r"\(did you mean epsilon_high\?\)",
    ):
        parse_config({"stages": {"grpo": {"trl": {"epsilon_hi": 0.28}}}})
    with pytest.raises(ConfigError, match=r"stages\.cold_start\.trl\.packin: not a field of trl\.SFTConfig"):
        parse_config({"stages": {"cold_start": {"trl": {"packin": True}}}})
    # A GRPO-only field on an SFT stage is not a field of SFTConfig.
    with pytest.raises(ConfigError, match=r"stages\.sft\.trl\.epsilon_high: not a field of trl\.SFTConfig"):
        parse_config({"stages": {"sft": {"trl": {"epsilon_high": 0.28}}}})


@pytest.mark.parametrize(
    ("stage", "key", "semrl_key"),
    [
        ("grpo", "learning_rate", "learning_rate"),
        ("grpo", "num_generations", "num_generations"),
        ("grpo", "max_steps", "max_steps"),
        ("grpo", "output_dir", "output_dir"),
        ("grpo", "reward_weights", "rewards.components"),
        ("cold_start", "num_train_epochs", "epochs"),
        ("sft", "max_length", "max_length"),
    ],
)
def test_a_key_semrl_sets_is_refused(stage: str, key: str, semrl_key: str) -> None:
    with pytest.raises(ConfigError, match=rf"stages\.{stage}\.trl\.{key}: semrl sets .*{semrl_key}"):
        parse_config({"stages": {stage: {"trl": {key: 1}}}})


def test_trl_keys_leave_the_config_hash_alone() -> None:
    default = ExperimentConfig()
    assert "trl" not in default.to_dict()["stages"]["grpo"]
    assert parse_config({"stages": {"grpo": {"trl": {}}}}).hash() == default.hash()
    changed = parse_config({"stages": {"grpo": {"trl": {"epsilon_high": 0.28}}}})
    assert changed.hash() != default.hash()
    assert changed.to_dict()["stages"]["grpo"]["trl"] == {"epsilon_high": 0.28}


def test_trl_fields_reach_the_grpo_config(tmp_path: Path) -> None:
    trl = {"log_completions": False, "epsilon_high": 0.28, "mask_truncated_completions": True, "report_to": "none"}
    config = parse_config({"stages": {"grpo": {"trl": trl}}})
    args = grpo_args("grpo", config, tmp_path, [1.5, 1.0])
    assert (args.log_completions, args.epsilon_high, args.mask_truncated_completions) == (False, 0.28, True)
    assert args.report_to in ("none", ["none"], [])
    # semrl's own values are still there.
    assert (args.learning_rate, args.num_generations, args.epsilon) == (5e-7, 8, 0.2)
    assert list(args.reward_weights) == [1.5, 1.0]


def test_report_to_via_trl_reaches_the_sft_config(tmp_path: Path) -> None:
    default = sft_args("cold_start", ExperimentConfig(), tmp_path)
    assert default.report_to == default_report_to()
    config = parse_config({"stages": {"cold_start": {"trl": {"report_to": ["none"], "save_total_limit": 5}}}})
    args = sft_args("cold_start", config, tmp_path)
    assert args.report_to in ("none", ["none"], [])
    assert args.save_total_limit == 5  # a fixed semrl value a trl key overrides
    assert args.completion_only_loss is True


def test_a_value_trl_refuses_names_the_key(tmp_path: Path) -> None:
    config = parse_config({"stages": {"grpo": {"trl": {"epsilon_high": 0.28, "eval_strategy": "sometimes"}}}})
    with pytest.raises(ConfigError, match=r"stages\.grpo\.trl\.eval_strategy: trl\.GRPOConfig refused") as err:
        grpo_args("grpo", config, tmp_path, [1.5, 1.0])
    assert "epsilon_high" not in str(err.value)
