"""Where the time and memory of a finished run went: per training stage its wall time, peak RSS,
steps and mean step time; the share of a GRPO step spent in reward functions; per evaluated method
its wall time (and each general benchmark's).

Reads a run directory as `semrl run` / `semrl demo` leave it: ``stages/<stage>/manifest.json``
(`wall_time_s`, `peak_rss_mb`, `metrics.global_step`), ``stages/<stage>/log.jsonl`` (`step_time_s`,
`timing/reward_share`) and, if the run was evaluated, ``eval/<method>.json`` (`wall_time_s`, and
`general.<benchmark>.details.wall_time_s`). A stage's wall time holds its model load, tau
calibration (GRPO) and final save as well as its steps. Peak RSS is the process's high-water mark when the stage
ended: `semrl run` trains every stage in one process, so a later stage's figure includes the
earlier stages' peak.

    SEMRL_DATA_DIR=../shared/data semrl demo --quick --out /tmp/demo
    python benchmarks/demo_stages.py /tmp/demo [--out benchmarks/results/demo_stages.json]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from semrl.core.errors import DataError, SemrlError
from semrl.core.io import read_manifest, write_json
from semrl.core.layout import RunLayout
from semrl.eval.records import load_evaluations
from semrl.train.callbacks import read_log


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None


def stage_figures(paths: RunLayout, stage: str) -> dict[str, Any] | None:
    """A finished stage's wall time, peak RSS, steps, mean step time and (GRPO) mean reward share;
    None when the stage has no manifest (not run, or not finished)."""
    manifest = read_manifest(paths.stage(stage).manifest)
    if manifest is None:
        return None
    rows = read_log(paths.stage(stage).log)
    figures = {
        "wall_time_s": manifest.get("wall_time_s"),
        "peak_rss_mb": manifest.get("peak_rss_mb"),
        "steps": (manifest.get("metrics") or {}).get("global_step"),
        "mean_step_s": _mean([r["step_time_s"] for r in rows if isinstance(r.get("step_time_s"), (int, float))]),
    }
    shares = [r["timing/reward_share"] for r in rows if isinstance(r.get("timing/reward_share"), (int, float))]
    if shares:
        figures["reward_share_mean"] = _mean(shares)
    return figures


def eval_figures(evaluation: dict[str, Any]) -> dict[str, Any]:
    """A method's evaluation wall time and each general benchmark's."""
    general = evaluation.get("general") or {}
    return {
        "wall_time_s": evaluation.get("wall_time_s"),
        "benchmarks_s": {name: (result.get("details") or {}).get("wall_time_s") for name, result in general.items()},
    }


def summarise(run_dir: Path) -> dict[str, Any]:
    """The figures of the run in `run_dir` (see the module docstring)."""
    paths = RunLayout(Path(run_dir))
    stages_dir = paths.root / "stages"
    names = sorted(p.name for p in paths.stages.iterdir() if p.is_dir()) if paths.stages.is_dir() else []
    names += (
        sorted(p.name for p in stages_dir.glob("*") if p.is_dir() and p.name not in names)
        if stages_dir.is_dir()
        else []
    )
    stages = {name: fig for name in names if (fig := stage_figures(paths, name)) is not None}
    if not stages:
        raise DataError(
            f"{paths.root}: no finished stage (no stages/<stage>/manifest.json). Give the directory of a run that "
            "trained at least one stage, e.g. the --out of `semrl demo --quick`."
        )
    evaluations = {method: eval_figures(ev) for method, ev in load_evaluations(paths.root).items()}
    config = yaml.safe_load(paths.config.read_text(encoding="utf-8")) if paths.config.is_file() else {}
    training_s = sum(s["wall_time_s"] or 0.0 for s in stages.values())
    evaluation_s = sum(e["wall_time_s"] or 0.0 for e in evaluations.values())
    return {
        "run_dir": str(paths.root),
        "config_name": config.get("name"),
        "model": (config.get("model") or {}).get("name"),
        "stages": stages,
        "evaluation": evaluations,
        "totals": {
            "training_s": round(training_s, 2),
            "evaluation_s": round(evaluation_s, 2),
            "training_and_evaluation_s": round(training_s + evaluation_s, 2),
            "peak_rss_mb": max((s["peak_rss_mb"] or 0.0) for s in stages.values()),
        },
    }


def fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def print_table(summary: dict[str, Any]) -> None:
    print(f"run {summary['run_dir']} ({summary['config_name']}, model {summary['model']})")
    print(f"{'stage':<12} {'wall s':>8} {'peak RSS MiB':>12} {'steps':>6} {'s/step':>8} {'reward share':>12}")
    for name, s in summary["stages"].items():
        print(
            f"{name:<12} {fmt(s['wall_time_s']):>8} {fmt(s['peak_rss_mb']):>12} {fmt(s['steps']):>6} "
            f"{fmt(s['mean_step_s']):>8} {fmt(s.get('reward_share_mean')):>12}"
        )
    if summary["evaluation"]:
        print(f"{'evaluation':<12} {'wall s':>8}  general benchmarks (s)")
        for method, e in summary["evaluation"].items():
            benches = ", ".join(f"{k} {fmt(v)}" for k, v in e["benchmarks_s"].items())
            print(f"{method:<12} {fmt(e['wall_time_s']):>8}  {benches}")
    t = summary["totals"]
    print(f"total: training {t['training_s']} s, evaluation {t['evaluation_s']} s, peak RSS {t['peak_rss_mb']} MiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run directory (the --out of semrl run / semrl demo)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/demo_stages.json"))
    args = parser.parse_args(argv)
    try:
        summary = summarise(args.run_dir)
    except SemrlError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_table(summary)
    write_json(
        args.out,
        {
            "read_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "read_on_machine": {"platform": platform.platform(), "processor": platform.machine()},
            "peak_rss_note": "process high-water mark when the stage ended; stages of one `semrl run` share a process",
            **summary,
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
