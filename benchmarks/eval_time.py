"""The evaluation of a finished run, timed again in several arms, alternating, and whether the scores
are identical: by default with glibc's freed memory reused per phase (semrl's default) and with
glibc's defaults (`SEMRL_MALLOC=default`); `--arms freed_memory_reused_per_phase,bfloat16` compares
a float32 evaluation with one in the model's own dtype (`evaluation.dtype: model`), and
`--arms freed_memory_reused_per_phase,plain_linears` one on linear weights packed for oneDNN (the
default) with one on torch's plain CPU matmuls (`evaluation.packed_weights: false`), and
`--before DIR --arms before,freed_memory_reused_per_phase` today's code with the checkout of earlier
code in DIR (a git worktree, its `src` first on PYTHONPATH), counting the outputs that changed and the
numbers that differ (and by how much at most).

Each arm evaluates a hard-linked copy of RUN_DIR (its trained stages are reused, its `eval/` records
removed; the original is not touched) with `semrl run` in a child process, and records the child's
wall time, user and system CPU time, minor page faults and peak RSS (`getrusage`), the per-method
wall times from the records it writes, and whether every score equals the first arm's (records
compared without their wall times and paths).

    SEMRL_DATA_DIR=../shared/data python benchmarks/eval_time.py RUN_DIR [--config RUN_DIR/config.yaml]
        [--arms A,B] [--before DIR] [--repeats 1] [--out benchmarks/results/eval_time.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from semrl.core.io import write_json
from semrl.core.layout import RunLayout
from semrl.core.memory import MALLOC_ENV
from semrl.core.provenance import machine, package_versions

ROOT = Path(__file__).resolve().parents[1]
# Each arm: the environment and the `--set` overrides of its `semrl run`.
ARMS: dict[str, tuple[dict[str, str], list[str]]] = {
    "freed_memory_reused_per_phase": ({}, []),
    "glibc_defaults": ({MALLOC_ENV: "default"}, []),
    "bfloat16": ({}, ["evaluation.dtype=model"]),  # the model's dtype: bfloat16 where model.dtype chose it
    "plain_linears": ({}, ["evaluation.packed_weights=false"]),  # torch's CPU matmuls, not packed for oneDNN
}
DEFAULT_ARMS = "freed_memory_reused_per_phase,glibc_defaults"
# Differ between two evaluations of the same models (the keys, digests of the evaluation's config:
# between arms that set other options).
VOLATILE = {"wall_time_s", "model_dir", "eval_key", "key"}


def _scores(record: Any) -> Any:
    """A record without what changes from one evaluation to the next."""
    if isinstance(record, dict):
        return {k: _scores(v) for k, v in record.items() if k not in VOLATILE}
    if isinstance(record, list):
        return [_scores(v) for v in record]
    return record


def _numbers(record: Any, path: str = "") -> dict[str, float]:
    """Every numeric leaf of a record, by its path."""
    if isinstance(record, dict):
        return {k: v for key, value in record.items() for k, v in _numbers(value, f"{path}/{key}").items()}
    if isinstance(record, list):
        return {k: v for i, value in enumerate(record) for k, v in _numbers(value, f"{path}/{i}").items()}
    if isinstance(record, (int, float)) and not isinstance(record, bool):
        return {path: float(record)}
    return {}


def _largest_difference(scores: Any, reference: Any) -> dict[str, Any]:
    """How many numbers of the records differ from the first arm's, and by how much at most."""
    a, b = _numbers(scores), _numbers(reference)
    common = [k for k in a.keys() & b.keys() if a[k] == a[k] and b[k] == b[k]]  # NaN-free pairs
    diffs = {k: abs(a[k] - b[k]) for k in common if a[k] != b[k]}
    worst = max(diffs, key=diffs.get) if diffs else None
    return {"numbers": len(common), "differing": len(diffs), "largest": diffs.get(worst, 0.0), "where": worst}


def _outputs(records: dict[str, Any]) -> list[str]:
    """Every generated output of the records (test split, extra tests and the general benchmarks'
    generated answers), in a fixed order."""
    outputs = []
    for record in records.values():
        outputs += [o["output"] for o in record.get("outputs", [])]
        for extra in (record.get("extra_tasks") or {}).values():
            outputs += [o["output"] for o in extra.get("outputs", [])]
        for benchmark in (record.get("general") or {}).values():
            outputs += (benchmark.get("details") or {}).get("predictions") or []
    return outputs


def evaluate_copy(
    run_dir: Path, config: Path, env: dict[str, str], scratch: Path, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """Evaluate a hard-linked copy of `run_dir` in a child `semrl run`; its resources and records."""
    copy = scratch / "run"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run_dir, copy, copy_function=os.link)
    for record in (copy / "eval").glob("*.json"):
        record.unlink()
    start = time.perf_counter()
    command = [sys.executable, "-m", "semrl", "run", str(config), "--set", f"output_dir={copy}"]
    command += [arg for override in overrides for arg in ("--set", override)]
    child = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own resources, peak RSS included
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit {child.returncode})")
    records = {
        p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(RunLayout(copy).eval_dir.glob("*.json"))
    }
    return {
        "wall_s": round(wall, 1),
        "user_s": round(usage.ru_utime, 1),
        "system_s": round(usage.ru_stime, 1),
        "minor_page_faults": usage.ru_minflt,
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
        "method_wall_s": {m: r.get("wall_time_s") for m, r in records.items()},
        "records": records,
    }


def _commit(tree: Path) -> str | None:
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--config", type=Path, default=None, help="default: the run's own config.yaml")
    parser.add_argument("--arms", default=DEFAULT_ARMS, help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument(
        "--before", type=Path, default=None, help="a checkout of earlier code (git worktree): the arm 'before'"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "eval_time.json")
    args = parser.parse_args(argv)
    config = args.config or args.run_dir / "config.yaml"
    arms = args.arms.split(",")
    known = dict(ARMS)
    if args.before is not None:
        if not (args.before / "src" / "semrl").is_dir():
            parser.error(f"--before {args.before}: no src/semrl there; give a checkout of semrl (git worktree add)")
        known["before"] = ({"PYTHONPATH": str((args.before / "src").resolve())}, [])
    unknown = sorted(set(arms) - set(known))
    if unknown:
        parser.error(f"--arms: unknown {unknown}; choose among {', '.join(known)} ('before' needs --before)")
    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    reference = reference_outputs = None
    with tempfile.TemporaryDirectory(dir=args.run_dir.parent) as scratch:  # same file system: hard links
        for repeat in range(args.repeats):
            for arm in arms:
                env, overrides = known[arm]
                result = evaluate_copy(args.run_dir, config, env, Path(scratch), overrides)
                records = result.pop("records")
                scores, outputs = _scores(records), _outputs(records)
                if reference is None:
                    reference, reference_outputs = scores, outputs
                changed = sum(a != b for a, b in zip(outputs, reference_outputs))
                result.update(
                    arm=arm,
                    repeat=repeat,
                    scores_identical_to_first=scores == reference,
                    outputs_changed_vs_first=f"{changed} of {len(outputs)}",
                    numbers_vs_first=_largest_difference(scores, reference),
                    chrf={m: (r.get("task") or {}).get("chrf") for m, r in records.items()},
                )
                runs.append(result)
                print(
                    f"  {arm:<32} {result['wall_s']:7.1f} s  user {result['user_s']:.0f} s  system "
                    f"{result['system_s']:.0f} s  faults {result['minor_page_faults'] / 1e6:.1f} M  "
                    f"scores identical: {result['scores_identical_to_first']}, outputs changed: "
                    f"{result['outputs_changed_vs_first']}, numbers differing: "
                    f"{result['numbers_vs_first']['differing']} (largest {result['numbers_vs_first']['largest']:.2g})",
                    flush=True,
                )
    hw = machine()
    summary = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": hw,
        "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "run_dir": str(args.run_dir),
        "commit": _commit(ROOT),
        "before": None if args.before is None else {"tree": str(args.before), "commit": _commit(args.before)},
        "config": config.name,
        "runs": runs,
        "versions": package_versions(),
    }
    print(f"{hw['cpu']}, {hw['cores']} cores; load {summary['load_average']}")
    write_json(args.out, summary)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
