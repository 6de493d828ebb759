"""The evaluation records of a run, `RUN_DIR/eval/<method>.json`: written by
`semrl.pipeline.evaluate`, read by the judge, the report, sweeps and transfers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from semrl.config.stages import BASE_METHOD
from semrl.core.layout import RunLayout


def benchmark_dict(result: Any) -> dict[str, Any]:
    """A `BenchmarkResult` as stored in an evaluation record."""
    return {
        "metric": result.metric,
        "score": result.score,
        "n": result.n,
        "per_example": list(result.per_example),
        "details": result.details,
    }


def drift_dict(drift: Any) -> dict[str, Any]:
    """A `DriftResult` as stored in an evaluation record."""
    return {
        **drift.summary,
        "nll_increase": list(drift.nll_increase),
        "token_kl": list(drift.token_kl),
    }


def read_evaluation(path: str | Path) -> dict[str, Any] | None:
    """One evaluation record, or None when it is missing or unreadable (then it is redone)."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def load_evaluations(run_dir: str | Path, methods: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """The run's evaluation records by method: those of `methods`, in that order, or (None)
    every record in `RUN_DIR/eval/`, the base model's first."""
    layout = RunLayout(Path(run_dir))
    if methods is None:
        names = sorted(p.stem for p in layout.eval_dir.glob("*.json") if p != layout.judge)
        methods = sorted(names, key=lambda m: m != BASE_METHOD)
    out: dict[str, dict[str, Any]] = {}
    for method in methods:
        record = read_evaluation(layout.eval_file(method))
        if record is not None:
            out[method] = record
    return out
