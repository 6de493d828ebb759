"""The stage graph as config data: declared stages, their order, parents and splits, validation,
and a declared stage (SG-SRL's recovery SFT after GRPO) through training, evaluation and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semrl.cli import main
from semrl.config.experiment import parse_config
from semrl.core.errors import ConfigError
from semrl.train.stages import downstream_of, evaluated_methods, reward_free_stages, stage_order, stage_specs

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECOVERY = {"kind": "sft", "from": "grpo", "splits": ["cold_start"], "epochs": 1, "learning_rate": 1.0e-5}


def _config(**stages):
    return parse_config({"stages": stages})


def test_builtin_graph_is_the_papers() -> None:
    specs = stage_specs(_config().stages)
    assert [(s.name, s.kind, s.parent, s.splits) for s in specs.values()] == [
        ("cold_start", "sft", None, ("cold_start",)),
        ("sft", "sft", None, ("cold_start", "rl")),
        ("grpo", "grpo", "cold_start", ("rl",)),
    ]


def test_declared_stage_runs_after_its_parent_and_is_evaluated() -> None:
    config = _config(enabled=["recovery", "grpo", "cold_start"], recovery=RECOVERY)
    assert [s.name for s in stage_order(config.stages)] == ["cold_start", "grpo", "recovery"]
    assert downstream_of(config.stages, "cold_start") == ["cold_start", "grpo", "recovery"]
    assert evaluated_methods(config) == ["base", "cold_start", "grpo", "recovery"]
    assert reward_free_stages(config.stages) == ["cold_start"]  # recovery follows GRPO: the rewards change it


def test_declared_stage_round_trips_through_yaml_with_from() -> None:
    config = _config(enabled=["cold_start", "grpo", "recovery"], recovery=RECOVERY)
    dumped = config.to_dict()["stages"]
    assert dumped["recovery"]["from"] == "grpo" and "from_" not in dumped["recovery"]
    assert "kind" not in dumped["grpo"]  # built-in graph keys stay out of dumps: old hashes hold
    assert parse_config(config.to_dict()).stages.section("recovery").from_ == "grpo"


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ({"recovery": {**RECOVERY, "from": "grpoo"}}, "recovery.from: no stage 'grpoo'"),
        ({"recovery": {**RECOVERY, "splits": ["test"]}}, r"recovery.splits: \['test'\] cannot be trained on"),
        ({"enabled": ["cold_start", "recover"]}, r"enabled: unknown stage\(s\) \['recover'\]"),
        ({"a": {**RECOVERY, "from": "b"}, "b": {**RECOVERY, "from": "a"}}, "form a cycle"),
        ({"base": RECOVERY}, "'base' cannot name a stage"),
        ({"recovery": {"from": "grpo", "splits": ["rl"]}}, "recovery"),  # no kind
    ],
)
def test_bad_stage_graphs_fail_at_load(stages: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(**stages)


def test_unknown_method_in_evaluation_is_named() -> None:
    with pytest.raises(ConfigError, match=r"evaluation.methods: unknown method\(s\) \['recovery'\]"):
        parse_config({"evaluation": {"methods": ["base", "recovery"]}})


def test_recovery_stage_trains_evaluates_and_reports(tmp_path: Path, fixture_data_dir: Path) -> None:
    run_dir = tmp_path / "run"
    recovery = "{kind: sft, from: grpo, splits: [cold_start], max_steps: 2, batch_size: 4, per_device_batch_size: 4, learning_rate: 1.0e-3}"
    args = [
        "run", str(CONFIGS / "tiny.yaml"), "--out", str(run_dir), "--data-dir", str(fixture_data_dir),
        "--set", f"stages.recovery={recovery}",
        "--set", "stages.enabled=[cold_start, grpo, recovery]",
        "--set", "evaluation.judge.enabled=false",
        "--set", "evaluation.benchmarks=[{name: mmlu, limit: 4}]",
    ]  # fmt: skip
    assert main(args) == 0
    stages = run_dir / "stages"
    grpo = json.loads((stages / "grpo" / "manifest.json").read_text())
    rec = json.loads((stages / "recovery" / "manifest.json").read_text())
    assert rec["parent_id"] == grpo["id"] and rec["init_model"].endswith("grpo/model")
    assert rec["metrics"]["global_step"] == 2 and not (stages / "sft").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert list(metrics["methods"]) == ["base", "cold_start", "grpo", "recovery"]
    assert "recovery" in metrics["training"] and "recovery" in metrics["intervals"]["tax"]
    assert "recovery" in (run_dir / "report.md").read_text(encoding="utf-8")

    # Retraining GRPO retrains what starts from it, and forces its re-evaluation.
    eval_key = json.loads((run_dir / "eval" / "recovery.json").read_text())["eval_key"]
    assert main([*args, "--force", "grpo"]) == 0
    rec2 = json.loads((stages / "recovery" / "manifest.json").read_text())
    assert rec2["id"] != rec["id"] and rec2["parent_id"] != grpo["id"]
    assert json.loads((run_dir / "eval" / "recovery.json").read_text())["eval_key"] != eval_key
