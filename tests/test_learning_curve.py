"""benchmarks/learning_curve.py: each point trains the cold start on exactly N pairs through the
runner, is scored with chance floors and intervals, and is skipped once finished."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from semrl.config.experiment import load_config
from semrl.data.splits import load_splits
from semrl.eval.metrics import corpus_chrf

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "learning_curve.py"


@pytest.fixture(scope="module")
def curve() -> Any:
    spec = importlib.util.spec_from_file_location("learning_curve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def base_config(tmp_path: Path) -> Path:
    from fixture_data import NTREX_LIKE_PAIRS

    rows = [{"doc": d, "bo": bo, "zh": zh} for d, bo, zh, _ in NTREX_LIKE_PAIRS]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    config = {
        "seed": 0,
        "model": {"name": "tiny", "lora": {"enabled": True, "r": 8, "alpha": 16, "dropout": 0.0}},
        "task": {"kind": "translation", "source_lang": "bo", "target_lang": "zh"},
        "data": {
            "sources": [
                {"kind": "local", "path": str(pairs), "columns": {"source": "bo", "reference": "zh", "doc_id": "doc"}}
            ],
            "splits": {"test": 6, "dev": 0, "cold_start": 1000, "rl": 0},
            "training_unit": "example",
        },
        "stages": {
            "enabled": ["cold_start", "sft"],  # the script runs the cold start alone
            "cold_start": {"learning_rate": 1e-3, "epochs": 1, "batch_size": 4, "per_device_batch_size": 4},
        },
        "evaluation": {"generation": {"max_new_tokens": 4, "batch_size": 8}, "bootstrap_samples": 100},
    }
    path = tmp_path / "curve.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def test_point_config_sets_n_and_the_cold_start_alone(curve: Any, base_config: Path, tmp_path: Path) -> None:
    config = curve.point_config(base_config, 12, ["evaluation.test_limit=3"], tmp_path)
    assert config.data.splits.cold_start == 12 and config.stages.enabled == ["cold_start"]
    assert config.evaluation.test_limit == 3 and config.data_dir == str(tmp_path)
    packaged = load_config(curve.DEFAULT_CONFIG)
    assert packaged.name == "canon-curve" and packaged.data.sources[0].kind == "mitra"


def test_intervals_are_of_the_corpus_chrf_and_its_chance(curve: Any, base_config: Path) -> None:
    config = load_config(base_config)
    refs = ["今天天气很好。", "我们明天去拉萨。", "谢谢。", "妈妈煮了茶。"]
    outputs = [{"reference": r, "output": o} for r, o in zip(refs, ["今天天气好。", "我们去拉萨。", "谢谢你。", "茶"])]
    order = [1, 2, 3, 0]
    scored = curve.score(config, outputs, order)
    hyps = [o["output"] for o in outputs]
    assert scored["chrf"]["estimate"] == round(corpus_chrf(hyps, refs, "zh").score, 3)
    assert scored["chance_chrf"]["estimate"] == round(corpus_chrf(hyps, [refs[j] for j in order], "zh").score, 3)
    for key in ("chrf", "chance_chrf"):
        assert scored[key]["low"] <= scored[key]["estimate"] <= scored[key]["high"]
    assert scored["chance_chrf"]["estimate"] < scored["chrf"]["estimate"]


def test_curve_trains_n_pairs_reports_and_resumes(
    curve: Any,
    base_config: Path,
    tmp_path: Path,
    tiny_cache: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, js = tmp_path / "runs", tmp_path / "curve.json"
    assert curve.main(["--config", str(base_config), "--n", "8", "4", "--out-dir", str(out), "--json", str(js)]) == 0
    result = json.loads(js.read_text(encoding="utf-8"))
    assert [p["n"] for p in result["points"]] == [4, 8]
    for p in result["points"]:
        assert p["train_examples"] == p["n"] and p["test_examples"] >= 6 and p["train_steps"] == p["n"] // 4
        assert set(p["chrf"]) == {"estimate", "low", "high"} and "margin" in p["chrf_margin"]
        assert 0 < p["distinct_output_rate"] <= 1 and len(p["samples"]) == 5
        assert set(p["samples"][0]) == {"id", "output"}  # the row's id, not the dataset's text
        assert p["cpu"] and p["dtype"]["eval"] == "float32" and len(p["load_average"]["before"]) == 3
    small, large = load_splits(out / "n4"), load_splits(out / "n8")
    assert {e.id for e in small["cold_start"]} < {e.id for e in large["cold_start"]}
    assert small["test"] == large["test"]
    assert not (out / "n4" / "stages" / "sft").exists()

    # The samples' sources and references come back from the data, not from the JSON.
    from fixture_data import NTREX_LIKE_PAIRS

    assert curve.main(["--show-samples", str(js)]) == 0
    shown = capsys.readouterr().out
    first = result["points"][0]["samples"][0]
    row = next((bo, zh) for _, bo, zh, _ in NTREX_LIKE_PAIRS if f"reference: {zh}\n" in shown and bo in shown)
    assert f"  {first['id']}\n    source:    " in shown and row
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**result, "points": [{"n": 4, "samples": [{"id": "local:nope", "output": ""}]}]}))
    assert curve.main(["--show-samples", str(broken)]) == 2
    assert "local:nope" in capsys.readouterr().err

    monkeypatch.setattr(curve, "run_point", lambda *a, **k: pytest.fail("a finished point was rerun"))
    assert curve.main(["--config", str(base_config), "--n", "4", "8", "--out-dir", str(out), "--json", str(js)]) == 0
    assert json.loads(js.read_text(encoding="utf-8"))["points"] == result["points"]


def test_bad_arguments_exit_2(curve: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert curve.main(["--n", "0"]) == 2
    assert curve.main(["--config", str(tmp_path / "missing.yaml"), "--n", "4", "--json", str(tmp_path / "x.json")]) == 2
    assert "no such config file" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
