"""Disk per run with merged stage checkpoints vs LoRA adapters, and whether evaluation agrees.

Runs one config twice, `model.save=merged` (what every stage wrote before adapters) and
`model.save=adapter` (the default with LoRA), each in its own run directory, then reports the bytes
of each run directory and of its stage models, and compares every `eval/<method>.json` task summary
between the two runs (they must be equal: base + adapter loads the same weights a merged save holds).

    python benchmarks/adapter_disk.py configs/tiny.yaml --out /tmp/adapter-disk --data-dir DATA
    python benchmarks/adapter_disk.py configs/demo.yaml --out /tmp/adapter-disk-gemma \\
        --set 'stages.cold_start.max_steps=1' ... --json benchmarks/results/adapter_disk_gemma.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from semrl.cli import main as semrl_main
from semrl.core.io import write_json
from semrl.core.layout import RunLayout
from semrl.eval.records import load_evaluations


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def measure(run_dir: Path) -> dict:
    layout = RunLayout(run_dir)
    stages = sorted(p.name for p in layout.stages.iterdir() if p.is_dir())
    return {
        "run_bytes": dir_bytes(run_dir),
        "stage_model_bytes": {s: dir_bytes(layout.stage(s).model) for s in stages},
        "checkpoint_bytes": {s: dir_bytes(layout.stage(s).checkpoints) for s in stages},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)

    result: dict = {"config": str(args.config), "overrides": args.set, "machine": platform.processor() or None}
    runs = {}
    for mode in ("merged", "adapter"):
        run_dir = args.out / mode
        cmd = ["run", str(args.config), "--out", str(run_dir), "--set", f"model.save={mode}"]
        for item in args.set:
            cmd += ["--set", item]
        if args.data_dir:
            cmd += ["--data-dir", str(args.data_dir)]
        started = time.time()
        code = semrl_main(cmd)
        if code != 0:
            print(f"semrl run ({mode}) failed with exit code {code}", file=sys.stderr)
            return code
        runs[mode] = run_dir
        result[mode] = {**measure(run_dir), "wall_s": round(time.time() - started, 1)}

    merged_evals, adapter_evals = (load_evaluations(runs[m]) for m in ("merged", "adapter"))
    result["methods"] = sorted(merged_evals)
    result["task_summaries_identical"] = {
        m: merged_evals[m]["task"] == adapter_evals.get(m, {}).get("task") for m in merged_evals
    }
    result["general_identical"] = {
        m: merged_evals[m]["general"] == adapter_evals.get(m, {}).get("general") for m in merged_evals
    }
    saved = result["merged"]["run_bytes"] - result["adapter"]["run_bytes"]
    result["saved_bytes"] = saved
    print(json.dumps(result, indent=2))
    if args.json:
        write_json(args.json, result)
    return 0 if all(result["task_summaries_identical"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
