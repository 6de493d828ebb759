"""Control arms for GRPO (issue 24): the `rft` stage kind (rejection-sampling fine-tuning) and a
stage's own `rewards:` section (a surface-reward GRPO beside the semantic one), through config
validation, stage hashes, training, resuming, evaluation and the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from semrl.cli import main
from semrl.config.experiment import load_config, parse_config
from semrl.train.rft import clears_threshold
from semrl.train.stages import evaluated_methods, stage_config_hash, stage_rewards, stage_specs

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = str(CONFIGS / "tiny.yaml")
SMALL_SFT = "max_steps: 2, batch_size: 4, per_device_batch_size: 4, learning_rate: 1.0e-3"
SMALL_GRPO = "max_steps: 1, batch_size: 4, per_device_batch_size: 4, num_generations: 2, max_completion_length: 8"
# threshold -1: every prompt's best completion is kept (the tiny model's random outputs rarely clear tau).
RFT = f"{{kind: rft, from: cold_start, splits: [rl], num_generations: 2, max_completion_length: 8, threshold: -1, {SMALL_SFT}}}"
GRPO_CHRF = f"{{kind: grpo, from: cold_start, splits: [rl], {SMALL_GRPO}, rewards: {{preset: bleu_lang}}}}"


def _args(run_dir: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        "run", TINY, "--out", str(run_dir), "--data-dir", str(data_dir),
        "--set", f"stages.rft={RFT}",
        "--set", f"stages.grpo_chrf={GRPO_CHRF}",
        "--set", f"stages.grpo={{{SMALL_GRPO}}}",
        "--set", "stages.enabled=[cold_start, grpo, rft, grpo_chrf]",
        "--set", "evaluation.judge.enabled=false",
        "--set", "evaluation.benchmarks=[{name: mmlu, limit: 2}]",
        "--set", "evaluation.test_limit=3",
        "--set", "evaluation.generation.max_new_tokens=8",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def control_run(tmp_path_factory: pytest.TempPathFactory, fixture_data_dir: Path) -> Path:
    """One tiny run with both control arms, trained, evaluated and reported."""
    run_dir = tmp_path_factory.mktemp("controls") / "run"
    assert main(_args(run_dir, fixture_data_dir)) == 0
    return run_dir


def test_control_arms_train_evaluate_and_report(control_run: Path) -> None:
    stages = control_run / "stages"
    cold = json.loads((stages / "cold_start" / "manifest.json").read_text())
    rft = json.loads((stages / "rft" / "manifest.json").read_text())
    assert rft["parent_id"] == cold["id"] and rft["metrics"]["global_step"] == 2
    summary = rft["extra"]["rft"]
    assert summary["num_generations"] == 2 and summary["threshold"] == -1
    assert summary["prompts_kept"] == summary["prompts"] == rft["extra"]["num_examples"] > 0
    assert isinstance(summary["kept_mean_reward"], float)
    samples = json.loads((stages / "rft" / "rft_samples.json").read_text(encoding="utf-8"))
    assert len(samples["kept"]) == summary["prompts_kept"]
    assert summary["kept_mean_reward"] == pytest.approx(
        sum(r["reward"] for r in samples["kept"]) / len(samples["kept"])
    )

    chrf = json.loads((stages / "grpo_chrf" / "manifest.json").read_text())
    assert list(chrf["extra"]["reward_weights"]) == ["bleu", "language"]  # its own rewards, not the run's
    assert "tau" not in chrf["extra"]  # no semantic reward: no floor calibrated
    grpo = json.loads((stages / "grpo" / "manifest.json").read_text())
    assert "semantic" in grpo["extra"]["reward_weights"] and "tau" in grpo["extra"]

    metrics = json.loads((control_run / "metrics.json").read_text())
    assert list(metrics["methods"]) == ["base", "cold_start", "grpo", "rft", "grpo_chrf"]
    assert {"rft", "grpo_chrf"} <= set(metrics["training"]) and {"rft", "grpo_chrf"} <= set(metrics["intervals"]["tax"])
    assert [c["name"] for c in metrics["scale"]["stage_rewards"]["grpo_chrf"]] == ["bleu", "language"]
    report = (control_run / "report.md").read_text(encoding="utf-8")
    assert "grpo_chrf's own reward: 1.5 bleu + 1 language." in report
    assert f"RFT stage rft kept the best of 2 samples for {summary['prompts_kept']} of" in report
    # Each arm is compared, paired, with the cold start it starts from and with GRPO ...
    diffs = metrics["intervals"]["differences"]
    assert {"rft-cold_start", "grpo-rft", "grpo_chrf-cold_start", "grpo-grpo_chrf"} <= set(diffs)
    assert "chrf" in diffs["rft-cold_start"]
    # ... and the report sets each method's task gain against its tax.
    gain_table = report.split("### Gain per tax", 1)[1].split("\n#", 1)[0]
    assert all(f"| {m} |" in gain_table for m in ("cold_start", "grpo", "rft", "grpo_chrf"))


def test_finished_rft_stage_is_skipped(control_run: Path, fixture_data_dir: Path, capsys) -> None:
    before = json.loads((control_run / "stages" / "rft" / "manifest.json").read_text())
    capsys.readouterr()
    assert main(_args(control_run, fixture_data_dir, "--only", "rft")) == 0
    assert "[rft] already finished: skipped" in capsys.readouterr().out
    assert json.loads((control_run / "stages" / "rft" / "manifest.json").read_text())["id"] == before["id"]


def test_unfinished_rft_stage_reuses_its_sampled_set(
    control_run: Path, fixture_data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A stage killed after sampling trains on the saved set again: it does not sample anew."""
    import semrl.train.rft as rft_module

    stage = control_run / "stages" / "rft"
    before = json.loads((stage / "manifest.json").read_text())
    # As if killed after sampling, before its first checkpoint.
    (stage / "manifest.json").unlink()
    shutil.rmtree(stage / "checkpoints")

    def no_sampling(*args, **kwargs):
        raise AssertionError("the resumed RFT stage sampled again")

    monkeypatch.setattr(rft_module, "sample_rft_set", no_sampling)
    capsys.readouterr()
    assert main(_args(control_run, fixture_data_dir, "--only", "rft")) == 0
    assert "[rft] reusing the sampled set" in capsys.readouterr().out
    after = json.loads((stage / "manifest.json").read_text())
    assert after["id"] != before["id"] and after["extra"]["rft"] == before["extra"]["rft"]
    assert after["extra"]["tau"] == before["extra"]["tau"]  # the floor the set was selected with


def test_rft_keeping_nothing_exits_2_naming_the_threshold(
    control_run: Path, fixture_data_dir: Path, tmp_path: Path, capsys
) -> None:
    """No prompt clears the threshold: a clear error, not an SFT stage on no data."""
    run_dir = tmp_path / "run"
    shutil.copytree(control_run, run_dir, symlinks=True)
    shutil.rmtree(run_dir / "stages" / "rft")
    strict = RFT.replace("threshold: -1", "threshold: 100")
    assert main([*_args(run_dir, fixture_data_dir, "--only", "rft"), "--set", f"stages.rft={strict}"]) == 2
    err = capsys.readouterr().err
    assert "stage 'rft' kept no sample" in err and "stages.rft.threshold (100.0)" in err
    assert not (run_dir / "stages" / "rft" / "manifest.json").exists()


def test_rft_max_prompts_samples_that_many_prompts(control_run: Path, fixture_data_dir: Path, tmp_path: Path) -> None:
    """`max_prompts` (a matched budget with GRPO's prompts) caps the prompts sampled from, a seeded draw."""
    run_dir = tmp_path / "run"
    shutil.copytree(control_run, run_dir, symlinks=True)
    shutil.rmtree(run_dir / "stages" / "rft")
    capped = RFT.replace("threshold: -1", "threshold: -1, max_prompts: 2")
    assert main([*_args(run_dir, fixture_data_dir, "--only", "rft"), "--set", f"stages.rft={capped}"]) == 0
    summary = json.loads((run_dir / "stages" / "rft" / "manifest.json").read_text())["extra"]["rft"]
    full = json.loads((control_run / "stages" / "rft" / "manifest.json").read_text())["extra"]["rft"]
    assert summary["prompts"] == 2 < full["prompts"]
    kept = json.loads((run_dir / "stages" / "rft" / "rft_samples.json").read_text(encoding="utf-8"))["kept"]
    assert len(kept) == 2


def test_default_threshold_is_the_semantic_floor() -> None:
    assert clears_threshold({"total": 1.0, "similarity": 0.6}, None, tau=0.5)
    assert not clears_threshold({"total": 1.0, "similarity": 0.5}, None, tau=0.5)  # language alone does not count
    assert not clears_threshold({"total": 1.0, "similarity": float("nan")}, None, tau=0.5)
    assert clears_threshold({"total": 0.1}, None, tau=None)  # no semantic reward: total > 0
    assert not clears_threshold({"total": 0.0}, None, tau=None)
    assert clears_threshold({"total": 0.4, "similarity": 0.1}, 0.3, tau=0.5)  # an explicit threshold is on the total


def _graph(**declared):
    return parse_config({"stages": {"enabled": ["cold_start", "grpo", *declared], **declared}})


def test_stage_rewards_change_that_stage_hash_only() -> None:
    plain = _graph(arm={"kind": "grpo", "from": "cold_start", "splits": ["rl"]})
    own = _graph(arm={"kind": "grpo", "from": "cold_start", "splits": ["rl"], "rewards": {"preset": "bleu_lang"}})
    assert stage_rewards(own, "arm").preset == "bleu_lang" and stage_rewards(plain, "arm") == plain.rewards
    for stage in ("cold_start", "grpo"):
        assert stage_config_hash(own, stage) == stage_config_hash(plain, stage)
    assert stage_config_hash(own, "arm") != stage_config_hash(plain, "arm")
    # The run's rewards no longer decide the stage that has its own ...
    own_other = parse_config({**own.to_dict(), "rewards": {"preset": "emb"}})
    assert stage_config_hash(own_other, "arm") == stage_config_hash(own, "arm")
    assert stage_config_hash(own_other, "grpo") != stage_config_hash(own, "grpo")
    # ... and a stage without its own keeps its old hash (the key is left out of dumps).
    assert "rewards" not in plain.to_dict()["stages"]["arm"]
    assert parse_config(own.to_dict()).stages.section("arm").rewards.preset == "bleu_lang"  # round trip


def test_rft_stage_hash_follows_its_rewards_and_threshold() -> None:
    rft = {"kind": "rft", "from": "cold_start", "splits": ["rl"]}
    base = _graph(rft=rft)
    assert stage_specs(base.stages)["rft"].kind == "rft" and evaluated_methods(base)[-1] == "rft"
    assert stage_config_hash(_graph(rft={**rft, "threshold": 0.5}), "rft") != stage_config_hash(base, "rft")
    other_rewards = parse_config({**base.to_dict(), "rewards": {"preset": "emb"}})
    assert stage_config_hash(other_rewards, "rft") != stage_config_hash(base, "rft")  # it selects with them


@pytest.mark.parametrize(
    ("rft", "message"),
    [
        ("{kind: rft, splits: [rl]}", "stages.rft.from"),  # no parent
        ("{kind: rft, from: null, splits: [rl]}", "samples its completions from another stage's model"),
        ("{kind: rft, from: cold_start, splits: [rl], threshold: .nan}", "stages.rft.threshold"),
        ("{kind: rft, from: cold_start, splits: [rl], threshold: high}", "stages.rft.threshold"),
        ("{kind: rft, from: cold_start, splits: [rl], num_generations: 0}", "stages.rft.num_generations"),
        ("{kind: rft, from: cold_start, splits: [rl], trl: {max_steps: 3}}", "stages.rft.trl.max_steps"),
        ("{kind: sft, from: cold_start, splits: [rl], rewards: {preset: emb}}", "stages.rft.rewards"),
        ("{kind: grpo, from: cold_start, splits: [rl], rewards: {preset: nope}}", "preset 'nope' is unknown"),
    ],
)
def test_bad_control_arm_configs_exit_2(tmp_path: Path, capsys, rft: str, message: str) -> None:
    run_dir = tmp_path / "run"
    args = [
        "run",
        TINY,
        "--out",
        str(run_dir),
        "--set",
        f"stages.rft={rft}",
        "--set",
        "stages.enabled=[cold_start, rft]",
    ]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not run_dir.exists()


def test_study_controls_config_loads() -> None:
    config = load_config(CONFIGS / "study-controls.yaml")
    study = load_config(CONFIGS / "study.yaml")
    assert evaluated_methods(config) == ["base", "cold_start", "sft", "grpo", "rft", "grpo_chrf", "sft_matched"]
    specs = stage_specs(config.stages)
    assert (specs["rft"].kind, specs["rft"].parent, specs["rft"].splits) == ("rft", "cold_start", ("rl",))
    assert (specs["grpo_chrf"].kind, specs["grpo_chrf"].parent) == ("grpo", "cold_start")
    # The surface arm's reward is the semantic arm's with chrF as its task term: only that differs.
    surface = [(c.name, c.weight) for c in stage_rewards(config, "grpo_chrf").components]
    semantic = [(c.name, c.weight) for c in config.rewards.components]
    assert surface == [("chrf", w) if name == "semantic" else (name, w) for name, w in semantic]
    rft, grpo = config.stages.section("rft"), config.stages.section("grpo")
    assert (rft.num_generations, rft.temperature, rft.top_p, rft.max_completion_length) == (
        grpo.num_generations,
        grpo.temperature,
        grpo.top_p,
        grpo.max_completion_length,
    )
    # The SFT arm at RFT's budget: the same split, recipe and prompt count (steps x batch).
    matched = config.stages.section("sft_matched")
    assert (specs["sft_matched"].kind, specs["sft_matched"].parent, specs["sft_matched"].splits) == (
        "sft",
        "cold_start",
        ("rl",),
    )
    assert matched.max_steps * matched.batch_size == rft.max_prompts
    assert matched.learning_rate == rft.learning_rate
    # The study's stages are the same stages: a finished study run's stages are reused.
    for stage in ("cold_start", "sft", "grpo", "rft"):
        assert stage_config_hash(config, stage) == stage_config_hash(study, stage)


@pytest.mark.parametrize(
    ("encoder", "message"),
    [
        (
            "{backend: sentence-transformers, name: /nonexistent/encoder}",
            "download it once with internet access, or drop stages.arm.rewards.encoder to use rewards.encoder.",
        ),
        ("{backend: trained}", "stages.arm.rewards.encoder: backend 'trained' names the run's own encoder"),
    ],
)
def test_a_stage_rewards_encoder_is_checked_before_training(
    tmp_path: Path, fixture_data_dir: Path, capsys, encoder: str, message: str
) -> None:
    """The preflight checks a stage's own encoder, not only the run's: nothing trains first."""
    run_dir = tmp_path / "run"
    arm = f"{{kind: grpo, from: cold_start, splits: [rl], rewards: {{encoder: {encoder}}}}}"
    args = [
        "run", TINY, "--out", str(run_dir), "--data-dir", str(fixture_data_dir),
        "--set", f"stages.arm={arm}", "--set", "stages.enabled=[cold_start, arm]",
    ]  # fmt: skip
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (run_dir / "stages").exists()
