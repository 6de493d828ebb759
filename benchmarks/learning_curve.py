"""The cold-start learning curve on the Buddhist canon: chrF against N training pairs.

For each N (default 1,000, 4,000, 16,000) it trains the cold-start recipe of the base config
(default configs/canon-curve.yaml: Gemma 3 270M, LoRA r64, lr 3e-4, one pass over N MITRA
Tibetan -> classical Chinese pairs) through semrl's own runner (`run_experiment`, the cold_start
stage only, `data.splits.cold_start = N`), then scores it on the config's held-out test texts
(`eval.task.evaluate_task`). Per point it reports chrF and its chance floor (the same outputs
against shuffled references, `task_metrics`) with 95% intervals, the margin over chance with its
paired interval (`results.evidence.chance_margins`), the distinct-output rate, 5 sample outputs
(each with its test row's id: the JSON holds no dataset text; `--show-samples` prints each sample
beside its source and reference, read from the data directory), wall times, the CPU model, the
dtypes and the machine's load average. Each point lives in its own
run directory (`<out-dir>/n<N>`): a finished point is skipped, a killed one resumes from its last
checkpoint. Prints a table and writes JSON.

Intervals: percentile bootstrap over test sentences with the evaluation's settings, by
`eval.stats.paired_corpus_bootstrap` (corpus chrF of each resample); a metric's own interval is
its paired difference with an empty output, whose chrF is 0 on every resample.

    SEMRL_DATA_DIR=../shared/data python benchmarks/learning_curve.py [--n 1000 4000 16000] \\
        [--config configs/canon-curve.yaml] [--out-dir runs/learning-curve] [--set KEY=VALUE ...] \\
        [--json benchmarks/results/learning_curve.json]
    SEMRL_DATA_DIR=../shared/data python benchmarks/learning_curve.py --show-samples \
        benchmarks/results/learning_curve.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from semrl.config.experiment import ExperimentConfig, load_config
from semrl.core.errors import SemrlError
from semrl.core.io import read_manifest, write_json
from semrl.core.layout import RunLayout
from semrl.core.provenance import cpu_model, digest, package_versions, peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "src" / "semrl" / "configs" / "canon-curve.yaml"
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "learning_curve.json"
POINT_FILE = "learning_curve_point.json"
SAMPLES = 5


def point_config(base: Path, n: int, overrides: list[str], data_dir: Path | None) -> ExperimentConfig:
    """The base config with N cold-start pairs and the cold_start stage alone."""
    sets = [*overrides, f"data.splits.cold_start={n}", "stages.enabled=[cold_start]"]
    config = load_config(base, sets)
    if data_dir is not None:
        config.data_dir = str(data_dir)
    return config


def _interval(iv: Any) -> dict[str, float]:
    return {"estimate": round(iv.estimate, 3), "low": round(iv.low, 3), "high": round(iv.high, 3)}


def score(config: ExperimentConfig, outputs: list[dict[str, str]], chance_order: list[int]) -> dict[str, Any]:
    """chrF and its chance floor with bootstrap intervals, from the evaluation's outputs."""
    from semrl.eval.stats import paired_corpus_bootstrap
    from semrl.results.build import bootstrap_args

    boot = bootstrap_args(config)
    target = config.task.target_lang
    hyps = [o["output"] for o in outputs]
    refs = [o["reference"] for o in outputs]
    empty = [""] * len(hyps)
    shuffled = [refs[j] for j in chance_order]
    return {
        "chrf": _interval(paired_corpus_bootstrap("chrf", hyps, empty, refs, target, refs_b=refs, **boot)),
        "chance_chrf": _interval(
            paired_corpus_bootstrap("chrf", hyps, empty, shuffled, target, refs_b=shuffled, **boot)
        ),
    }


def evaluate_point(config: ExperimentConfig, run_dir: Path, log: Any = print) -> dict[str, Any]:
    """Score the point's cold-start model on the test split: the task summary, per-example values
    and outputs (as `semrl run` stores an evaluation), and the wall time."""
    from semrl.encoders import build_encoder
    from semrl.eval.task import evaluate_task, evaluation_examples
    from semrl.models import load_policy

    test = evaluation_examples(config, run_dir)
    ev = config.evaluation
    model_cfg = config.model if ev.dtype == "model" else config.model.model_copy(update={"dtype": ev.dtype})
    started = time.time()
    model, tokenizer = load_policy(model_cfg, RunLayout(run_dir).stage("cold_start").model)
    encoder = build_encoder(config.rewards.encoder)
    log(f"[{run_dir.name}] generating {len(test)} test outputs")
    summary, per, outputs = evaluate_task(
        model, tokenizer, test, config.task, ev.generation, encoder, ev.second_encoder, seed=config.seed
    )
    return {"task": summary, "per_example": per, "outputs": outputs, "wall_time_s": round(time.time() - started, 2)}


def run_point(config: ExperimentConfig, run_dir: Path, log: Any = print) -> dict[str, Any]:
    """Train (or resume, or skip) the point's cold start, evaluate it, and summarise."""
    from semrl.models import choose_dtype
    from semrl.pipeline.run import run_experiment
    from semrl.results.build import bootstrap_args
    from semrl.results.evidence import chance_margins, distinct_output_rate, output_sources

    load_before = os.getloadavg()
    started = time.time()
    run_experiment(config, run_dir, evaluate=False, log=log)
    stage = read_manifest(RunLayout(run_dir).stage("cold_start").manifest) or {}
    splits_manifest = read_manifest(RunLayout(run_dir).splits_manifest) or {}
    record = evaluate_point(config, run_dir, log)
    outputs = record["outputs"]
    hyps = [o["output"] for o in outputs]
    chance = record["task"].get("chance")
    if not chance:
        raise SemrlError(f"{run_dir}: the test split has {len(outputs)} example(s); chance needs at least 2")
    rng = np.random.default_rng(config.seed)
    picks = sorted(rng.choice(len(outputs), size=min(SAMPLES, len(outputs)), replace=False).tolist())
    dtype = choose_dtype(config.model.dtype)
    return {
        "n": config.data.splits.cold_start,
        "train_examples": splits_manifest.get("splits", {}).get("cold_start", {}).get("examples"),
        "test_examples": len(outputs),
        "test_documents": splits_manifest.get("splits", {}).get("test", {}).get("documents"),
        **score(config, outputs, chance["reference_order"]),
        "chrf_margin": chance_margins(record, config.task.target_lang, bootstrap_args(config)).get("chrf"),
        "semantic": record["task"].get("semantic"),
        "distinct_output_rate": round(distinct_output_rate(hyps, output_sources(outputs)) or 0.0, 4),
        "samples": [{k: outputs[i][k] for k in ("id", "output")} for i in picks],
        "train_steps": (stage.get("metrics") or {}).get("global_step"),
        "train_wall_s": stage.get("wall_time_s"),
        "eval_wall_s": record["wall_time_s"],
        "wall_s": round(time.time() - started, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "dtype": {"train": dtype.name, "train_reason": dtype.reason, "eval": config.evaluation.dtype},
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
        "model_id": stage.get("id"),
        "run_dir": str(run_dir),
    }


def point_key(config: ExperimentConfig) -> str:
    """What a finished point depends on: the whole config but where it is stored."""
    data = config.to_dict()
    return digest({k: v for k, v in data.items() if k not in ("name", "output_dir", "data_dir")})


def learning_curve(
    base: Path, ns: list[int], out_dir: Path, overrides: list[str], data_dir: Path | None, log: Any = print
) -> dict[str, Any]:
    """Every point of the curve, finished points read back from their run directories."""
    points = []
    for n in ns:
        config = point_config(base, n, overrides, data_dir)
        run_dir = out_dir / f"n{n}"
        done = read_manifest(run_dir / POINT_FILE)
        if done is not None and done.get("key") == point_key(config):
            log(f"[n{n}] already finished: skipped")
            points.append(done["point"])
            continue
        point = run_point(config, run_dir, log)
        write_json(run_dir / POINT_FILE, {"key": point_key(config), "point": point})
        points.append(point)
    return {
        "script": "benchmarks/learning_curve.py",
        "config": str(base),
        "overrides": overrides,
        "out_dir": str(out_dir),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "points": points,
    }


def _iv_text(iv: dict[str, float] | None) -> str:
    if not iv:
        return "-"
    return f"{iv['estimate']:5.1f} [{iv['low']:5.1f}, {iv['high']:5.1f}]"


def table(curve: dict[str, Any]) -> str:
    """The curve as a plain-text table."""
    head = f"{'N':>6}  {'chrF [95% CI]':<22}{'chance [95% CI]':<22}{'margin [95% CI]':<22}{'distinct':>8}{'train s':>9}{'eval s':>8}"
    lines = [head]
    for p in curve["points"]:
        margin = (p.get("chrf_margin") or {}).get("margin")
        lines.append(
            f"{p['n']:>6}  {_iv_text(p['chrf']):<22}{_iv_text(p['chance_chrf']):<22}{_iv_text(margin):<22}"
            f"{p['distinct_output_rate']:>8.2f}{p['train_wall_s'] or 0:>9.0f}{p['eval_wall_s']:>8.0f}"
        )
    if curve["points"]:
        p = curve["points"][-1]
        lines.append(
            f"test: {p['test_examples']} sentences of {p['test_documents']} texts; cpu: {p['cpu']} ({p['cores']} cores); "
            f"dtype: {p['dtype']['train']} train, {p['dtype']['eval']} eval"
        )
    return "\n".join(lines)


def show_samples(curve: dict[str, Any], data_dir: Path | None) -> str:
    """Each point's samples beside the source and reference of their test rows, read from the data
    directory (the curve's JSON keeps the rows' ids only, not the dataset's text)."""
    from semrl.data.splits import load_examples

    base = Path(curve["config"])
    config = point_config(
        base if base.is_absolute() else ROOT / base, curve["points"][0]["n"], curve["overrides"], data_dir
    )
    wanted = {s["id"] for p in curve["points"] for s in p["samples"]}
    rows = {e.id: e for e in load_examples(config) if e.id in wanted}
    missing = sorted(wanted - rows.keys())
    if missing:
        raise SemrlError(
            f"{len(missing)} sample row(s) are not in {config.resolved_data_dir() or 'the data directory'} "
            f"(e.g. {missing[0]}): point --data-dir or SEMRL_DATA_DIR at the data the curve was run on"
        )
    lines = []
    for p in curve["points"]:
        lines.append(f"N = {p['n']}")
        for s in p["samples"]:
            row = rows[s["id"]]
            lines += [
                f"  {s['id']}",
                f"    source:    {row.source}",
                f"    reference: {row.reference}",
                f"    output:    {s['output']}",
            ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="base config (default: canon-curve)")
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 4000, 16000], help="cold-start pairs per point")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/learning-curve"), help="one run directory per point")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--data-dir", type=Path, default=None, help="local dataset copies (default: $SEMRL_DATA_DIR)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where the JSON goes")
    parser.add_argument(
        "--show-samples", type=Path, metavar="JSON", help="print a curve JSON's samples with their rows; train nothing"
    )
    args = parser.parse_args(argv)
    if args.show_samples is not None:
        try:
            print(show_samples(json.loads(args.show_samples.read_text(encoding="utf-8")), args.data_dir))
        except (OSError, ValueError, KeyError) as err:
            print(f"error: {args.show_samples}: not a learning-curve JSON ({err})", file=sys.stderr)
            return 2
        except SemrlError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    if any(n < 1 for n in args.n):
        print("--n: every point needs at least 1 training pair", file=sys.stderr)
        return 2
    try:
        curve = learning_curve(args.config, sorted(set(args.n)), args.out_dir, args.set, args.data_dir)
    except SemrlError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table(curve))
    write_json(args.json, curve)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
