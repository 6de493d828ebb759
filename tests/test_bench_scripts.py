"""Benchmark scripts' own logic. benchmarks/demo_stages.py: the per-stage figures it reports come
from the run's manifests, logs and evaluations, and a directory that is no run fails with a message
and exit code 2. (benchmarks/step_time.py: tests/test_step_time_roofline.py.)"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """A script of benchmarks/ imported as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo_stages():
    return load_benchmark("demo_stages")


def _write(path: Path, data: dict | list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, list):
        path.write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
    else:
        path.write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "config.yaml").parent.mkdir(parents=True)
    (run / "config.yaml").write_text("name: tiny\nmodel: {name: tiny}\n", encoding="utf-8")
    _write(
        run / "stages" / "cold_start" / "manifest.json",
        {"wall_time_s": 3.5, "peak_rss_mb": 600.0, "metrics": {"global_step": 3}},
    )
    _write(
        run / "stages" / "cold_start" / "log.jsonl", [{"step": 1, "step_time_s": 0.2}, {"step": 2, "step_time_s": 0.4}]
    )
    _write(
        run / "stages" / "grpo" / "manifest.json",
        {"wall_time_s": 6.5, "peak_rss_mb": 700.0, "metrics": {"global_step": 3}},
    )
    _write(
        run / "stages" / "grpo" / "log.jsonl",
        [
            {"step": 1, "step_time_s": 1.0, "timing/reward_share": 0.5},
            {"step": 2, "step_time_s": 2.0, "timing/reward_share": 0.2},
            {"step": 2, "train_runtime": 3.0},  # the end-of-training row has neither
        ],
    )
    # A stage that was started but never finished (no manifest) is left out.
    _write(run / "stages" / "sft" / "log.jsonl", [{"step": 1, "step_time_s": 9.0}])
    _write(run / "eval" / "base.json", {"wall_time_s": 10.0, "general": {"mmlu": {"details": {"wall_time_s": 4.0}}}})
    _write(run / "eval" / "grpo.json", {"wall_time_s": 12.0, "general": {}})
    return run


def test_figures_come_from_manifests_logs_and_evaluations(demo_stages, run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo_stages.json"
    assert demo_stages.main([str(run_dir), "--out", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert list(result["stages"]) == ["cold_start", "grpo"]
    grpo = result["stages"]["grpo"]
    assert grpo["wall_time_s"] == 6.5 and grpo["peak_rss_mb"] == 700.0 and grpo["steps"] == 3
    assert grpo["reward_share_mean"] == pytest.approx(0.35)
    assert grpo["mean_step_s"] == pytest.approx(1.5)
    assert "reward_share_mean" not in result["stages"]["cold_start"]
    assert result["evaluation"]["base"] == {"wall_time_s": 10.0, "benchmarks_s": {"mmlu": 4.0}}
    assert result["totals"] == {
        "training_s": 10.0,
        "evaluation_s": 22.0,
        "training_and_evaluation_s": 32.0,
        "peak_rss_mb": 700.0,
    }
    assert result["model"] == "tiny"
    printed = capsys.readouterr().out
    assert "grpo" in printed and "0.35" in printed


def test_a_directory_without_finished_stages_is_refused(demo_stages, tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo_stages.json"
    assert demo_stages.main([str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "no finished stage" in capsys.readouterr().err
    assert not out.exists()
