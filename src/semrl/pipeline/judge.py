"""`semrl judge`: the LLM-judge pass over a run directory: judge the configured method pairs of
its evaluations and write `RUN_DIR/eval/judge.json` (the judging itself is `semrl.eval.judge`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from semrl.config.experiment import ExperimentConfig
from semrl.core.io import write_json
from semrl.core.layout import RunLayout
from semrl.core.provenance import digest
from semrl.eval.judge import (
    LABELS,
    Judge,
    JudgeReply,
    build_judge,
    compare_outputs,
    judge_template,
    load_judge,
    pair_items,
    summarize,
)
from semrl.eval.records import load_evaluations


def _reply_dict(reply: JudgeReply | None) -> dict[str, Any] | None:
    return None if reply is None else {k: v for k, v in asdict(reply).items() if v is not None or k == "verdict"}


def run_judge(
    config: ExperimentConfig,
    run_dir: str | Path,
    log: Callable[[str], None] = print,
    force: bool = False,
    judge: Judge | None = None,
) -> dict[str, Any] | None:
    """Judge the configured method pairs of a run and write `RUN_DIR/eval/judge.json`.

    Pairs whose methods were not both evaluated are skipped (logged); None when none is left. A
    judge.json made with the same judge config and the same evaluations is reused unless
    `force`. `judge` replaces the configured one (built from `evaluation.judge` otherwise).
    """

    run_dir = Path(run_dir)
    cfg = config.evaluation.judge
    ev = config.evaluation
    evals = load_evaluations(run_dir)
    template = judge_template(cfg, config.task)
    pairs = []
    for a, b in cfg.pairs:
        missing = [m for m in (a, b) if m not in evals]
        if missing:
            log(
                f"[judge] {a} vs {b}: skipped, no evaluation of {' and '.join(missing)} in {RunLayout(run_dir).eval_dir}"
            )
        else:
            pairs.append((a, b))
    if not pairs:
        return None
    used = sorted({m for pair in pairs for m in pair})
    eval_keys = {m: evals[m].get("eval_key") for m in used}
    judge_settings = cfg.model_dump(
        mode="json", exclude={"enabled", "timeout_s", "batch_size", "api_key_env", "max_retries", "concurrency"}
    )
    key = digest(
        {
            "judge": judge_settings,
            "template": template,
            "task": config.task.model_dump(mode="json"),
            "pairs": pairs,
            "eval_keys": eval_keys,
            "bootstrap": [ev.bootstrap_samples, ev.confidence, config.seed],
        }
    )
    out_path = RunLayout(run_dir).judge
    cached = load_judge(run_dir)
    if cached is not None and cached.get("key") == key and not force and judge is None:
        log(f"[judge] up to date: skipped ({out_path})")
        return cached

    started = time.time()
    if judge is None:
        log(f"[judge] loading {cfg.model}" + (f" at {cfg.url}" if cfg.url else ""))
        judge = build_judge(cfg)
    results: dict[str, Any] = {}
    for a, b in pairs:
        items = pair_items(evals[a], evals[b], cfg.limit)
        log(f"[judge] {a} vs {b}: {len(items)} examples, both orders")
        outcomes = compare_outputs(judge, items, template, config.task)
        summary = summarize(outcomes, ev.bootstrap_samples, ev.confidence, config.seed)
        r, c = summary["rates"], summary["counts"]
        log(
            f"[judge] {a} vs {b}: win {r['win']['estimate']:.3f} [{r['win']['low']:.3f}, {r['win']['high']:.3f}], "
            f"tie {r['tie']['estimate']:.3f}, loss {r['loss']['estimate']:.3f}; "
            f"inconsistent {c['inconsistent']}/{summary['n']}, identical {c['identical']}, unparsed verdicts {c['unparsed']}"
        )
        results[f"{a}-{b}"] = {
            "first": a,
            "second": b,
            **summary,
            "per_example": [
                {
                    "id": o.id,
                    "outcome": o.outcome,
                    "inconsistent": o.inconsistent,
                    "identical": o.identical,
                    "ab": _reply_dict(o.ab),
                    "ba": _reply_dict(o.ba),
                }
                for o in outcomes
            ],
        }
    record = {
        "key": key,
        "judge": judge.description,
        "template": template,
        "labels": list(LABELS),
        "eval_keys": eval_keys,
        "pairs": results,
        "truncated_prompts": getattr(judge, "truncated", 0),
        "confidence": ev.confidence,
        "wall_time_s": round(time.time() - started, 2),
    }
    write_json(out_path, record)
    log(f"[judge] wrote {out_path} in {record['wall_time_s']:.1f}s")
    return record
